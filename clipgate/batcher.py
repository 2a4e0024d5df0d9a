"""Coalesce concurrent work into batches run by the one thread that owns the model.

Each kind of work (images, texts) has its own queue. A single dispatcher task takes the queue
whose oldest entry has waited longest, waits up to `max_wait` for the batch to fill, and runs it
on the model thread. While a batch runs, new entries pile up and form the next one, so batches
grow with load by themselves. A failed batch fails only its own callers; the loop goes on.
A caller that went away (its future cancelled) is dropped before its batch is formed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from clipgate.errors import NotReady

log = logging.getLogger("clipgate.batcher")


@dataclass(frozen=True, slots=True)
class Lane:
    """One kind of work: the function that runs a batch of payloads (one row back per payload,
    in order), and the largest batch it takes."""

    run: Callable[[list[Any]], Any]  # a sequence of rows, or an array with one row per payload
    max_batch: int


@dataclass(slots=True)
class _Entry:
    payload: Any
    future: asyncio.Future[Any]
    enqueued: float


class Batcher:
    def __init__(self, lanes: dict[str, Lane], *, max_wait_s: float) -> None:
        for name, lane in lanes.items():
            if lane.max_batch < 1:
                raise ValueError(f"lane {name}: max_batch must be at least 1, not {lane.max_batch}")
        self._lanes = lanes
        self._queues: dict[str, collections.deque[_Entry]] = {name: collections.deque() for name in lanes}
        self._max_wait_s = max_wait_s
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipgate-model")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._dispatch(), name="clipgate-batcher")

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

    @staticmethod
    def _abandon(entries: Sequence[_Entry]) -> None:
        for entry in entries:
            if not entry.future.done():
                entry.future.set_exception(NotReady("The server is shutting down; retry the request."))

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
        """Wait until the lane holds a full batch or its oldest entry is `max_wait` old."""
        queue, limit = self._queues[lane], self._lanes[lane].max_batch
        while len(queue) < limit:
            remaining = queue[0].enqueued + self._max_wait_s - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return
            if not queue:
                return

    def _take(self, lane: str) -> list[_Entry]:
        queue, spec = self._queues[lane], self._lanes[lane]
        batch: list[_Entry] = []
        while queue and len(batch) < spec.max_batch:
            entry = queue.popleft()
            if not entry.future.done():  # a cancelled caller is skipped
                batch.append(entry)
        return batch

    async def _run(self, lane: str, batch: list[_Entry]) -> None:
        run = self._lanes[lane].run
        payloads = [e.payload for e in batch]
        loop = asyncio.get_running_loop()
        try:
            rows = await loop.run_in_executor(self._executor, run, payloads)
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
