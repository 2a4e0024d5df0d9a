"""The composition root: `create_app(config)` builds the Starlette app, its routes and its lifespan.

Hosts: `clipgate serve` (clipgate.cli), or any ASGI server through the factory
`uvicorn --factory clipgate.app:app_from_env`, which reads `CLIPGATE_CONFIG` (a TOML file) and
the `CLIPGATE_*` variables, and counts as started only once the model is loaded and warm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from adapters import REGISTRY
from clipgate import __version__, docs, openapi, probes, runtime
from clipgate.adapter import Adapter
from clipgate.budget import BodyBudget, auto_capacity
from clipgate.config import Config, load_config
from clipgate.engine import Model, ModelLoadError, load_model
from clipgate.errors import ClipgateError, MethodNotAllowed, RouteNotFound
from clipgate.http import PathNormalizer, make_endpoint
from clipgate.service import EmbeddingService
from clipgate.state import AppState

log = logging.getLogger("clipgate")


ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def load_app_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The configuration, with one table for each protocol in the adapter registry."""
    return load_config(path, environ, protocols={name: adapter.settings for name, adapter in REGISTRY.items()})


def _prefix(config: Config, name: str) -> str:
    prefix = config.protocol(name).prefix.strip("/")
    return "/" + prefix if prefix else ""


def build_routes(config: Config, state: AppState) -> list[BaseRoute]:
    """The core's probes and API docs, then every enabled protocol's routes under its prefix. Two
    routes on one path are a startup error naming both owners."""
    routes: list[BaseRoute] = list(probes.routes(state))
    seen = dict.fromkeys(probes.PATHS, "clipgate's probes")
    routes += docs.routes(openapi.document(config, REGISTRY, __version__))
    seen.update(dict.fromkeys(docs.PATHS, "clipgate's API docs"))
    for name, adapter in REGISTRY.items():
        settings = config.protocol(name)
        if not settings.enabled:
            continue
        prefix = _prefix(config, name)
        for op in adapter.operations:
            path = (prefix + op.path) if op.path != "/" or not prefix else prefix
            other = seen.setdefault(path, name)
            if other != name:
                raise ValueError(f"{path} is served by both {other} and {name}; give one a prefix")
            # Every method reaches the endpoint, which answers a wrong one in the vendor's shape.
            endpoint = make_endpoint(adapter, op, settings, config, state)
            routes.append(Route(path, endpoint, methods=ALL_METHODS))
    return routes


def _owner(config: Config, path: str) -> Adapter | None:
    """The enabled protocol whose prefix `path` falls under (the longest prefix wins)."""
    best: tuple[int, Adapter] | None = None
    for name, adapter in REGISTRY.items():
        prefix = _prefix(config, name)
        if prefix and config.protocol(name).enabled and (path == prefix or path.startswith(prefix + "/")):
            if best is None or len(prefix) > best[0]:
                best = (len(prefix), adapter)
    return best[1] if best is not None else None


def _routing_error_handler(config: Config) -> Callable[[Request, Exception], Awaitable[Response]]:
    """A path no route serves (404), or a method a core route does not take (405): in the shape
    of the protocol whose prefix the path falls under, else in a neutral JSON shape."""

    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        err: ClipgateError = (
            MethodNotAllowed(headers=dict(exc.headers or {})) if exc.status_code == 405 else RouteNotFound()
        )
        adapter = _owner(config, request.scope["path"])
        if adapter is not None:
            reply = adapter.render_error(err)
            return probes.neutral(reply.status, reply.body, {**reply.headers, **err.headers})
        return probes.neutral(err.status, {"message": err.message}, err.headers)

    return handle


def create_app(
    config: Config,
    model: Model | None = None,
    *,
    wait_ready: bool = False,
    on_fatal: Callable[[str], None] | None = None,
) -> Starlette:
    """Build the app. With no `model`, the lifespan loads `config.model`: in the background by
    default (probes answer at once; readiness turns 200 when the model is loaded and warm; a load
    failure calls `on_fatal` with one line), or, with `wait_ready`, before startup completes (a
    load failure fails the startup), for hosts that count a worker as ready once it has started.
    A `model` handed in is warmed before startup completes."""
    server = config.server
    budget = BodyBudget(server.max_inflight_body_bytes or auto_capacity(), server.body_budget_wait_s)
    state = AppState(__version__, budget)

    async def load() -> None:
        loop = asyncio.get_running_loop()
        loaded = model if model is not None else await loop.run_in_executor(None, load_model, config.model)
        service = EmbeddingService(loaded, config)
        service.start()
        try:
            await service.batcher.run_on_model_thread(loaded.encoder.warmup)
        except BaseException:
            await service.stop()
            raise
        state.service = service
        card = loaded.card
        log.info("ready: %s (%s, %s, %d-d)", card.name, card.device, card.dtype, card.dim)

    async def load_or_report() -> None:
        try:
            await load()
        except ModelLoadError as exc:
            fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - the traceback goes to the log; one line to the operator
            log.exception("model load or warm-up failed")
            fail(f"cannot load and warm up model {config.model.id}: {type(exc).__name__}: {exc}")

    def fail(line: str) -> None:
        log.error("%s", line)
        if on_fatal is not None:
            on_fatal(line)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime.configure_process(config.server)
        drain = runtime.Drain(state, config.server.drain_grace_s)
        drain.install()
        task: asyncio.Task[None] | None = None
        try:
            if wait_ready:
                await load()
            else:
                task = asyncio.get_running_loop().create_task(load_or_report())
                if model is not None:
                    await task  # a model handed in is ready at once: tests see a warm server
            yield
        finally:
            drain.uninstall()
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            service, state.service = state.service, None
            if service is not None:
                await service.stop()

    handler = _routing_error_handler(config)
    app = Starlette(
        routes=build_routes(config, state),
        lifespan=lifespan,
        exception_handlers={404: handler, 405: handler},
    )
    app.add_middleware(PathNormalizer)
    app.state.clipgate = state
    return app


def app_from_env() -> Starlette:
    """The factory for ASGI servers: `uvicorn --factory clipgate.app:app_from_env`. Reads the
    file named by CLIPGATE_CONFIG (if set) and the CLIPGATE_* variables; the server's address
    comes from the host's own flags. Startup completes once the model is loaded and warm."""
    return create_app(load_app_config(os.environ.get("CLIPGATE_CONFIG"), os.environ), wait_ready=True)
