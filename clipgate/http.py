"""The one endpoint wrapper: body limits, auth, parse, embed, render, and errors in the vendor's shape."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clipgate import logs
from clipgate.adapter import Adapter, Body, Operation, ProtocolSettings, Reply
from clipgate.budget import Reservation
from clipgate.canonical import EmbedRequest, EmbedResult, ModelCard, RequestMeta, TextInput
from clipgate.config import Config, ServerConfig
from clipgate.errors import (
    ClipgateError,
    DeadlineExceeded,
    HeaderTooLarge,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    SchemaError,
    Unauthorized,
    UnsupportedMediaType,
)
from clipgate.faults import HEADER as FAULT_HEADER
from clipgate.faults import Fault, FaultSyntaxError
from clipgate.injection import HangResponse, MangledResponse, ResetResponse, injected_error
from clipgate.metrics import rejection_reason
from clipgate.multipart import parse_form
from clipgate.service import EmbeddingService
from clipgate.state import AppState

log = logging.getLogger("clipgate.http")

Endpoint = Callable[[Request], Awaitable[Response]]

MAX_MULTIPART_PARTS = 16
BODY_OVERHEAD = 64 * 1024  # a body's fields besides its images and texts
REQUEST_ID_MAX = 100


@dataclass(frozen=True, slots=True)
class Route:
    """What one endpoint serves: the adapter, its operation, the protocol's settings, its limits."""

    path: str  # the mounted template, prefix included: the `route` of metrics and logs
    adapter: Adapter
    op: Operation
    settings: ProtocolSettings
    limits: ServerConfig
    body_limit: int
    limit_reason: str

    @property
    def keys(self) -> tuple[bytes, ...]:
        return tuple(key.encode() for key in self.settings.keys)


@dataclass(slots=True)
class Exchange:
    """What one request turned out to be, for its metrics and its access line."""

    images: int = 0
    texts: int = 0
    bytes_in: int = 0
    rejection: str | None = None  # clipgate_rejections_total's reason, when it was refused
    fault: str | None = None  # the kind of fault injected into it, if any


async def _inject(state: AppState, route: Route, meta: RequestMeta, exchange: Exchange) -> Fault | Response | None:
    """The fault for this request (clipgate.faults), after its delay: an answer that replaces the
    request's (a hang, a reset), an error status raised in the vendor's shape, or a fault that
    mangles the real answer (truncate, dribble). None when faults are off or none applies."""
    try:
        picked = state.faults.pick(route.adapter.name, route.path, meta.headers.get(FAULT_HEADER))
    except FaultSyntaxError as exc:
        raise InvalidRequest(f"X-Clipgate-Fault: {exc}") from exc
    if picked is None:
        return None
    fault, delay_s = picked
    exchange.fault = fault.kind
    state.metrics.fault_injected(fault.kind)
    log.info("injecting a fault into %s %s: %s", meta.method, meta.path, fault.to_json())
    if delay_s:
        await asyncio.sleep(delay_s)
    if fault.hang:
        return HangResponse()
    if fault.reset:
        return ResetResponse()
    if fault.status is not None:
        raise injected_error(fault.status, fault.retry_after)
    return fault


