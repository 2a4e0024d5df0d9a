"""The one endpoint wrapper: body limits, auth, parse, embed, render, and errors in the vendor's shape."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import random
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from clipgate.adapter import Adapter, Body, Operation, Reply, ServerState
from clipgate.canonical import EmbedRequest, EmbedResult, RequestMeta
from clipgate.config import Config
from clipgate.errors import (
    ClipgateError,
    DeadlineExceeded,
    HeaderTooLarge,
    InternalError,
    MethodNotAllowed,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    SchemaError,
    Unauthorized,
    UnsupportedMediaType,
)
from clipgate.multipart import parse_form
from clipgate.service import EmbeddingService

log = logging.getLogger("clipgate.http")

Endpoint = Callable[[Request], Awaitable[Response]]

MAX_MULTIPART_PARTS = 16
REQUEST_ID_MAX = 100


class Gateway(ServerState):
    """The state every endpoint shares: the service once loaded, and whether it is ready."""

    def __init__(self, config: Config, version: str) -> None:
        self.config = config
        self.service: EmbeddingService | None = None
        self._ready = False
        self.draining = False  # SIGTERM: probes say not ready while requests in flight finish
        self.inflight = 0  # embedding requests being read, decoded or waiting
        self._version = version
        self._instance_id = uuid.uuid4().hex

    @property
    def loaded(self) -> bool:
        """The model is loaded and warm: embedding requests are served."""
        return self._ready and self.service is not None

    @property
    def ready(self) -> bool:
        """What readiness probes report: loaded, and not draining for shutdown."""
        return self.loaded and not self.draining

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    @property
    def card(self) -> Any:
        return self.service.card if self.service is not None else None

    @property
    def version(self) -> str:
        return self._version

    @property
    def instance_id(self) -> str:
        return self._instance_id


def make_endpoint(adapter: Adapter, op: Operation, gateway: Gateway) -> Endpoint:
    keys = tuple(k.encode() for k in gateway.config.auth.keys_for(adapter.name))
    limits = gateway.config.server
    allowed = set(op.methods) | ({"HEAD"} if "GET" in op.methods else set())

    async def endpoint(request: Request) -> Response:
        meta = _meta(request)
        extra = dict(adapter.response_headers(meta))
        try:
            if meta.method not in allowed:
                raise MethodNotAllowed(headers={"Allow": ", ".join(op.methods)})
            if len(meta.headers.get("x-request-id", "")) > REQUEST_ID_MAX:
                raise HeaderTooLarge(f"x-request-id is longer than {REQUEST_ID_MAX} characters.")
            if op.respond is not None:
                return _response(op.respond(gateway, meta), extra)
            checked = not keys or op.public
            if not checked:  # header and query channels: refuse before reading the body
                early = adapter.credential(None, meta)
                if early is not None or not adapter.body_credential:
                    _authorize(early, keys)
                    checked = True
            if gateway.inflight >= limits.max_inflight_requests:
                raise Overloaded(f"The server is handling {gateway.inflight} requests, its limit; retry later.")
            gateway.inflight += 1
            phase = ["reading"]  # which part of the request the deadline caught
            try:
                async with asyncio.timeout(limits.request_timeout_s):
                    result, canonical = await _embed(request, op, adapter, meta, gateway, keys, checked, phase)
            except TimeoutError as exc:
                if phase[0] == "reading":  # the client's upload, not the server, is too slow
                    raise RequestTimeout(
                        f"The request body did not arrive within {limits.request_timeout_s:g} s."
                    ) from exc
                raise DeadlineExceeded(
                    f"The request was not answered within {limits.request_timeout_s:g} s; retry later."
                ) from exc
            except ClientDisconnect:
                log.info("%s %s: the client went away during its upload", meta.method, meta.path)
                return Response(status_code=499)  # nobody reads this
            finally:
                gateway.inflight -= 1
            if result is None:  # the client went away; nobody reads this
                return Response(status_code=499)
            assert op.render is not None
            return _response(Reply(200, op.render(result, canonical)), extra)
        except ClipgateError as err:
            if err.status >= 500:
                log.warning("%s %s -> %d %s", meta.method, meta.path, err.status, err.message)
            return _response(adapter.render_error(err), extra, err)
        except Exception:  # noqa: BLE001 - the traceback goes to the log, never to the caller
            log.exception("unhandled error on %s %s (request %s)", meta.method, meta.path, meta.request_id)
            internal = InternalError()
            return _response(adapter.render_error(internal), extra, internal)

    return endpoint


async def _embed(
    request: Request,
    op: Operation,
    adapter: Adapter,
    meta: RequestMeta,
    gateway: Gateway,
    keys: tuple[bytes, ...],
    checked: bool,
    phase: list[str],
) -> tuple[EmbedResult | None, EmbedRequest]:
    """Read, authorize, parse and embed one request. None for a client that went away: its
    queued work is dropped when the embedding task is cancelled."""
    limits = gateway.config.server
    body = await _read_body(request, op, adapter, meta, limits.max_body_bytes, limits.max_json_depth)
    phase[0] = "serving"
    if not checked:
        _authorize(adapter.credential(body, meta), keys)
    service = gateway.service
    if not gateway.loaded or service is None:
        raise NotReady()
    assert op.parse is not None
    canonical = op.parse(body, meta)
    embedding = asyncio.ensure_future(service.embed(canonical))
    gone = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait((embedding, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not embedding.done():
            embedding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await embedding
    if embedding.cancelled():
        log.info("%s %s: the client went away; its work was dropped", meta.method, meta.path)
        return None, canonical
    return embedding.result(), canonical


async def _disconnected(receive: Receive) -> None:
    """Returns when the client disconnects. Call only after the body has been read."""
    while (await receive())["type"] != "http.disconnect":
        pass


def new_request_id() -> str:
    """A random version-4 UUID for a request that brought no id. Not `uuid.uuid4()`: its
    os.urandom call lets go of the GIL, and under load taking it back from the model thread
    cost the event loop more than the rest of the request (py-spy). Unique is all these need."""
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


def _meta(request: Request) -> RequestMeta:
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


async def _read_body(
    request: Request, op: Operation, adapter: Adapter, meta: RequestMeta, limit: int, max_depth: int
) -> Body:
    if op.body == "none":
        return None
    declared = meta.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is {declared} bytes; the limit is {limit}.")
    if op.body == "json" and adapter.json_content_type_required and not _is_json_type(meta.content_type):
        raise UnsupportedMediaType("Expects Content-Type to be application/json")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is over the limit of {limit} bytes.")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if op.body == "multipart":
        return parse_form(raw, meta.headers.get("content-type", ""), max_parts=MAX_MULTIPART_PARTS)
    if not raw.strip():
        raise SchemaError("The request body is empty; a JSON object is expected.", kind="empty_body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SchemaError(f"The request body is not valid JSON: {exc}", kind="json_invalid") from exc
    if _depth_exceeds(raw, body, max_depth):
        raise SchemaError(f"The request body nests JSON deeper than {max_depth} levels.", kind="json_invalid")
    return body


def _depth_exceeds(raw: bytes, value: object, limit: int) -> bool:
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
