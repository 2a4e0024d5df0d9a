"""Start a server process for the benchmark, wait for it to be ready, watch its memory, stop it."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in KiB, from /proc."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
    return fields


class ServerProcess:
    """A server on 127.0.0.1:`port`, its output in `log_path`. Use as a context manager."""

    def __init__(self, name: str, argv: Sequence[str], port: int, log_path: Path, *, env: dict[str, str] | None = None):
        self.name, self.argv, self.port, self.log_path = name, list(argv), port, log_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.ready_s = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> ServerProcess:
        self._log = self.log_path.open("wb")
        started = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        self._wait_ready(timeout_s=180)
        self.ready_s = time.perf_counter() - started
        return self

    def _wait_ready(self, *, timeout_s: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                conn.request("GET", "/readiness")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not ready after {timeout_s:.0f} s; see {self.log_path}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()


class MemoryWatch:
    """Samples a process's resident memory every `interval_s` on a thread, while in a `with` block."""

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, int]] = []  # (seconds since start, RSS KiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-memory", daemon=True)
        self._started = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.perf_counter() - self._started, memory_kib(self.pid)["VmRSS"]))
            except (OSError, KeyError):
                return
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemoryWatch:
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def clipgate_argv(model: str, port: int, *, device: str, dtype: str, extra: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "clipgate.cli",
        "serve",
        "--model",
        model,
        "--port",
        str(port),
        "--device",
        device,
        "--dtype",
        dtype,
        *extra,
    ]


def naive_argv(model_dir: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "clipgate.bench.naive", "--model", str(model_dir), "--port", str(port)]
