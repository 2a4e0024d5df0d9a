"""`clipgate serve ...`: flags -> config -> a check that the model can be had -> uvicorn -> the app.
`clipgate config ...` prints the configuration those flags, the file and the environment make.
`clipgate export ...` makes the ONNX export that `model.backend = "onnx"` serves, ahead of time."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from clipgate import __version__
from clipgate.config import DTYPES, QUANTIZE, SECTIONS, Config, ConfigError, check_device

# How long past server.request_timeout_s a graceful shutdown waits for requests in flight.
SHUTDOWN_MARGIN_S = 5


def _device(value: str) -> str:
    try:
        return check_device(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="clipgate", description="A CLIP embedding gateway.")
    parser.add_argument("--version", action="version", version=f"clipgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    show = commands.add_parser("config", help="print the effective configuration (file, environment, flags)")
    export = commands.add_parser(
        "export",
        help="export the model to ONNX for model.backend = onnx, ahead of time (container images, air-gapped sites)",
    )
    export.add_argument(
        "--quantize", choices=QUANTIZE, help="also make the int8 copy (model.quantize = int8) and print its parity"
    )
    for command in (serve, show, export):
        command.add_argument("--config", help="a TOML file (configs/default.toml); CLIPGATE_* variables override it")
        command.add_argument("--model", help="a Hugging Face id, a checkpoint folder, random:tiny or random:base")
        command.add_argument("--host", help="address to listen on (default 127.0.0.1)")
        command.add_argument("--port", type=int, help="port to listen on (default 8000)")
        command.add_argument("--device", type=_device, metavar="{auto,cpu,cuda,cuda:N}", help="where the model runs")
        command.add_argument("--dtype", choices=DTYPES, help="model weights' type")
    return parser.parse_args(argv)


def apply_flags(config: Config, args: argparse.Namespace) -> Config:
    server = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    model = {k: v for k, v in (("id", args.model), ("device", args.device), ("dtype", args.dtype)) if v is not None}
    if args.command == "export":  # what is exported is the onnx backend's, whatever the config serves
        model |= {"backend": "onnx", "quantize": getattr(args, "quantize", None) or config.model.quantize}
    if server:
        config = config.replace("server", **server)
    if model:
        config = config.replace("model", **model)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    from clipgate.app import load_app_config

    args = parse_args(argv)
    try:
        config = apply_flags(load_app_config(args.config, os.environ), args)
    except ConfigError as exc:
        print(f"clipgate: config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(config_toml(config), end="")
        return 0
    if args.command == "export":
        return export(config)
    return serve(config)


def export(config: Config) -> int:
    """Make (or find) the ONNX export of `config.model` and print its folder; exit 2 if it cannot be had."""
    from clipgate.engine import Checkpoint, ModelLoadError, backend, resolve_checkpoint
    from clipgate.logs import configure_logging

    configure_logging(config.server)
    try:
        onnx: Any = backend(config.model)
        checkpoint = Checkpoint.read(resolve_checkpoint(config.model), config.model.id)
        card = checkpoint.card(config.model, device="cpu", dtype="float32")
        made = onnx.ensure_export(checkpoint, card.image_size, "none")
        print(f"{config.model.id}: ONNX export (float32) in {made.folder}")
        if config.model.quantize == "int8":
            made = onnx.ensure_export(checkpoint, card.image_size, "int8")
            parity = ", ".join(f"{k} {v}" for k, v in sorted(made.info()["parity"].items()))
            print(f"{config.model.id}: ONNX export (int8) in {made.folder}; parity to float32: {parity}")
    except ModelLoadError as exc:
        print(f"clipgate: {exc}", file=sys.stderr)
        return 2
    return 0


def config_toml(config: Config) -> str:
    """The configuration as TOML, in the shape of configs/default.toml; keys shown as ***."""
    tables = {name: getattr(config, name) for name in SECTIONS} | dict(config.protocols)
    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        for field in dataclasses.fields(table):
            value = getattr(table, field.name)
            if field.name == "keys":
                value = tuple("***" for _ in value)
            elif field.name == "admin_key" and value:
                value = "***"
            lines.append(f"{field.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def serve(config: Config) -> int:
    """Run the gateway until SIGTERM or SIGINT (exit 0 after draining) or a failed model load
    (exit 1); a model that cannot be had at all is found before the server starts (exit 2)."""
    import uvicorn

    from clipgate.app import create_app
    from clipgate.engine import ModelLoadError, backend, resolve_checkpoint
    from clipgate.logs import configure_logging

    try:
        backend(config.model).check_device(config.model.device)  # fail in seconds, before the server
        resolve_checkpoint(config.model)  # starts: no CUDA, or weights that cannot be had
    except ModelLoadError as exc:
        print(f"clipgate: {exc}", file=sys.stderr)
        return 2
    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(line: str) -> None:
        fatal.append(line)
        if server is not None:
            server.should_exit = True

    configure_logging(config.server)  # before uvicorn's first line, so every line has one format
    server = uvicorn.Server(
        uvicorn.Config(
            functools.partial(create_app, config, on_fatal=on_fatal),
            factory=True,
            host=config.server.host,
            port=config.server.port,
            log_config=None,
            log_level=config.server.log_level,
            access_log=False,  # clipgate writes its own access line (clipgate.logs)
            lifespan="on",
            # a request in flight at SIGTERM may take its whole deadline; then uvicorn cancels it
            timeout_graceful_shutdown=math.ceil(config.server.request_timeout_s) + SHUTDOWN_MARGIN_S,
        )
    )
    server.run()
    if fatal:
        print(f"clipgate: {fatal[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
