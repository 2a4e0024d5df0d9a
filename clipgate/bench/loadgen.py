"""A small HTTP/1.1 load generator for loopback benchmarks and soak runs.

Requests are encoded once, up front, and replayed over keep-alive connections by `concurrency`
asyncio workers, so the client spends next to no CPU per request: on a 2-core machine every
cycle it burns is taken from the server it measures. Each run is bounded by a request count,
a duration, or both, and every request by a timeout: it always ends by itself.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import orjson

_CRLF2 = b"\r\n\r\n"
IDLE_REUSE_S = 2.0  # reuse a keep-alive connection only if it was used this recently


def encode_request(
    method: str,
    path: str,
    body: bytes = b"",
    *,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> bytes:
    """One complete HTTP/1.1 request, ready to write to a socket."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    if body:
        lines.append(f"Content-Type: {content_type}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def json_request(path: str, payload: object, *, headers: dict[str, str] | None = None) -> bytes:
    return encode_request("POST", path, orjson.dumps(payload), headers=headers)


def multipart_request(
    path: str, field_name: str, filename: str, data: bytes, *, headers: dict[str, str] | None = None
) -> bytes:
    boundary = "clipgatebenchboundary7MA4YWxkTrZu0gW"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return encode_request("POST", path, body, content_type=f"multipart/form-data; boundary={boundary}", headers=headers)


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class LoadReport:
    """What one run saw, counting only the answers that finished inside the measured window.

    Only a *successful* answer (status 200, and a body that passed the run's `check` if it had
    one) counts towards the rate and the latencies: a server that answers 503 fast must not look
    fast. Every answer's status is kept in `statuses`, 200s whose body failed the check in
    `bad_bodies`, and connection errors and timeouts (no status at all) in `failures`, so a run
    that was not clean says so (`clean`, `problems`)."""

    concurrency: int
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)  # of the successful answers only
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    bad_bodies: int = 0

    def record(self, status: int, latency_s: float, *, body_ok: bool = True) -> None:
        """One answer inside the window. `body_ok` is the `check`'s verdict on a 200 body."""
        self.statuses[status] += 1
        if status != 200:
            return
        if not body_ok:
            self.bad_bodies += 1
            return
        self.latencies_s.append(latency_s)

    @property
    def answered(self) -> int:
        """Answers of any status."""
        return sum(self.statuses.values())

    @property
    def succeeded(self) -> int:
        """Successful answers: the only ones any figure counts."""
        return len(self.latencies_s)

    @property
    def rate(self) -> float:
        """Successful answers per second (each benchmark request carries one image or text)."""
        return self.succeeded / self.elapsed_s if self.elapsed_s else 0.0

    def percentile(self, q: float) -> float:
        """Latency of the successful answers."""
        return percentile(self.latencies_s, q)

    def problems(self) -> list[str]:
        """Why the run is not a clean measure; empty when every request was answered 200 with a
        good body."""
        out = [f"{n} x {code}" for code, n in sorted(self.statuses.items()) if code != 200]
        if self.bad_bodies:
            out.append(f"{self.bad_bodies} x 200 with a bad body")
        out += [f"{n} x {kind}" for kind, n in sorted(self.failures.items())]
        if not self.succeeded and not out:
            out.append("no answer in the window")
        return out

    @property
    def clean(self) -> bool:
        return not self.problems()

    def summary(self) -> dict[str, object]:
        return {
            "concurrency": self.concurrency,
            "elapsed_s": round(self.elapsed_s, 3),
            "answered": self.answered,
            "succeeded": self.succeeded,
            "per_s": round(self.rate, 2),  # successful answers only
            "p50_ms": round(self.percentile(50) * 1000, 2),  # of successful answers only
            "p99_ms": round(self.percentile(99) * 1000, 2),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "failures": dict(self.failures),
            "bad_bodies": self.bad_bodies,
            "problems": self.problems(),
        }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile by the nearest-rank method; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


