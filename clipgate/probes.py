"""The core's own routes, `GET /livez` and `GET /readyz`: mounted whatever protocols are enabled,
never under a prefix, and answered in a neutral JSON shape."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from clipgate.state import AppState

PATHS = ("/livez", "/readyz")


def neutral(status: int, body: Mapping[str, object], headers: Mapping[str, str] | None = None) -> Response:
    """A JSON answer in no vendor's shape: probes, and paths that belong to no protocol."""
    return Response(orjson.dumps(body), status, headers=dict(headers or {}), media_type="application/json")


def routes(state: AppState) -> list[Route]:
    async def livez(request: Request) -> Response:
        return neutral(200, {"status": "alive"})

    async def readyz(request: Request) -> Response:
        reason = state.not_ready_reason()
        if reason is None:
            return neutral(200, {"status": "ready"})
        return neutral(503, {"status": "not ready", "reason": reason}, {"Retry-After": "1"})

    return [Route("/livez", livez, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]
