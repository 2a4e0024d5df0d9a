"""`clipgate serve ...`: load the configuration, check the model can be had, run uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any
from urllib.parse import unquote_plus

from clipgate import __version__
from clipgate.config import Config, ConfigError, load_config


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="clipgate", description="A CLIP embedding gateway.")
    parser.add_argument("--version", action="version", version=f"clipgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="a TOML file (see configs/default.toml); CLIPGATE_* variables override it")
    serve.add_argument("--model", help="a Hugging Face id, a checkpoint folder, random:tiny or random:base")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where the model runs")
    serve.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], help="model weights' type")
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
    args = parse_args(argv)
    try:
        config = apply_flags(load_config(args.config, os.environ), args)
    except ConfigError as exc:
        print(f"clipgate: config error: {exc}", file=sys.stderr)
        return 2
    return serve(config)


_QUERY_PARAM = re.compile(r"([?&])([^=&#\s]*)=([^&#\s]*)")
GIL_SWITCH_INTERVAL_S = 0.001
SECRET_PARAMS = frozenset({"api_key", "key", "token", "access_token"})


def redact_query(text: str) -> str:
    """Blank the value of every credential parameter, however its name is percent-encoded."""

    def blank(match: re.Match[str]) -> str:
        name = unquote_plus(match.group(2)).strip().lower()
        return f"{match.group(1)}{match.group(2)}=***" if name in SECRET_PARAMS else match.group(0)

    return _QUERY_PARAM.sub(blank, text)


class RedactSecrets(logging.Filter):
    """Blank credentials in logged request paths: uvicorn's access log prints the query string,
    and Roboflow clients may put their key there (`?api_key=...`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        return True


def serve(config: Config) -> int:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """On SIGTERM or SIGINT: readiness probes answer 503 at once, requests are still served
        for `grace_s` (so a load balancer sees the probe before connections are refused), then
        uvicorn stops accepting, finishes the requests in flight and exits. A second signal
        ends the grace; a third stops at once. uvicorn's own handler records the signal to
        re-raise it after shutdown (killing the process, status 143); this one does not, so a
        drained stop exits 0."""

        def __init__(self, gateway: Any, grace_s: float, config: uvicorn.Config) -> None:
            super().__init__(config)
            self.gateway, self.grace_s = gateway, grace_s

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not self.gateway.draining:
                self.gateway.draining = True
                if self.grace_s > 0:
                    logging.getLogger("clipgate").info(
                        "signal %d: not ready; serving %.1f s more before draining", sig, self.grace_s
                    )
                    timer = threading.Timer(self.grace_s, self._drain)
                    timer.daemon = True
                    timer.start()
                    return
            elif self.should_exit:
                self.force_exit = True
            self._drain()

        def _drain(self) -> None:
            self.should_exit = True

    from clipgate.app import create_app
    from clipgate.engine import ModelLoadError, pick_device, resolve_checkpoint

    logging.basicConfig(level=config.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        pick_device(config.model.device)  # fail in seconds, before the server starts: no CUDA,
        resolve_checkpoint(config.model)  # or weights that cannot be had
    except ModelLoadError as exc:
        print(f"clipgate: {exc}", file=sys.stderr)
        return 2
    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(line: str) -> None:
        fatal.append(line)
        if server is not None:
            server.should_exit = True

    # The event loop and the model thread share the GIL; torch lets go of it for every op and
    # takes it back after. At Python's default 5 ms switch interval a thread that wants the GIL
    # back can wait that long; at 1 ms 16 clients got ~9% more texts per second (make bench).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    app = create_app(config, on_fatal=on_fatal)
    server = DrainingServer(
        app.state.gateway,
        config.server.drain_grace_s,
        uvicorn.Config(
            app,
            host=config.server.host,
            port=config.server.port,
            log_level=config.server.log_level,
            lifespan="on",
            timeout_graceful_shutdown=30,
        ),
    )
    logging.getLogger("uvicorn.access").addFilter(RedactSecrets())  # after uvicorn set up its loggers
    server.run()
    if fatal:
        print(f"clipgate: {fatal[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
