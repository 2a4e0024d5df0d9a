"""`/admin/faults`: set, list and clear injected faults over HTTP, for a clipgate in a container
(CI service containers, testcontainers). Mounted only with `[faults] enabled`, never prefixed,
and only for the bearer `faults.admin_key` (compared in constant time, never logged).

    GET    /admin/faults   the faults set, with how often each matched and applied
    POST   /admin/faults   add faults: a JSON object or list of them, or a text/plain header string
    DELETE /admin/faults   clear them
"""

from __future__ import annotations

import hmac

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from clipgate.faults import Fault, FaultPlan, FaultSyntaxError
from clipgate.probes import neutral

PATH = "/admin/faults"
MAX_BODY = 64 * 1024


def routes(faults: FaultPlan, admin_key: str) -> list[Route]:
    key = admin_key.encode()

    def authorized(request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return bool(key) and scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key)

    async def endpoint(request: Request) -> Response:
        if not authorized(request):
            why = "a bearer admin key is required" if key else "set faults.admin_key to use the admin route"
            return neutral(401, {"message": why}, {"WWW-Authenticate": "Bearer"})
        if request.method == "DELETE":
            faults.clear()
            return neutral(200, {"faults": []})
        if request.method == "POST":
            body = await request.body()
            if len(body) > MAX_BODY:
                return neutral(413, {"message": f"at most {MAX_BODY} bytes of faults"})
            try:
                if request.headers.get("content-type", "").startswith("text/plain"):
                    added = [Fault.parse(body.decode())]
                else:
                    data = orjson.loads(body)
                    added = [Fault.from_json(item) for item in (data if isinstance(data, list) else [data])]
            except (FaultSyntaxError, orjson.JSONDecodeError, UnicodeDecodeError) as exc:
                return neutral(400, {"message": f"not a fault: {exc}"})
            for fault in added:
                faults.set(fault)
        return neutral(200, {"faults": faults.rules()})

    return [Route(PATH, endpoint, methods=["GET", "POST", "DELETE"])]
