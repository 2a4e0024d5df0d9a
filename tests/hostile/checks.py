"""What every hostile case asserts: a 4xx in the vendor's error shape (tests/vendors.py), no traceback
or internal repr, within a time bound; the server unharmed after it; and, where it matters, a peak
memory bound measured so that it can fail."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.testclient import TestClient

from clipgate.state import AppState
from tests.hostile.routes import Case, Route
from tests.vendors import shown

TIME_LIMIT_S = 5.0
MAX_ERROR_BODY_BYTES = 16 * 1024  # an error never reflects a large input back

# What a response must never carry: tracebacks, reprs, module paths, exception class names.
LEAK = re.compile(
    r"Traceback|File \"|site-packages|object at 0x|<class '|<function |<bound method|<module "
    r"|\b(?:clipgate|adapters|PIL|orjson|python_multipart|starlette|requests|urllib3|torch|numpy)\.[A-Za-z_]"
    r"|\b[A-Za-z_]+(?:Error|Exception)\b|ImageFile\b|ImagePlugin\b|b'\\x|b\"\\x|/work/|/usr/lib|/home/|/tmp/"
)


def send(client: TestClient, route: Route, call: dict[str, Any]) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = client.post(route.path, **call)
    return response, time.perf_counter() - started


def assert_refused(
    route: Route, response: httpx.Response, elapsed: float, allowed: frozenset[int] = frozenset()
) -> None:
    assert elapsed < TIME_LIMIT_S, f"took {elapsed:.2f} s: {shown(response)}"
    assert 400 <= response.status_code < 500, f"not a 4xx: {shown(response)}"
    if allowed:
        assert response.status_code in allowed, f"expected one of {sorted(allowed)}: {shown(response)}"
    route.profile.assert_error(response)
    leak = LEAK.search(response.text)
    assert leak is None, f"leaks {leak.group(0)!r}: {shown(response)}"
    assert len(response.content) <= MAX_ERROR_BODY_BYTES, f"error body of {len(response.content)} bytes"


def app_state(client: TestClient) -> AppState:
    state = client.app.state.clipgate  # type: ignore[attr-defined]
    assert isinstance(state, AppState)
    return state


def assert_unharmed(client: TestClient) -> None:
    """What a request leaves behind, read off the app without another request: nothing in
    flight (a leaked admission would end in 503s), and still ready."""
    state = app_state(client)
    assert state.inflight == 0, f"{state.inflight} requests still counted in flight after their answer"
    assert state.ready, f"the server is no longer ready: {state.not_ready_reason()}"


def check(
    client: TestClient, route: Route, call: dict[str, Any], allowed: frozenset[int] = frozenset()
) -> httpx.Response:
    """One hostile request: refused properly, and the server unharmed."""
    response, elapsed = send(client, route, call)
    assert_refused(route, response, elapsed, allowed)
    assert_unharmed(client)
    return response


def check_case(client: TestClient, case: Case) -> httpx.Response:
    return check(client, case.route, case.make(), case.allowed)


def assert_serves(client: TestClient, route: Route) -> None:
    """The same client gets a normal answer on the same route: a 200 read through the vendor profile."""
    call = route.valid_call()
    response, elapsed = send(client, route, call)
    assert response.status_code == 200, f"the server no longer serves {route.path}: {shown(response)}"
    assert elapsed < TIME_LIMIT_S, f"a valid request took {elapsed:.2f} s"
    route.endpoint.assert_served(response, count=1, sent=call.get("json"))
    assert_unharmed(client)


def check_then_serve(
    client: TestClient, route: Route, call: dict[str, Any], allowed: frozenset[int] = frozenset()
) -> httpx.Response:
    """For the cases most likely to wedge a server (bombs, body limits, multipart): the
    same client is served right after the case, in the same test."""
    response = check(client, route, call, allowed)
    assert_serves(client, route)
    return response


def assert_serves_after(client: TestClient, route: Route, group: list[Case]) -> None:
    """A group's cases for `route` (all of the group's, for a route the group does not attack; none
    that is heavy), back to back on `client`, a server of the test's own; then a valid request on
    the route. A server worn down by the group (a leak, a dead worker) fails here, whichever tests
    ran before."""
    assert group, "an empty group"
    mine = [case for case in group if case.route is route] or group
    for case in mine:
        if not case.heavy:  # a heavy case is served right after in its own test
            check_case(client, case)
    assert_serves(client, route)


# --- peak memory -------------------------------------------------------------------------------

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mb(key: str) -> float:
    for line in STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise AssertionError(f"{STATUS} has no {key}")


@dataclass
class Peak:
    start_mb: float = 0.0
    peak_mb: float = 0.0

    @property
    def grown_mb(self) -> float:
        """How far the process's resident memory rose above where it was when the block began."""
        return self.peak_mb - self.start_mb


@contextmanager
def peak_memory() -> Iterator[Peak]:
    """The process's peak resident memory over the block. `ru_maxrss` is a high-water mark for the
    process's whole life, so a block after a larger one would read as nothing: here Linux resets
    the mark (VmHWM) to the current size as the block begins (`5` to /proc/self/clear_refs)."""
    peak = Peak()
    CLEAR_REFS.write_text("5")
    peak.start_mb = _status_mb("VmHWM")
    try:
        yield peak
    finally:
        peak.peak_mb = _status_mb("VmHWM")