def make_endpoint(
    path: str, adapter: Adapter, op: Operation, settings: ProtocolSettings, config: Config, state: AppState
) -> Endpoint:
    """The endpoint of one operation: every hook's failure is answered in the adapter's shape;
    every request is counted, timed and logged once, under its request id."""
    route = Route(path, adapter, op, settings, config.server, *body_limit(op, config))
    allowed = set(op.methods) | ({"HEAD"} if "GET" in op.methods else set())

    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        meta = _meta(request, settings, state.card)
        token = logs.REQUEST_ID.set(meta.request_id)
        exchange = Exchange()
        try:
            response = await answer(request, meta, exchange)
            seconds = time.perf_counter() - started
            state.metrics.request_done(adapter.name, path, response.status_code, seconds)
            if exchange.rejection is not None:
                state.metrics.rejected(exchange.rejection)
            logs.access(_access_fields(route, request, meta, response.status_code, seconds, exchange))
            return response
        finally:
            logs.REQUEST_ID.reset(token)

    async def answer(request: Request, meta: RequestMeta, exchange: Exchange) -> Response:
        extra: Mapping[str, str] = {}
        try:
            extra = dict(adapter.response_headers(meta))
            if meta.method not in allowed:
                raise MethodNotAllowed(headers={"Allow": ", ".join(op.methods)})
            if len(meta.headers.get("x-request-id", "")) > REQUEST_ID_MAX:
                raise HeaderTooLarge(f"x-request-id is longer than {REQUEST_ID_MAX} characters.")
            fault = await _inject(state, route, meta, exchange)
            if isinstance(fault, Response):
                return fault
            if op.respond is not None:
                response = _response(op.respond(state, meta), extra)
            else:
                response = await _serve(route, state, request, meta, extra, exchange)
            if fault is not None and (fault.truncate is not None or fault.dribble is not None):
                return MangledResponse(response, truncate=fault.truncate, dribble=fault.dribble)
            return response
        except ClipgateError as err:
            exchange.rejection = None if exchange.fault else rejection_reason(err)
            response = _error(route, meta, extra, err)
            _drop_tracebacks(err)
            return response
        except Exception as exc:  # noqa: BLE001 - the traceback goes to the log, never to the caller
            log.exception("unhandled error on %s %s", meta.method, meta.path)
            _drop_tracebacks(exc)
            return _error(route, meta, extra, InternalError())

    return endpoint


def _access_fields(
    route: Route, request: Request, meta: RequestMeta, status: int, seconds: float, exchange: Exchange
) -> dict[str, object]:
    client = request.client
    return {
        "request_id": meta.request_id,
        "protocol": route.adapter.name,
        "route": route.path,
        "method": meta.method,
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
        "images": exchange.images,
        "texts": exchange.texts,
        "bytes_in": exchange.bytes_in,
        "client": f"{client.host}:{client.port}" if client is not None else None,
        "trace_id": logs.trace_id(meta.headers.get("traceparent")),
        "fault": exchange.fault,
    }


def _drop_tracebacks(exc: BaseException) -> None:
    """Forget the frames an answered error passed through. They hold the request's body and
    parsed items, and the futures the error was stored in make a reference cycle with them, so
    without this a failed request's megabytes stay until the garbage collector happens to run
    (measured: 32 refused 60 MB bodies left the process 480 MiB larger until a gc.collect())."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        stack += [current.__cause__, current.__context__]


def _error(route: Route, meta: RequestMeta, extra: Mapping[str, str], err: ClipgateError) -> Response:
    if err.status >= 500:
        log.warning("%s %s -> %d %s", meta.method, meta.path, err.status, err.message)
    try:
        reply = route.adapter.render_error(err)
    except Exception:  # noqa: BLE001 - a broken renderer still gives the caller an answer
        log.exception("%s render_error failed on %s", route.adapter.name, type(err).__name__)
        reply = Reply(err.status, {"message": err.message})
    return _response(reply, extra, err)


async def _serve(
    route: Route, state: AppState, request: Request, meta: RequestMeta, extra: Mapping[str, str], exchange: Exchange
) -> Response:
    """An embedding request, step by step: credential from headers or query, admission (requests
    in flight, then body bytes in flight), the body (within the deadline: 408), the credential
    from the body, then parse and embed (within what is left of the deadline: 503), racing the
    client's disconnect."""
    authorized = _early_credential(route, meta)
    limits = route.limits
    deadline = asyncio.get_running_loop().time() + limits.request_timeout_s
    with _admitted(state, limits.max_inflight_requests):
        async with state.body_budget.reservation() as reservation:
            try:
                body = await _read_body_by(deadline, request, route, meta, reservation)
            except ClientDisconnect:
                log.info("%s %s: the client went away during its upload", meta.method, meta.path)
                exchange.rejection = "client_gone"
                return Response(status_code=499)  # nobody reads this
            exchange.bytes_in = reservation.body_bytes
            if not authorized:
                _authorize(route.adapter.credential(body, meta), route.keys)
            service = state.service
            if service is None:
                raise NotReady()
            assert route.op.parse is not None and route.op.render is not None
            canonical = route.op.parse(body, meta)
            del body  # what the request still needs is in `canonical`
            exchange.texts = sum(isinstance(item, TextInput) for item in canonical.items)
            exchange.images = len(canonical.items) - exchange.texts
            result = await _embed_by(deadline, service, canonical, request.receive, limits.request_timeout_s)
    if result is None:
        log.info("%s %s: the client went away; its work was dropped", meta.method, meta.path)
        exchange.rejection = "client_gone"
        return Response(status_code=499)  # nobody reads this
    return _response(Reply(200, route.op.render(result, canonical)), extra)


