"""Coalesce concurrent work into batches run by the one thread that owns the model.

Each kind of work (images, texts) has its own queue. A single dispatcher task takes the queue
whose oldest entry has waited longest, waits up to `max_wait` for the batch to fill, and runs it
on the model thread. While a batch runs, new entries pile up and form the next one, so batches
grow with load by themselves. A batch that is not full waits up to `max_wait` after the end of
the previous one: the callers a batch has just answered are often about to send again, and
without that pause a steady load splits into two half-size batches taking turns (measured:
mean text batch 8 instead of 16 with 16 clients, and ~8% fewer texts per second). Entries that
are still being decoded are waited for too (`incoming`), up to `max_incoming_wait`.
A sized lane (texts) groups entries of like size when more are queued than one batch holds.
A failed batch fails only its own callers; the loop goes on.
A caller that went away (its future cancelled) is dropped before its batch is formed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from clipgate.errors import NotReady

log = logging.getLogger("clipgate.batcher")


@dataclass(frozen=True, slots=True)
class Lane:
    """One kind of work: the function that runs a batch of payloads (one row back per payload,
    in order), and the largest batch it takes."""

    run: Callable[[list[Any]], Any]  # a sequence of rows, or an array with one row per payload
    max_batch: int
    size: Callable[[Any], int] | None = None  # a payload's cost (a text's token count), for grouping


BatchObserver = Callable[[str, int, float, list[float]], None]
"""Told of every batch run: its lane, size, model seconds, and each entry's wait in the queue."""

# With more queued than one batch holds, a sized lane looks this many batches deep for entries
# the size of its oldest one: a batch of texts is padded to its longest, so like goes with like.
GROUPING_WINDOW_BATCHES = 8


def _ewma(old: float | None, new: float, weight: float = 0.2) -> float:
    return new if old is None else (1 - weight) * old + weight * new


@dataclass(slots=True)
class LaneStats:
    """What a lane has run: batches, items, and seconds the model spent on them."""

    batches: int = 0
    items: int = 0
    busy_s: float = 0.0
    # Recent seconds per item: over batches at least half full (what a long queue runs at), and
    # over all batches (until there are such). Moving averages, so old traffic is forgotten.
    per_item_loaded_s: float | None = None
    per_item_s: float | None = None

    def record(self, size: int, seconds: float, max_batch: int) -> None:
        self.batches += 1
        self.items += size
        self.busy_s += seconds
        per_item = seconds / size
        self.per_item_s = _ewma(self.per_item_s, per_item)
        if 2 * size >= max_batch:
            self.per_item_loaded_s = _ewma(self.per_item_loaded_s, per_item)

    def __str__(self) -> str:
        mean = self.items / self.batches if self.batches else 0.0
        return f"{self.batches} batches, {self.items} items (mean batch {mean:.1f}), model busy {self.busy_s:.1f} s"


@dataclass(slots=True)
class _Entry:
    payload: Any
    future: asyncio.Future[Any]
    enqueued: float


