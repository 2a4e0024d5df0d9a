"""A bound on the request bodies held in memory at once, summed over every request in flight.

Each request reserves what its body will cost before the body is read: its declared
Content-Length (or, for a chunked upload, each chunk as it arrives), times BODY_COPIES, since a
body is held twice while it is parsed (the raw bytes and the JSON or multipart parts made from
them). A reservation that does not fit waits, in arrival order, up to `wait_s` for room, then
is refused as overload. Reservations are given back when their request ends, however it ends.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import math
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from clipgate.errors import Overloaded

BODY_COPIES = 2
GIB = 1024**3
AUTO_FRACTION = 24  # of the memory the process may use: 1 GiB on a 24 GiB machine
AUTO_MIN, AUTO_MAX = GIB // 4, 8 * GIB
SMALL_FRACTION = 256  # a body under 1/256 of the budget (4 MiB of 1 GiB) goes ahead of queued large ones


def _malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0), which hands the allocator's free pages back to the system; a no-op
    elsewhere. Without it, a burst of refused bodies left a chunked upload's 64 KiB pieces
    scattered over the heap: resident memory stayed ~10% higher after the burst (measured)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: None if trim(0) else None


TRIM_AFTER_BYTES = 64 * 1024 * 1024  # bodies reserved since the last trim that make the next one worth it


def memory_limit_bytes() -> int:
    """The memory this process may use: the machine's, or its cgroup's limit when lower."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:
                value = fh.read().strip()
        except OSError:
            continue
        if value.isdigit():
            total = min(total, int(value))
    return total


def auto_capacity(memory: int | None = None) -> int:
    """The default budget: a fraction of memory, within bounds."""
    memory = memory_limit_bytes() if memory is None else memory
    return max(AUTO_MIN, min(AUTO_MAX, memory // AUTO_FRACTION))


@dataclass(slots=True)
class _Waiter:
    size: int
    future: asyncio.Future[None]


class BodyBudget:
    """Bytes of request bodies in flight, bounded by `capacity`. One per app, used on its event loop."""

    def __init__(self, capacity: int, wait_s: float) -> None:
        self.capacity = capacity
        self.wait_s = wait_s
        self.used = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._since_trim = 0  # bytes reserved since the allocator was last trimmed
        self._trim = _malloc_trim()

    def _fits(self, size: int) -> bool:
        # A body larger than the whole budget (a small budget) still runs, alone.
        return self.used == 0 or self.used + size <= self.capacity

    def _small(self, size: int) -> bool:
        # Small bodies need not queue behind large ones: they fit in what is left at once.
        return size <= self.capacity // SMALL_FRACTION

    async def take(self, size: int) -> None:
        """Reserve `size` bytes, waiting up to `wait_s` behind earlier reservations; Overloaded if
        there is no room by then."""
        if size <= 0:
            return
        if (not self._waiters or self._small(size)) and self._fits(size):
            self._reserve(size)
            return
        waiter = _Waiter(size, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.wait_s)
        except TimeoutError:
            if waiter.future.done():  # granted just as the wait ran out: keep it
                return
            self._waiters.remove(waiter)
            waiter.future.cancel()
            self._grant()  # those behind it may fit now
            raise Overloaded(
                f"The server is holding {self.used} bytes of request bodies, its limit is {self.capacity}; retry later."
            ) from None
        except BaseException:  # the request was cancelled while waiting
            if waiter.future.done() and not waiter.future.cancelled():
                self.give_back(size)
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
                waiter.future.cancel()
                self._grant()
            raise

    def _reserve(self, size: int) -> None:
        self.used += size
        self._since_trim += size

    def give_back(self, size: int) -> None:
        self.used -= size
        self._grant()
        if self.used == 0 and self._since_trim >= TRIM_AFTER_BYTES:  # a burst is over: return its memory
            self._since_trim = 0
            # Off the event loop: a trim walks the whole heap (2-25 ms with ViT-B/32 loaded).
            asyncio.get_running_loop().run_in_executor(None, self._trim)

    def _grant(self) -> None:
        while self._waiters and self._fits(self._waiters[0].size):
            waiter = self._waiters.popleft()
            self._reserve(waiter.size)
            waiter.future.set_result(None)

    @contextlib.asynccontextmanager
    async def reservation(self) -> AsyncIterator[Reservation]:
        """A request's reservation: grown as its body is known, given back when the block ends."""
        held = Reservation(self)
        try:
            yield held
        finally:
            self.give_back(held.size)


class Reservation:
    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0
        self.body_bytes = 0  # the largest body this reservation has been grown for

    async def grow_to(self, body_bytes: int) -> None:
        """Hold enough for a body of `body_bytes` (BODY_COPIES each)."""
        self.body_bytes = max(self.body_bytes, body_bytes)
        wanted = math.ceil(body_bytes * BODY_COPIES) - self.size
        if wanted > 0:
            await self.budget.take(wanted)
            self.size += wanted
