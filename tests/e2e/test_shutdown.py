"""SIGTERM on a real `clipgate serve` process: readiness turns 503 at once, requests in flight
are finished, and the process exits 0."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import sys
import time
from pathlib import Path

from clipgate.bench.servers import ServerProcess, free_port

GRACE_S = 2.0


def _readiness(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/readiness")
        return conn.getresponse().status
    finally:
        conn.close()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_sigterm_turns_unready_finishes_requests_in_flight_and_exits_0(
    cache_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "clipgate.cli", "serve", "--model", "random:tiny", "--port", str(port)]
    env = {"CLIPGATE_SERVER_DRAIN_GRACE_S": str(GRACE_S), "CLIPGATE_CACHE_DIR": str(cache_dir)}
    with ServerProcess("clipgate", argv, port, tmp_path / "server.log", env=env) as server:
        assert server.proc is not None
        body = json.dumps({"text": ["a photo of a cat", "a dog"]}).encode()
        head = (
            f"POST /clip/embed_text HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        in_flight = socket.create_connection(("127.0.0.1", port), timeout=10)
        in_flight.sendall(head + body[:10])  # a request in flight: half its body sent
        time.sleep(0.2)

        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert _readiness(port) == 503  # within the grace: probes say not ready, the port still answers

        deadline = time.monotonic() + GRACE_S + 5
        while not _refused(port):  # the grace is over: no new connections
            assert time.monotonic() < deadline, "the server kept accepting connections after the grace"
            time.sleep(0.1)
        assert server.proc.poll() is None  # ...but it is still running, for the request in flight

        in_flight.sendall(body[10:])
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"]]}"):
            chunk = in_flight.recv(65536)
            if not chunk:
                break
            reply += chunk
        in_flight.close()
        status_line, _, rest = reply.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 200"), reply[:300]
        embeddings = json.loads(rest.partition(b"\r\n\r\n")[2])["embeddings"]
        assert len(embeddings) == 2 and len(embeddings[0]) == 512

        assert server.proc.wait(timeout=30) == 0
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log
