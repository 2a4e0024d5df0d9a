"""`clipgate serve ...`: flags -> config -> a check that the model can be had -> uvicorn -> the app."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence

from clipgate import __version__
from clipgate.config import DTYPES, Config, ConfigError, check_device


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
    serve.add_argument("--config", help="a TOML file (see configs/default.toml); CLIPGATE_* variables override it")
    serve.add_argument("--model", help="a Hugging Face id, a checkpoint folder, random:tiny or random:base")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument("--device", type=_device, metavar="{auto,cpu,cuda,cuda:N}", help="where the model runs")
    serve.add_argument("--dtype", choices=DTYPES, help="model weights' type")
    return parser.parse_args(argv)


def apply_flags(config: Config, args: argparse.Namespace) -> Config:
    server = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    model = {k: v for k, v in (("id", args.model), ("device", args.device), ("dtype", args.dtype)) if v is not None}
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
    return serve(config)


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
            timeout_graceful_shutdown=30,
        )
    )
    server.run()
    if fatal:
        print(f"clipgate: {fatal[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
