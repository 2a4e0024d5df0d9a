"""The batcher: coalescing, per-batch failure, cancelled callers, and the loop that goes on."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from clipgate.batcher import Batcher, Lane
from clipgate.errors import NotReady


class Recorder:
    """A lane function that records batch sizes; it can be told to fail or to block."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.fail_on: set[int] = set()
        self.entered = threading.Event()  # set when a batch starts running
        self.gate = threading.Event()  # batches block here until it is set
        self.gate.set()

    def __call__(self, payloads: list[int]) -> Sequence[int]:
        self.entered.set()
        self.gate.wait(5)
        self.batches.append(list(payloads))
        if self.fail_on & set(payloads):
            raise RuntimeError("model exploded")
        return [p * 10 for p in payloads]


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_concurrent_submissions_coalesce_into_batches() -> None:
    rec = Recorder()

    async def main() -> list[int]:
        batcher = Batcher({"x": Lane(rec, max_batch=8)}, max_wait_s=0.05)
        batcher.start()
        futures = [f for i in range(20) for f in batcher.submit("x", [i])]
        rows = await asyncio.gather(*futures)
        await batcher.stop()
        return rows

    assert run(main()) == [i * 10 for i in range(20)]
    assert [len(b) for b in rec.batches] == [8, 8, 4]


def test_work_queued_while_a_batch_runs_forms_the_next_batch() -> None:
    rec = Recorder()
    rec.gate.clear()

    async def main() -> None:
        batcher = Batcher({"x": Lane(rec, max_batch=16)}, max_wait_s=0.0)
        batcher.start()
        first = batcher.submit("x", [0])
        await asyncio.to_thread(rec.entered.wait, 5)  # the first batch is running, held at the gate
        rest = [f for i in range(1, 6) for f in batcher.submit("x", [i])]
        rec.gate.set()
        assert await asyncio.gather(*first, *rest) == [0, 10, 20, 30, 40, 50]
        await batcher.stop()

    run(main())
    assert rec.batches == [[0], [1, 2, 3, 4, 5]]


