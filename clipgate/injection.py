"""The HTTP side of fault injection (clipgate.faults): the answers a faulty server gives.

A connection reset, a body cut short, a body dribbled slowly, or no answer at all. Under uvicorn
the connection itself is closed (a reset sends an RST, as a crashed peer's kernel does); under
an in-process client (httpx's ASGITransport, Starlette's TestClient) a reset or a cut body
raises in the client instead, as a broken connection would.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from clipgate.errors import ClipgateError, InternalError, SchemaError, Unauthorized

HANG_MAX_S = 600.0  # a hang ends when the client gives up, or after this long
DRIBBLE_TICK_S = 0.1


class InjectedFault(ClipgateError):
    """An error status a fault asked for: the adapter renders it in the vendor's shape."""

    def __init__(self, status: int, retry_after: int | None) -> None:
        super().__init__(f"Injected fault: HTTP {status}.", retry_after=retry_after)
        self.status = status


def injected_error(status: int, retry_after: int | None) -> ClipgateError:
    """The error for an injected status, as the vendor would show that status: a 401 is the
    vendor's unauthorized answer, a 422 its validation error, a 500 its internal error."""
    err: ClipgateError
    if status == 401:
        err = Unauthorized("Injected fault: HTTP 401.")
    elif status == 422:
        err = SchemaError("Injected fault: HTTP 422.")
    elif status == 500:
        err = InternalError()
    else:
        return InjectedFault(status, retry_after)
    err.retry_after = retry_after
    return err


def _transport(receive: Receive) -> Any:
    """uvicorn's asyncio transport for this request, if the server is uvicorn."""
    cycle = getattr(receive, "__self__", None)
    return getattr(cycle, "transport", None)


async def _close(receive: Receive, *, reset: bool) -> bool:
    """Close the connection now (with an RST when `reset`); False when there is none to close."""
    transport = _transport(receive)
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    if reset and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    await asyncio.sleep(0)  # uvicorn sees the connection gone before the app returns
    return True


class ResetResponse(Response):
    """No answer: the connection is reset."""

    def __init__(self) -> None:
        super().__init__(status_code=500)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await _close(receive, reset=True):
            raise ConnectionResetError("clipgate injected a connection reset")


class HangResponse(Response):
    """No answer until the client gives up (or HANG_MAX_S)."""

    def __init__(self) -> None:
        super().__init__(status_code=499)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with asyncio.timeout(HANG_MAX_S):
            while (await receive())["type"] != "http.disconnect":
                pass


class MangledResponse(Response):
    """`inner`'s status and headers, then its body cut after `truncate` bytes (the connection
    closes) or sent at `dribble` bytes per second."""

    def __init__(self, inner: Response, *, truncate: int | None, dribble: int | None) -> None:
        super().__init__(status_code=inner.status_code)
        self.inner, self.truncate, self.dribble = inner, truncate, dribble

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        inner = self.inner
        body = bytes(inner.body)
        await send({"type": "http.response.start", "status": inner.status_code, "headers": inner.raw_headers})
        cut = body if self.truncate is None else body[: self.truncate]
        step = max(1, int(self.dribble * DRIBBLE_TICK_S)) if self.dribble else len(cut) or 1
        for start in range(0, len(cut), step):
            await send({"type": "http.response.body", "body": cut[start : start + step], "more_body": True})
            if self.dribble:
                await asyncio.sleep(DRIBBLE_TICK_S)
        if len(cut) < len(body):
            if not await _close(receive, reset=False):
                raise ConnectionError(f"clipgate injected a truncated body: {len(cut)} of {len(body)} bytes")
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
