"""The composition root: `create_app(config)` builds the Starlette app, its routes and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters import REGISTRY
from clipgate import __version__
from clipgate.config import Config
from clipgate.engine import ClipEngine, Engine, ModelLoadError
from clipgate.http import Gateway, PathNormalizer, make_endpoint
from clipgate.service import EmbeddingService

log = logging.getLogger("clipgate")


ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def build_routes(config: Config, gateway: Gateway) -> list[Route]:
    routes: list[Route] = []
    seen: dict[str, str] = {}
    for name, adapter in REGISTRY.items():
        settings = config.adapter(name)
        if not settings.enabled:
            continue
        prefix = "/" + settings.prefix.strip("/") if settings.prefix.strip("/") else ""
        for op in adapter.operations:
            path = (prefix + op.path) if op.path != "/" or not prefix else prefix
            other = seen.setdefault(path, name)
            if other != name:
                raise ValueError(f"{path} is served by both {other} and {name}; give one a prefix")
            # Every method reaches the endpoint, which answers a wrong one in the vendor's shape.
            routes.append(Route(path, make_endpoint(adapter, op, gateway), methods=ALL_METHODS))
    return routes


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = "Not found." if exc.status_code == 404 else str(exc.detail)
    return JSONResponse({"message": message}, exc.status_code, headers=exc.headers)


def create_app(
    config: Config,
    engine: Engine | None = None,
    *,
    on_fatal: Callable[[str], None] | None = None,
) -> Starlette:
    """Build the app. With no `engine`, the lifespan loads `config.model` in the background:
    the server answers probes at once and turns ready when the model is loaded and warm. A load
    failure calls `on_fatal` with one line (the CLI stops the server and exits non-zero)."""
    gateway = Gateway(config, __version__)

    async def load() -> None:
        loop = asyncio.get_running_loop()
        try:
            model: Engine = (
                engine if engine is not None else await loop.run_in_executor(None, ClipEngine.load, config.model)
            )
            service = EmbeddingService(model, config)
            service.start()
            gateway.service = service
            warmup = getattr(model, "warmup", None)
            if callable(warmup):
                await service.batcher.run_on_model_thread(warmup)
        except ModelLoadError as exc:
            fail(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - the traceback goes to the log; one line to the operator
            log.exception("model load or warm-up failed")
            fail(f"cannot load and warm up model {config.model.id}: {type(exc).__name__}: {exc}")
            return
        gateway.set_ready(True)
        log.info("ready: %s (%s, %s, %d-d)", model.card.name, model.card.device, model.card.dtype, model.card.dim)

    def fail(line: str) -> None:
        log.error("%s", line)
        if on_fatal is not None:
            on_fatal(line)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(load())
        if engine is not None:
            await task  # an engine handed in is ready at once: tests see a warm server
        try:
            yield
        finally:
            gateway.set_ready(False)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if gateway.service is not None:
                await gateway.service.stop()

    app = Starlette(
        routes=build_routes(config, gateway),
        lifespan=lifespan,
        exception_handlers={404: _http_error},
    )
    app.add_middleware(PathNormalizer)
    app.state.gateway = gateway
    return app
