"""The peak-memory meter the bomb tests rely on can fail: it sees an allocation made after a
larger one has come and gone, which `ru_maxrss` alone, a high-water mark, cannot."""

from __future__ import annotations

import resource

from tests.hostile.checks import peak_memory

MB = 1 << 20
PAGE = resource.getpagesize()


def touched(megabytes: int) -> bytearray:
    """A buffer whose every page is written, so that it is resident, not just reserved."""
    block = bytearray(megabytes * MB)
    block[::PAGE] = b"\x01" * len(range(0, len(block), PAGE))
    return block


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_the_meter_sees_an_allocation_after_a_larger_one() -> None:
    larger = touched(300)
    del larger  # the high-water mark now stands 300 MB above the process's size
    before = max_rss_mb()
    block = touched(200)
    del block
    assert max_rss_mb() - before < 1, "the high-water mark alone was expected to miss the allocation"
    with peak_memory() as peak:
        block = touched(200)
        del block
    assert peak.grown_mb >= 190, f"a 200 MB allocation read as {peak.grown_mb:.0f} MB"


def test_the_meter_reads_little_when_nothing_is_allocated() -> None:
    larger = touched(200)
    del larger
    with peak_memory() as peak:
        pass
    assert 0 <= peak.grown_mb < 20, f"an empty block read as {peak.grown_mb:.0f} MB"
