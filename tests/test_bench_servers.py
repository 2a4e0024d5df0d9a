"""The readiness wait shared by the benchmark and the e2e tests: it fails at once, with the
server's output, when the process exits, and after its deadline when nothing answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clipgate.bench.servers import NotReady, ServerProcess, free_port, wait_ready


def _start(code: str, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)


def test_a_process_that_exits_is_reported_with_its_output(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    proc = _start("print('no model here'); raise SystemExit(3)", log_path)
    proc.wait(timeout=30)
    with pytest.raises(NotReady) as caught:
        wait_ready(proc, "127.0.0.1", free_port(), timeout_s=30, log_path=log_path, name="clipgate")
    assert "clipgate exited with status 3 before it was ready" in str(caught.value)
    assert "no model here" in str(caught.value)


def test_a_server_that_never_answers_is_reported_after_the_deadline(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    proc = _start("import time; print('loading...', flush=True); time.sleep(60)", log_path)
    try:
        with pytest.raises(NotReady) as caught:
            wait_ready(proc, "127.0.0.1", free_port(), timeout_s=0.5, log_path=log_path, poll_s=0.05)
    finally:
        proc.kill()
        proc.wait()
    message = str(caught.value)
    assert "was not ready after" in message and "ConnectionRefusedError" in message
    assert "loading..." in message


def test_a_server_process_that_fails_to_start_is_not_left_behind(tmp_path: Path) -> None:
    server = ServerProcess("broken", [sys.executable, "-c", "print('bad config')"], free_port(), tmp_path / "s.log")
    with pytest.raises(NotReady, match="bad config"):
        server.__enter__()
    assert server.proc is not None and server.proc.poll() is not None
    assert server._log is not None and server._log.closed
