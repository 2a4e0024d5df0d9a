"""Start a server process for the benchmark, wait for it to be ready, watch its memory, stop it.

`free_port` and `wait_ready` are also what the end-to-end tests start their servers with."""

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

READY_PATH = "/readyz"  # the core's probe: 200 once the model is loaded and warm, 503 while draining


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NotReady(RuntimeError):
    """A server exited, or did not turn ready in time. The message carries the server's output."""


def server_output(log_path: Path, limit: int = 20_000) -> str:
    """The end of a server's log (its last `limit` characters), for an error message."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read the server log {log_path}: {exc})"
    return text if len(text) <= limit else f"(... the first {len(text) - limit} characters left out)\n{text[-limit:]}"


def wait_ready(
    proc: subprocess.Popen[bytes],
    host: str,
    port: int,
    *,
    path: str = READY_PATH,
    timeout_s: float,
    log_path: Path,
    name: str = "the server",
    poll_s: float = 0.1,
) -> None:
    """Poll GET `path` until it answers 200. Raises NotReady, with the server's output, at once
    if the process exits, or once `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while True:
        code = proc.poll()
        if code is not None:
            raise NotReady(
                f"{name} exited with status {code} before it was ready; its output:\n{server_output(log_path)}"
            )
        conn = http.client.HTTPConnection(host, port, timeout=2)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            if response.status == 200:
                return
            last = f"HTTP {response.status}: {response.read(200).decode(errors='replace')}"
        except (OSError, http.client.HTTPException) as exc:
            last = type(exc).__name__
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise NotReady(
                f"{name} was not ready after {timeout_s:.0f} s (last answer to GET {path}: {last}); its output:\n"
                f"{server_output(log_path)}"
            )
        time.sleep(poll_s)  # the bounded readiness poll


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
    """A server on 127.0.0.1:`port`, its output in `log_path`. Use as a context manager: entering
    waits until GET READY_PATH answers 200 (or raises NotReady, the process stopped)."""

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
        try:
            wait_ready(self.proc, "127.0.0.1", self.port, timeout_s=180, log_path=self.log_path, name=self.name)
        except BaseException:
            self.__exit__()  # not left running behind the error
            raise
        self.ready_s = time.perf_counter() - started
        return self

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
