"""A real server process, hosted by `clipgate serve` and by `uvicorn --factory` alike: its log holds
clipgate's own access lines and never a key, and on SIGTERM readiness turns 503 at once,
requests in flight are finished, and the process exits 0."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from clipgate.bench.servers import ServerProcess, free_port

GRACE_S = 2.0
SECRET = "S3CRET-in-the-query"
HOSTS = {
    "clipgate-serve": ["-m", "clipgate.cli", "serve", "--model", "random:tiny"],
    # The factory takes its settings from CLIPGATE_* variables and its address from uvicorn's flags.
    "uvicorn-factory": ["-m", "uvicorn", "--factory", "clipgate.app:app_from_env", "--host", "127.0.0.1"],
}


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def _post_text_with_key_in_query(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = json.dumps({"text": "a cat"})
        conn.request("POST", f"/clip/embed_text?api_key={SECRET}", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_sigterm_turns_unready_finishes_requests_in_flight_and_exits_0(
    cache_dir: Path, tiny_dir: Path, tmp_path: Path, host: str
) -> None:
    port = free_port()
    argv = [sys.executable, *HOSTS[host], "--port", str(port)]
    env = {
        "CLIPGATE_SERVER_DRAIN_GRACE_S": str(GRACE_S),
        "CLIPGATE_CACHE_DIR": str(cache_dir),
        "CLIPGATE_MODEL_ID": "random:tiny",
    }
    with ServerProcess(host, argv, port, tmp_path / "server.log", env=env) as server:
        assert server.proc is not None
        assert _get(port, "/readyz") == 200 and _get(port, "/livez") == 200
        assert _post_text_with_key_in_query(port) == 200
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
        assert _get(port, "/readyz") == 503  # within the grace: probes say not ready, the port still answers
        assert _get(port, "/readiness") == 503  # Roboflow's probe answers from the same state
        assert _get(port, "/livez") == 200

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
    assert SECRET not in log
    access = [json.loads(line) for line in log.splitlines() if '"clipgate.access"' in line]  # JSON: not a terminal
    assert [a["status"] for a in access if a["route"] == "/clip/embed_text"] == [200, 200]  # with key, in flight
