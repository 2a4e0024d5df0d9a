"""clipgate as an integration-test target: a real server in the test process, and a pytest plugin.

Without pytest:

    with ClipgateServer(keys={"roboflow": "k"}) as server:
        server.url                                   # http://127.0.0.1:<port>
        server.faults.set(status=503, first=2)       # vendor-shaped 503s for the next 2 requests

With pytest (the plugin loads by itself once clipgate is installed):

- `clipgate_server`: one server for the session (`random:tiny` unless the ini options
  `clipgate_model`, `clipgate_config` or `clipgate_keys` say otherwise), ready when the test runs;
- `clipgate_faults`: that server's faults, cleared before and after each test;
- `clipgate_app`: an app for in-process clients; `async with started(app):` runs its lifespan
  for httpx's `ASGITransport`, or hand it to Starlette's `TestClient`.

Nothing here imports torch until a server or app is built.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from clipgate.config import Config
    from clipgate.faults import FaultPlan

START_TIMEOUT_S = 120.0


def build_config(
    model: str = "random:tiny",
    *,
    config: str | Path | None = None,
    keys: Mapping[str, str | Sequence[str]] | None = None,
    faults: bool = True,
    admin_key: str = "",
) -> Config:
    """The configuration of a test server: the file (if any, without the process environment),
    the model on the CPU, each protocol's keys, and fault injection on."""
    from clipgate.app import load_app_config

    loaded = load_app_config(config, {}).replace("model", id=model, device="cpu")
    loaded = loaded.replace("faults", enabled=faults, admin_key=admin_key)
    for protocol, value in (keys or {}).items():
        loaded = loaded.replace(protocol, keys=(value,) if isinstance(value, str) else tuple(value))
    return loaded


class ClipgateServer:
    """A clipgate server on a free loopback port, in a thread of this process, ready once
    entered. Use as a context manager."""

    def __init__(
        self,
        model: str = "random:tiny",
        *,
        config: str | Path | None = None,
        keys: Mapping[str, str | Sequence[str]] | None = None,
        faults: bool = True,
        admin_key: str = "",
        host: str = "127.0.0.1",
    ) -> None:
        self.config = build_config(model, config=config, keys=keys, faults=faults, admin_key=admin_key)
        self.host = host
        self.port = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.app: Starlette | None = None
        self.started_s = 0.0  # how long the start took, model load and warm-up included

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def keys(self) -> dict[str, str]:
        """Each protocol's first key (the one a test client should send), if it has keys."""
        return {name: table.keys[0] for name, table in self.config.protocols.items() if table.keys}

    @property
    def faults(self) -> FaultPlan:
        assert self.app is not None, "the server is not running"
        faults: FaultPlan = self.app.state.clipgate.faults
        return faults

    def url_for(self, protocol: str, path: str = "") -> str:
        """The URL of `path` under `protocol`'s prefix (its base URL when `path` is empty)."""
        prefix = self.config.protocol(protocol).prefix.strip("/")
        return self.url + (f"/{prefix}" if prefix else "") + path

    def __enter__(self) -> ClipgateServer:
        import uvicorn

        from clipgate.app import create_app

        started = time.perf_counter()
        self.app = create_app(self.config, wait_ready=True)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on", log_config=None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="clipgate-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:  # the lifespan returns once the model is warm
            if not self._thread.is_alive():
                sock.close()
                raise RuntimeError(f"clipgate did not start (model {self.config.model.id}); see the log above")
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"clipgate was not ready after {START_TIMEOUT_S:.0f} s")
            time.sleep(0.02)
        self.started_s = time.perf_counter() - started
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)
        self._server = self._thread = None


@contextlib.asynccontextmanager
async def started(app: Starlette) -> AsyncIterator[Starlette]:
    """Run `app`'s lifespan around the block, in the running event loop: for in-process clients
    (httpx's ASGITransport) that do not run it themselves."""
    async with app.router.lifespan_context(app):
        yield app


# --- the pytest plugin -----------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("clipgate_model", "the model clipgate_server serves", default="random:tiny")
    parser.addini("clipgate_config", "a clipgate TOML file for clipgate_server", default="")
    parser.addini("clipgate_keys", "protocol=key pairs clipgate_server requires", type="args", default=[])


def _options(config: pytest.Config) -> dict[str, Any]:
    keys: dict[str, str] = {}
    for pair in config.getini("clipgate_keys"):
        protocol, sep, key = str(pair).partition("=")
        if not sep or not key:
            raise pytest.UsageError(f"clipgate_keys: expected protocol=key, got {pair!r}")
        keys[protocol] = key
    return {
        "model": config.getini("clipgate_model") or "random:tiny",
        "config": config.getini("clipgate_config") or None,
        "keys": keys,
    }


@pytest.fixture(scope="session")
def clipgate_server(pytestconfig: pytest.Config) -> Iterator[ClipgateServer]:
    """A clipgate server for the whole session, fault injection on."""
    with ClipgateServer(**_options(pytestconfig)) as server:
        yield server


@pytest.fixture
def clipgate_faults(clipgate_server: ClipgateServer) -> Iterator[FaultPlan]:
    """The session server's faults, empty at the start of the test and cleared after it."""
    clipgate_server.faults.clear()
    yield clipgate_server.faults
    clipgate_server.faults.clear()


@pytest.fixture
def clipgate_app(pytestconfig: pytest.Config) -> Starlette:
    """A clipgate app for in-process clients; its lifespan runs in the test's event loop
    (`async with started(clipgate_app)`) or in Starlette's TestClient."""
    from clipgate.app import create_app

    options = _options(pytestconfig)
    return create_app(build_config(options.pop("model"), **options), wait_ready=True)
