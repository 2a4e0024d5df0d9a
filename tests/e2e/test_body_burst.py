"""Many large bodies at once against a live server: memory stays within the body budget, every
upload is answered in its vendor's shape, a small valid request is served meanwhile, and the
memory comes back afterwards. With Content-Length and chunked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from clipgate.bench import burst
from clipgate.bench.servers import ServerProcess, free_port

BUDGET_MIB = 128
MARGIN_MIB = 160  # what the burst may cost beyond the budget: buffers, threads, answers (measured ~40)
BODY_MB = 30  # over a 20 MiB image's base64 (~28 MB): each is refused with 413 once read


@pytest.fixture(scope="module")
def server(cache_dir: Path, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "clipgate.cli", "serve", "--model", "random:tiny", "--port", str(port)]
    env = {
        "CLIPGATE_CACHE_DIR": str(cache_dir),
        "CLIPGATE_SERVER_MAX_INFLIGHT_BODY_BYTES": str(BUDGET_MIB << 20),
        "CLIPGATE_SERVER_BODY_BUDGET_WAIT_S": "0.5",
    }
    log = tmp_path_factory.mktemp("burst") / "server.log"
    with ServerProcess("burst", argv, port, log, env=env) as process:
        yield process


def check(report: burst.BurstReport, allowed: set[int]) -> None:
    """Every upload answered with an allowed status in a `{"message": ...}` body (the Roboflow and
    Azure shapes), the valid request served meanwhile, memory within bounds at the peak and after."""
    summary = report.summary()
    for answer in report.answers:
        assert answer.status in allowed, summary
        assert isinstance(answer.body, dict) and isinstance(answer.body.get("message"), str), answer.body
    assert report.valid_status == 200 and report.valid_s < 15, summary
    assert report.peak_mib < report.rss_before_mib + BUDGET_MIB + MARGIN_MIB, summary
    assert report.rss_after_mib < report.rss_before_mib * 1.10, summary  # the memory came back


def test_declared_bodies_at_once(server: ServerProcess) -> None:
    requests = [("/clip/embed_image", burst.image_body(BODY_MB)), ("/score", burst.azure_body(BODY_MB))] * 8
    report = burst.run(server.port, server.pid, requests, valid_after_s=0.5)
    statuses = [a.status for a in report.answers]
    assert set(statuses[0::2]) <= {413, 503} and set(statuses[1::2]) <= {413, 429}, report.summary()
    assert 503 in statuses or 429 in statuses, report.summary()  # the budget did refuse some
    assert 413 in statuses, report.summary()  # and let others be read, then refused by the image limit
    check(report, {413, 429, 503})


def test_chunked_bodies_at_once(server: ServerProcess) -> None:
    requests = [("/clip/embed_image", burst.image_body(BODY_MB))] * 8
    report = burst.run(server.port, server.pid, requests, chunked=True, valid_after_s=0.5)
    assert set(a.status for a in report.answers) <= {413, 503}, report.summary()
    check(report, {413, 503})