async def _read_body_by(
    deadline: float, request: Request, route: Route, meta: RequestMeta, reservation: Reservation
) -> Body:
    """The body, or 408 when it has not arrived by `deadline` (the client's upload is too slow)."""
    try:
        async with asyncio.timeout_at(deadline):
            return await _read_body(request, route, meta, reservation)
    except TimeoutError as exc:
        raise RequestTimeout(f"The request body did not arrive within {route.limits.request_timeout_s:g} s.") from exc


async def _embed_by(
    deadline: float, service: EmbeddingService, canonical: EmbedRequest, receive: Receive, timeout_s: float
) -> EmbedResult | None:
    """The embedding, None if the client disconnects first, or 503 when it is not done by `deadline`."""
    try:
        async with asyncio.timeout_at(deadline):
            return await _embed_unless_gone(service, canonical, receive)
    except TimeoutError as exc:
        raise DeadlineExceeded(f"The request was not answered within {timeout_s:g} s; retry later.") from exc


def _early_credential(route: Route, meta: RequestMeta) -> bool:
    """Check a header or query credential before the body is read. False when the check has to
    wait for the body (the adapter's clients may put the key there and sent none elsewhere)."""
    if not route.settings.keys or route.op.public:
        return True
    credential = route.adapter.credential(None, meta)
    if credential is None and route.adapter.body_credential:
        return False
    _authorize(credential, route.keys)
    return True


@contextlib.contextmanager
def _admitted(state: AppState, limit: int) -> Iterator[None]:
    """Count the request in flight, or refuse it when `limit` are already."""
    if state.inflight >= limit:
        raise Overloaded(f"The server is handling {state.inflight} requests, its limit; retry later.")
    state.inflight += 1
    try:
        yield
    finally:
        state.inflight -= 1


