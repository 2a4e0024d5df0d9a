"""Take turns on the CPU: model batches on one side, image decoding and tokenizing on the other.

When the model runs on the CPU it uses every core, in parallel regions whose threads wait for
each other at each step. A decode thread that preempts one of them stalls them all, so decoding
alongside a batch costs the model more than the decoding itself: measured on 2 cores, decoding
21 JPEGs/s (8.5% of the CPU) slowed a concurrent batch-8 image model by 13.5%. Taking turns
wastes nothing as long as the batcher waits for the decoding under way before it starts a
batch, which it does (`Batcher.incoming`).

On a GPU the two do not compete, so turn-taking is off: decoding overlaps inference there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


class CpuTurns:
    """Many decoders or one model batch, never both. The model has precedence: once a batch
    asks, no new decoding starts, and the batch begins when the decoding under way is done."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._cond = threading.Condition()
        self._model_waiting_or_running = False
        self._decoders = 0

    @contextmanager
    def decoding(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with self._cond:
            self._cond.wait_for(lambda: not self._model_waiting_or_running)
            self._decoders += 1
        try:
            yield
        finally:
            with self._cond:
                self._decoders -= 1
                self._cond.notify_all()

    @contextmanager
    def inference(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with self._cond:
            self._model_waiting_or_running = True
            self._cond.wait_for(lambda: self._decoders == 0)
        try:
            yield
        finally:
            with self._cond:
                self._model_waiting_or_running = False
                self._cond.notify_all()

    def model(self, fn: Callable[[list[Any]], T]) -> Callable[[list[Any]], T]:
        """`fn`, run on the model's side of the gate."""

        def gated(batch: list[Any]) -> T:
            with self.inference():
                return fn(batch)

        return gated
