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
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from adapters import REGISTRY
from clipgate import __version__, admin, docs, openapi, probes, runtime
from clipgate.adapter import Adapter
from clipgate.batcher import WorkQueue
from clipgate.budget import BodyBudget, auto_capacity
from clipgate.config import Config, load_config
from clipgate.engine import Model, ModelLoadError, load_model
from clipgate.errors import ClipgateError, MethodNotAllowed, RouteNotFound
from clipgate.faults import FaultPlan
from clipgate.http import PathNormalizer, ReplicaHeader, make_endpoint
from clipgate.metrics import CONTENT_TYPE, Metrics
from clipgate.service import EmbeddingService
from clipgate.state import AppState

log = logging.getLogger("clipgate")


ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
UNMATCHED = "<unmatched>"  # the route label of a path no route serves (never the raw path)


def load_app_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The configuration, with one table for each protocol in the adapter registry."""
    return load_config(path, environ, protocols={name: adapter.settings for name, adapter in REGISTRY.items()})


def _prefix(config: Config, name: str) -> str:
    prefix = config.protocol(name).prefix.strip("/")
    return "/" + prefix if prefix else ""


def build_routes(config: Config, state: AppState) -> list[BaseRoute]:
    """The core's probes, /metrics and API docs, then every enabled protocol's routes under its
    prefix. Two routes on one path are a startup error naming both owners."""
    routes: list[BaseRoute] = list(probes.routes(state))
    seen = dict.fromkeys(probes.PATHS, "clipgate's probes")
    if config.server.metrics and config.server.metrics_port == 0:
        routes.append(Route(METRICS_PATH, _metrics_endpoint(state.metrics), methods=["GET"]))
        seen[METRICS_PATH] = "clipgate's metrics"
    if config.faults.enabled:
        routes += admin.routes(state.faults, config.faults.admin_key)
        seen[admin.PATH] = "clipgate's fault admin"
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
            endpoint = make_endpoint(path, adapter, op, settings, config, state)
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


METRICS_PATH = "/metrics"


def _metrics_endpoint(metrics: Metrics) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    return endpoint


def start_metrics_server(metrics: Metrics, host: str, port: int) -> WSGIServer:
    """/metrics on a port of its own (`server.metrics_port`), on a thread, as Prometheus exporters do."""
    server, _ = start_http_server(port, addr=host, registry=metrics.registry)
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server


def _routing_error_handler(config: Config, metrics: Metrics) -> Callable[[Request, Exception], Awaitable[Response]]:
    """A path no route serves (404), or a method a core route does not take (405): in the shape
    of the protocol whose prefix the path falls under, else in a neutral JSON shape."""

    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        err: ClipgateError = (
            MethodNotAllowed(headers=dict(exc.headers or {})) if exc.status_code == 405 else RouteNotFound()
        )
        adapter = _owner(config, request.scope["path"])
        metrics.request_done(adapter.name if adapter is not None else "none", UNMATCHED, err.status, 0.0)
        metrics.rejected("invalid")
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
    queue: WorkQueue | None = None,
) -> Starlette:
    """Build the app. With no `model`, the lifespan loads `config.model`: in the background by
    default (probes answer at once; readiness turns 200 when the model is loaded and warm; a load
    failure calls `on_fatal` with one line), or, with `wait_ready`, before startup completes (a
    load failure fails the startup), for hosts that count a worker as ready once it has started.
    A `model` handed in is warmed before startup completes. With `queue`, the model's batches run
    behind it, elsewhere (clipgate.ray's split mode)."""
    server = config.server
    budget = BodyBudget(server.max_inflight_body_bytes or auto_capacity(), server.body_budget_wait_s)
    metrics = Metrics(request_timeout_s=server.request_timeout_s, enabled=server.metrics)
    state = AppState(
        __version__, budget, metrics, FaultPlan(enabled=config.faults.enabled), replica_id=server.replica_id
    )
    metrics.watch(inflight=lambda: state.inflight, ready=lambda: state.ready, queue_depth=state.queue_depth)

    async def load() -> None:
        loop = asyncio.get_running_loop()
        loaded = model if model is not None else await loop.run_in_executor(None, load_model, config.model)
        service = EmbeddingService(loaded, config, metrics=metrics, queue=queue)
        service.start()
        started = time.perf_counter()
        try:
            await service.batcher.run_on_model_thread(loaded.encoder.warmup)
        except BaseException:
            await service.stop()
            raise
        log.info("warmed up in %.1f s", time.perf_counter() - started)
        state.service = service
        card = loaded.card
        metrics.model_loaded(card, config.model.backend)
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
        exporter = start_metrics_server(metrics, server.host, server.metrics_port) if metrics_apart else None
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
            if exporter is not None:
                exporter.shutdown()
                exporter.server_close()
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            service, state.service = state.service, None
            if service is not None:
                await service.stop()

    metrics_apart = server.metrics and server.metrics_port != 0
    handler = _routing_error_handler(config, metrics)
    app = Starlette(
        routes=build_routes(config, state),
        lifespan=lifespan,
        exception_handlers={404: handler, 405: handler},
    )
    app.add_middleware(PathNormalizer)
    app.add_middleware(ReplicaHeader, replica_id=state.replica_id)  # outermost: on every answer, errors too
    app.state.clipgate = state
    return app


def app_from_env() -> Starlette:
    """The factory for ASGI servers: `uvicorn --factory clipgate.app:app_from_env`. Reads the
    file named by CLIPGATE_CONFIG (if set) and the CLIPGATE_* variables; the server's address
    comes from the host's own flags. Startup completes once the model is loaded and warm."""
    config = load_app_config(os.environ.get("CLIPGATE_CONFIG"), os.environ)
    runtime.configure_process(config.server)  # the host's lines from here on come in clipgate's format
    return create_app(config, wait_ready=True)