def test_a_failed_batch_fails_only_its_callers_and_the_loop_goes_on() -> None:
    rec = Recorder()
    rec.fail_on = {3}

    async def main() -> None:
        batcher = Batcher({"x": Lane(rec, max_batch=4)}, max_wait_s=0.05)
        batcher.start()
        bad = batcher.submit("x", [1, 2, 3, 4])
        results = await asyncio.gather(*bad, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        assert await asyncio.gather(*batcher.submit("x", [5, 6])) == [50, 60]
        await batcher.stop()

    run(main())
    assert rec.batches == [[1, 2, 3, 4], [5, 6]]


def test_cancelled_callers_are_skipped() -> None:
    rec = Recorder()
    rec.gate.clear()

    async def main() -> None:
        batcher = Batcher({"x": Lane(rec, max_batch=16)}, max_wait_s=0.0)
        batcher.start()
        running = batcher.submit("x", [0])
        await asyncio.to_thread(rec.entered.wait, 5)
        gone = batcher.submit("x", [1, 2])
        kept = batcher.submit("x", [3])
        for f in gone:
            f.cancel()
        rec.gate.set()
        assert await asyncio.gather(*running, *kept) == [0, 30]
        await batcher.stop()

    run(main())
    assert rec.batches == [[0], [3]]


def test_lanes_are_separate_queues_on_one_model_thread() -> None:
    names: list[str] = []

    def lane(tag: str):  # type: ignore[no-untyped-def]
        def fn(payloads: list[int]) -> list[str]:
            names.append(threading.current_thread().name)
            return [f"{tag}{p}" for p in payloads]

        return fn

    async def main() -> None:
        batcher = Batcher({"a": Lane(lane("a"), 8), "b": Lane(lane("b"), 8)}, max_wait_s=0.01)
        batcher.start()
        rows = await asyncio.gather(*batcher.submit("a", [1, 2]), *batcher.submit("b", [3]))
        assert rows == ["a1", "a2", "b3"]
        await batcher.stop()

    run(main())
    assert len(names) == 2 and len(set(names)) == 1 and names[0].startswith("clipgate-model")


def test_stop_answers_what_is_still_queued() -> None:
    rec = Recorder()
    rec.gate.clear()

    async def main() -> None:
        batcher = Batcher({"x": Lane(rec, max_batch=1)}, max_wait_s=0.0)
        batcher.start()
        first = batcher.submit("x", [0])
        await asyncio.to_thread(rec.entered.wait, 5)
        queued = batcher.submit("x", [1])
        rec.gate.set()
        await asyncio.gather(*first)
        await batcher.stop()
        assert all(isinstance(f.exception(), NotReady) for f in queued)

    run(main())


def test_a_sized_lane_groups_like_sizes_when_more_is_queued_than_one_batch() -> None:
    """Texts are padded to the longest in their batch: long ones go with long ones."""
    batches: list[list[int]] = []

    def lengths(payloads: list[list[int]]) -> list[int]:
        batches.append([len(p) for p in payloads])
        return [len(p) for p in payloads]

    async def main() -> list[int]:
        batcher = Batcher({"t": Lane(lengths, max_batch=4, size=len)}, max_wait_s=0.0)
        payloads = [[0] * (70 if i % 2 else 5) for i in range(8)]  # 5, 70, 5, 70, ...
        futures = batcher.submit("t", payloads)  # all queued before the dispatcher starts
        batcher.start()
        rows = await asyncio.gather(*futures)
        await batcher.stop()
        return rows

    assert run(main()) == [70 if i % 2 else 5 for i in range(8)]  # every caller still gets its own row
    assert sorted(batches) == [[5, 5, 5, 5], [70, 70, 70, 70]]
    assert batches[0] == [5, 5, 5, 5]  # the oldest entry's group goes first


def test_callers_arriving_just_after_a_batch_ends_join_the_next_one() -> None:
    """The wait for company counts from the end of the last batch, not only from the oldest
    entry's arrival: an entry that waited through a whole batch still waits `max_wait` for the
    callers that batch has just answered."""
    rec = Recorder()
    rec.gate.clear()

    async def main() -> None:
        batcher = Batcher({"x": Lane(rec, max_batch=16)}, max_wait_s=0.5)
        batcher.start()
        first = batcher.submit("x", [0])
        await asyncio.sleep(0.6)  # batch [0] leaves after max_wait, then blocks at the gate
        await asyncio.to_thread(rec.entered.wait, 5)
        waiting = batcher.submit("x", [1])  # queued behind the running batch
        await asyncio.sleep(0.6)  # it has now waited longer than max_wait
        rec.gate.set()
        await asyncio.gather(*first)
        late = batcher.submit("x", [2])  # an answered caller comes back at once
        await asyncio.gather(*waiting, *late)
        await batcher.stop()

    run(main())
    assert rec.batches == [[0], [1, 2]]


def test_a_full_lane_does_not_wait_for_another_lanes_incoming_work() -> None:
    rec = Recorder()

    async def main() -> float:
        batcher = Batcher(
            {"slow": Lane(rec, max_batch=4), "full": Lane(rec, max_batch=2)}, max_wait_s=0.0, max_incoming_wait_s=5.0
        )
        slow = batcher.submit("slow", [1])  # the oldest entry: its lane has more on the way
        started = asyncio.get_running_loop().time()
        with batcher.incoming("slow", 3):
            full = batcher.submit("full", [2, 3])  # a full batch in the other lane
            batcher.start()
            await asyncio.gather(*full)
            elapsed = asyncio.get_running_loop().time() - started
            slow += batcher.submit("slow", [4, 5, 6])
        await asyncio.gather(*slow)
        await batcher.stop()
        return elapsed

    assert run(main()) < 1.0  # not the 5 s the slow lane may wait for its incoming entries
    assert [2, 3] in rec.batches


def test_the_wait_estimate_follows_recent_loaded_batches() -> None:
    from clipgate.batcher import LaneStats

    stats = LaneStats()
    for _ in range(50):
        stats.record(1, 0.010, max_batch=64)  # a long quiet spell of lone texts: 10 ms each
    assert stats.per_item_loaded_s is None and stats.per_item_s == pytest.approx(0.010)
    for _ in range(10):
        stats.record(64, 0.128, max_batch=64)  # then load: 2 ms per text in full batches
    assert stats.per_item_loaded_s == pytest.approx(0.002)