class WorkQueue(Protocol):
    """What the service needs of the queue in front of the model: the `Batcher` here, or, in Ray
    Serve's split mode, the encoder deployment's batcher behind a handle (clipgate.ray)."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def incoming(self, lane: str, count: int) -> contextlib.AbstractContextManager[None]: ...

    def pending(self, lane: str) -> int: ...

    def estimated_wait_s(self, lane: str, entries: int) -> float | None: ...

    def run_on_model_thread(self, fn: Callable[[], Any]) -> asyncio.Future[Any]: ...

    def submit(self, lane: str, payloads: Sequence[Any]) -> list[asyncio.Future[Any]]: ...

    def health(self) -> str | None: ...


class Batcher:
    def __init__(
        self,
        lanes: dict[str, Lane],
        *,
        max_wait_s: float,
        max_incoming_wait_s: float = 0.0,
        observe: BatchObserver | None = None,
    ) -> None:
        for name, lane in lanes.items():
            if lane.max_batch < 1:
                raise ValueError(f"lane {name}: max_batch must be at least 1, not {lane.max_batch}")
        self._lanes = lanes
        self._queues: dict[str, collections.deque[_Entry]] = {name: collections.deque() for name in lanes}
        self._max_wait_s = max_wait_s
        self._max_incoming_wait_s = max_incoming_wait_s
        self._incoming = {name: 0 for name in lanes}
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipgate-model")
        self._task: asyncio.Task[None] | None = None
        self.stats = {name: LaneStats() for name in lanes}
        self._free_since = 0.0  # time.monotonic() when the model thread last finished a batch
        self._observe = observe

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._dispatch(), name="clipgate-batcher")

    def health(self) -> str | None:
        """None while the dispatcher runs, else why not: never started, stopped, or died."""
        task = self._task
        if task is None:
            return "the batcher is not running"
        if task.done():
            failure = None if task.cancelled() else task.exception()
            return f"the batcher stopped: {failure!r}" if failure is not None else "the batcher stopped"
        return None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for queue in self._queues.values():
            self._abandon(list(queue))
            queue.clear()
        self._executor.shutdown(wait=True)
        for name, stats in self.stats.items():
            log.info("%s lane: %s", name, stats)

    @staticmethod
    def _abandon(entries: Sequence[_Entry]) -> None:
        for entry in entries:
            if not entry.future.done():
                entry.future.set_exception(NotReady("The server is shutting down; retry the request."))

    @contextlib.contextmanager
    def incoming(self, lane: str, count: int) -> Iterator[None]:
        """Announce `count` entries for `lane` that are being prepared (decoded, tokenized) and
        will be submitted when the block ends: a batch that is not yet full waits for them, up to
        `max_incoming_wait` after its oldest entry. Use on the event loop, around the awaits
        that prepare the entries, and submit right after the block, with no await between."""
        self._incoming[lane] += count
        try:
            yield
        finally:
            self._incoming[lane] -= count
            self._wakeup.set()

    def pending(self, lane: str) -> int:
        """Entries of `lane` queued or announced (being prepared), not yet in a running batch."""
        return len(self._queues[lane]) + self._incoming[lane]

    def estimated_wait_s(self, lane: str, entries: int) -> float | None:
        """How long `entries` more of `lane` would take the model at its recent rate under load;
        None before it has run enough to tell."""
        stats = self.stats[lane]
        per_item = stats.per_item_loaded_s if stats.per_item_loaded_s is not None else stats.per_item_s
        if stats.items < 8 or per_item is None:
            return None
        return entries * per_item

    def run_on_model_thread(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run `fn` on the model thread, between batches (warm-up uses this)."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def submit(self, lane: str, payloads: Sequence[Any]) -> list[asyncio.Future[Any]]:
        """Queue payloads; each future resolves to its own row or to its batch's exception."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures = [loop.create_future() for _ in payloads]
        self._queues[lane].extend(_Entry(p, f, now) for p, f in zip(payloads, futures, strict=True))
        self._wakeup.set()
        return futures

    async def _dispatch(self) -> None:
        while True:
            lane = self._oldest_lane()
            if lane is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._fill(lane)
            batch = self._take(lane)
            if batch:
                await self._run(lane, batch)

    def _oldest_lane(self) -> str | None:
        heads = [(q[0].enqueued, name) for name, q in self._queues.items() if q]
        return min(heads)[1] if heads else None

    async def _fill(self, lane: str) -> None:
        """Wait until the lane holds a full batch, or `max_wait` has passed since the model became
        free and no announced entries are still being prepared (those are waited for up to
        `max_incoming_wait` after the oldest entry). A model that has been idle longer than
        `max_wait` starts at once: a lone caller does not wait for company that is not coming."""
        queue, limit = self._queues[lane], self._lanes[lane].max_batch
        while len(queue) < limit and not self._another_lane_is_full(lane):
            deadline = self._free_since + self._max_wait_s
            if self._incoming[lane]:
                deadline = max(deadline, queue[0].enqueued + self._max_incoming_wait_s)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return
            if not queue:
                return

    def _another_lane_is_full(self, lane: str) -> bool:
        """A full batch elsewhere is not kept waiting for this lane to fill."""
        return any(len(q) >= self._lanes[name].max_batch for name, q in self._queues.items() if name != lane)

    def _take(self, lane: str) -> list[_Entry]:
        queue, spec = self._queues[lane], self._lanes[lane]
        while queue and queue[0].future.done():  # a cancelled caller is skipped
            queue.popleft()
        if spec.size is not None and len(queue) > spec.max_batch:
            return self._take_grouped(queue, spec.max_batch, spec.size)
        batch: list[_Entry] = []
        while queue and len(batch) < spec.max_batch:
            entry = queue.popleft()
            if not entry.future.done():
                batch.append(entry)
        return batch

    @staticmethod
    def _take_grouped(queue: collections.deque[_Entry], limit: int, size: Callable[[Any], int]) -> list[_Entry]:
        """The oldest entry, and the entries nearest its size among the next few batches' worth."""
        window = [e for e in itertools.islice(queue, GROUPING_WINDOW_BATCHES * limit) if not e.future.done()]
        target = size(window[0].payload)
        batch = sorted(window, key=lambda e: (abs(size(e.payload) - target), e.enqueued))[:limit]
        chosen = {id(e) for e in batch}
        remaining = [e for e in queue if id(e) not in chosen and not e.future.done()]
        queue.clear()
        queue.extend(remaining)
        return batch

    async def _run(self, lane: str, batch: list[_Entry]) -> None:
        run = self._lanes[lane].run
        payloads = [e.payload for e in batch]
        loop = asyncio.get_running_loop()
        stats = self.stats[lane]
        started = time.perf_counter()
        waits = [time.monotonic() - e.enqueued for e in batch]
        try:
            try:
                rows = await loop.run_in_executor(self._executor, run, payloads)
            finally:
                self._free_since = time.monotonic()
                seconds = time.perf_counter() - started
                stats.record(len(batch), seconds, self._lanes[lane].max_batch)
                if self._observe is not None:
                    self._observe(lane, len(batch), seconds, waits)
            if len(rows) != len(batch):
                raise RuntimeError(f"{lane} batch of {len(batch)} returned {len(rows)} rows")
        except asyncio.CancelledError:  # stop() while this batch ran: its callers still get an answer
            self._abandon(batch)
            raise
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error
            log.exception("%s batch of %d failed", lane, len(batch))
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        for entry, row in zip(batch, rows, strict=True):
            if not entry.future.done():
                entry.future.set_result(row)