class Connection:
    """One keep-alive HTTP/1.1 connection that reads responses with a Content-Length or chunked body."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.last_used = time.monotonic()

    async def request(self, raw: bytes) -> Response:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        assert self._reader is not None
        self._writer.write(raw)
        await self._writer.drain()
        head = await self._reader.readuntil(_CRLF2)
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self._reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked()
        else:
            body = await self._reader.read()
            await self.close()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        self.last_used = time.monotonic()
        return Response(status, headers, body)

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        parts: list[bytes] = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size + 2))
            parts[-1] = parts[-1][:-2]

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


async def send(conn: Connection, raw: bytes, timeout_s: float, failures: collections.Counter[str]) -> Response | None:
    """One request on `conn`; None (counted in `failures`, the connection dropped) when it gets
    no answer in `timeout_s` or the connection fails."""
    try:
        return await asyncio.wait_for(conn.request(raw), timeout_s)
    except TimeoutError:
        failures["timeout"] += 1
    except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
        failures[type(exc).__name__] += 1
    await conn.close()
    return None


async def run_load(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    concurrency: int,
    total: int | None = None,
    duration_s: float | None = None,
    warmup: int = 0,
    timeout_s: float = 60.0,
    check: Callable[[Response], bool] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> LoadReport:
    """Send `requests` round-robin from `concurrency` workers until `total` have been sent or
    `duration_s` has passed (at least one bound is required). The first `warmup` requests are
    sent and not counted. A request that takes longer than `timeout_s` counts as a failure and
    its connection is dropped. `check`, when given, validates each 200 body; only a 200 that
    passes it counts as a success (see `LoadReport`). `on_progress(answered)` is called after
    each answer inside the window."""
    if total is None and duration_s is None:
        raise ValueError("a load run needs a request count, a duration, or both")
    report = LoadReport(concurrency=concurrency)
    cycle: Iterator[bytes] = itertools.cycle(requests)
    budget = itertools.count()
    if warmup:
        await _warm(host, port, requests, concurrency, warmup, timeout_s)
    started = time.perf_counter()
    deadline = started + duration_s if duration_s is not None else float("inf")

    last_done = [started]

    async def worker() -> None:
        conn = Connection(host, port)
        try:
            while time.perf_counter() < deadline:
                n = next(budget)
                if total is not None and n >= total:
                    return
                raw = next(cycle)
                sent = time.perf_counter()
                response = await send(conn, raw, timeout_s, report.failures)
                if response is None:
                    continue
                done = time.perf_counter()
                if done > deadline:
                    return  # finished after the window closed: not counted
                body_ok = response.status != 200 or check is None or check(response)
                report.record(response.status, done - sent, body_ok=body_ok)
                last_done[0] = max(last_done[0], done)
                if on_progress is not None:
                    on_progress(report.answered)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    # A timed window ends at its last answer inside it, not at the deadline: under a batching
    # server, answers come in waves (16 clients, one batch), and a window cut between waves
    # would count whole waves over a fractional time, off by up to one wave (~10% at 7 s).
    end = last_done[0] if duration_s is not None and report.answered else min(time.perf_counter(), deadline)
    report.elapsed_s = end - started
    return report


async def _warm(
    host: str, port: int, requests: Sequence[bytes], concurrency: int, count: int, timeout_s: float
) -> None:
    await run_load(host, port, requests, concurrency=concurrency, total=count, timeout_s=timeout_s)


def has_json_key(key: str) -> Callable[[Response], bool]:
    """A `check` that the body is a JSON object holding `key`."""

    def check(response: Response) -> bool:
        try:
            return key in orjson.loads(response.body)
        except ValueError:
            return False

    return check


@dataclass
class OpenLoopReport:
    """An open-loop run: arrivals on a fixed schedule whatever the server does, so overload
    shows as it would with real traffic. Statuses are counted per request label."""

    rate: float
    sent: int = 0
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[str, collections.Counter[int]] = field(default_factory=dict)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    saturated: int = 0  # arrivals dropped by the client: every connection was busy

    def summary(self) -> dict[str, object]:
        return {
            "rate_per_s": round(self.rate, 2),
            "sent": self.sent,
            "elapsed_s": round(self.elapsed_s, 2),
            "p50_ms": round(percentile(self.latencies_s, 50) * 1000, 2),
            "p99_ms": round(percentile(self.latencies_s, 99) * 1000, 2),
            "max_ms": round(max(self.latencies_s, default=0.0) * 1000, 2),
            "statuses": {label: {str(k): v for k, v in sorted(c.items())} for label, c in self.statuses.items()},
            "failures": dict(self.failures),
            "client_saturated": self.saturated,
        }


async def run_open_loop(
    host: str,
    port: int,
    requests: Sequence[tuple[str, bytes]],
    *,
    rate: float,
    duration_s: float,
    max_connections: int = 128,
    timeout_s: float = 90.0,
    on_tick: Callable[[float], None] | None = None,
) -> OpenLoopReport:
    """Start one of `requests` (label, raw) every 1/`rate` seconds for `duration_s`, each on an
    idle keep-alive connection or a new one, up to `max_connections` at once. Waits for the
    stragglers (each bounded by `timeout_s`) before returning. `on_tick(elapsed)` is called
    about once a second."""
    report = OpenLoopReport(rate=rate)
    idle: list[Connection] = []
    busy = 0
    tasks: set[asyncio.Task[None]] = set()
    cycle = itertools.cycle(requests)

    async def connection() -> Connection:
        """An idle connection, unless it has idled long enough for the server to have closed it
        (uvicorn's keep-alive timeout is 5 s): reusing that one would race its close."""
        while idle:
            conn = idle.pop()
            if time.monotonic() - conn.last_used < IDLE_REUSE_S:
                return conn
            await conn.close()
        return Connection(host, port)

    async def one(label: str, raw: bytes) -> None:
        nonlocal busy
        conn = await connection()
        sent = time.perf_counter()
        try:
            response = await send(conn, raw, timeout_s, report.failures)
            if response is not None:
                report.latencies_s.append(time.perf_counter() - sent)
                report.statuses.setdefault(label, collections.Counter())[response.status] += 1
                if conn.is_open:
                    idle.append(conn)
        finally:
            busy -= 1

    started = time.perf_counter()
    next_tick = 1.0
    n = 0
    while (elapsed := time.perf_counter() - started) < duration_s:
        if on_tick is not None and elapsed >= next_tick:
            on_tick(elapsed)
            next_tick += 1.0
        due = started + n / rate
        if due > time.perf_counter():
            await asyncio.sleep(due - time.perf_counter())
        n += 1
        label, raw = next(cycle)
        if busy >= max_connections:
            report.saturated += 1
            continue
        busy += 1
        report.sent += 1
        task = asyncio.create_task(one(label, raw))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    for conn in idle:
        await conn.close()
    report.elapsed_s = time.perf_counter() - started
    return report