async def _embed_unless_gone(
    service: EmbeddingService, canonical: EmbedRequest, receive: Receive
) -> EmbedResult | None:
    """The embedding, or None if the client disconnects first: its queued work is then dropped."""
    embedding = asyncio.ensure_future(service.embed(canonical))
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((embedding, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not embedding.done():
            embedding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await embedding
    return None if embedding.cancelled() else embedding.result()


async def _disconnected(receive: Receive) -> None:
    """Returns when the client disconnects. Call only after the body has been read."""
    while (await receive())["type"] != "http.disconnect":
        pass


def new_request_id() -> str:
    """A random version-4 UUID for a request that brought no id. Not `uuid.uuid4()`: its
    os.urandom call lets go of the GIL, and under load taking it back from the model thread
    cost the event loop more than the rest of the request (py-spy). Unique is all these need."""
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


def _meta(request: Request, settings: ProtocolSettings, card: ModelCard | None) -> RequestMeta:
    headers = {k.lower(): v for k, v in request.headers.items()}
    given = headers.get("x-request-id", "")
    request_id = given if 0 < len(given) <= REQUEST_ID_MAX else new_request_id()
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return RequestMeta(
        method=request.method,
        path=request.scope["path"],
        headers=headers,
        query=dict(request.query_params),
        path_params={k: str(v) for k, v in request.path_params.items()},
        request_id=request_id,
        content_type=content_type,
        settings=settings,
        card=card,
    )


def _authorize(credential: str | None, keys: Sequence[bytes]) -> None:
    if not credential:
        raise Unauthorized("A credential is required.")
    given = credential.encode()
    matched = False
    for key in keys:  # compare with every key, whatever the outcome, in constant time each
        matched |= hmac.compare_digest(given, key)
    if not matched:
        raise Unauthorized("The credential is not valid.")


async def _read_body(request: Request, route: Route, meta: RequestMeta, reservation: Reservation) -> Body:
    """The body, parsed, under its route's size limit and within the app's budget of body bytes
    in flight: the declared length is reserved before a byte is read, a chunked body chunk by chunk."""
    op, limit = route.op, route.body_limit
    if op.body == "none":
        return None
    declared = meta.headers.get("content-length")
    length = int(declared) if declared is not None and declared.isdigit() else None
    if length is not None and length > limit:
        raise PayloadTooLarge(f"The request body is {declared} bytes; the limit is {limit}{route.limit_reason}.")
    if op.body == "json" and route.adapter.json_content_type_required and not _is_json_type(meta.content_type):
        raise UnsupportedMediaType("Expects Content-Type to be application/json")
    if length is not None:
        await reservation.grow_to(length)
    raw = bytearray()
    async for chunk in request.stream():
        if len(raw) + len(chunk) > limit:
            raise PayloadTooLarge(f"The request body is over the limit of {limit} bytes{route.limit_reason}.")
        if length is None:
            await reservation.grow_to(len(raw) + len(chunk))
        raw += chunk
    if op.body == "multipart":
        return parse_form(raw, meta.headers.get("content-type", ""), max_parts=MAX_MULTIPART_PARTS)
    if not raw.strip():
        raise SchemaError("The request body is empty; a JSON object is expected.", kind="empty_body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SchemaError(f"The request body is not valid JSON: {exc}", kind="json_invalid") from exc
    if _depth_exceeds(raw, body, route.limits.max_json_depth):
        raise SchemaError(
            f"The request body nests JSON deeper than {route.limits.max_json_depth} levels.", kind="json_invalid"
        )
    return body


def body_limit(op: Operation, config: Config) -> tuple[int, str]:
    """The largest body `op` could legitimately need, capped by `server.max_body_bytes`, and a note
    saying why when the route's own bound is the lower one. Images count as base64 in JSON (with
    line breaks and a data: prefix) or as raw bytes in multipart; texts at 6 bytes a character
    (JSON's six-byte \\u escapes)."""
    server, images = config.server, config.images
    per_image = images.max_bytes + 1024 if op.body == "multipart" else math.ceil(images.max_bytes * 4 / 3 * 1.03) + 4096
    most = BODY_OVERHEAD
    if "image" in op.carries:
        most += server.max_images * per_image
    if "text" in op.carries:
        most += server.max_texts * (server.max_text_chars * 6 + 16)
    if most < server.max_body_bytes:
        return most, f" for this route ({', '.join(op.carries)} at their per-request limits)"
    return server.max_body_bytes, ""


def _depth_exceeds(raw: bytes | bytearray, value: object, limit: int) -> bool:
    """Whether JSON `value` nests containers more than `limit` deep. Skipped when `raw` holds too
    few brackets to get there; otherwise walked with a stack of iterators, so memory grows with
    the depth, not the width, and the walk stops at the first path past the limit."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    stack: list[Iterator[object]] = [iter((value,))]
    while stack:
        node = next(stack[-1], _END)
        if node is _END:
            stack.pop()
        elif isinstance(node, (dict, list)):
            if len(stack) > limit:
                return True
            stack.append(iter(node.values() if isinstance(node, dict) else node))
    return False


_END = object()


def _is_json_type(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def _response(reply: Reply, extra: Mapping[str, str], err: ClipgateError | None = None) -> Response:
    headers = {**extra, **reply.headers}
    if err is not None:
        headers.update(err.headers)
    if err is not None and err.retry_after is not None:
        headers.setdefault("Retry-After", str(err.retry_after))
    if isinstance(reply.body, str):
        return PlainTextResponse(reply.body, reply.status, headers=headers, media_type=reply.media_type or "text/plain")
    content = orjson.dumps(reply.body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content, reply.status, headers=headers, media_type=reply.media_type or "application/json")


class PathNormalizer:
    """Collapse runs of `/` in the path, so `http://host//api/...` (a base URL with a trailing
    slash joined to a path) reaches its route, as it does behind most proxies."""

    _SLASHES = re.compile(r"/{2,}")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "//" in scope["path"]:
            scope = dict(scope)
            scope["path"] = self._SLASHES.sub("/", scope["path"])
            if "raw_path" in scope:
                scope["raw_path"] = re.sub(rb"/{2,}", b"/", scope["raw_path"])
        await self.app(scope, receive, send)


REPLICA_HEADER = "X-Clipgate-Replica"


class ReplicaHeader:
    """Name the server that answered on every response (`X-Clipgate-Replica`), so operators and
    tests see how requests spread over replicas behind one address (Ray Serve, Kubernetes)."""

    def __init__(self, app: ASGIApp, replica_id: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.lower().encode("latin-1"), replica_id.encode("latin-1", "replace"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)
