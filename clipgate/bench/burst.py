"""A burst of large request bodies against a live server: many clients, each uploading one body
near the size limit at once, with a small valid request sent while they do. Reports every
answer, the server's resident memory before, at its peak and after, and the valid request's time.

    python -m clipgate.bench.burst --port 8000 --pid 1234 [--clients 200] [--mb 60] [--chunked]

Every client and the whole run are bounded in time; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from clipgate.bench.servers import memory_kib

PIECE = 1 << 20
CLIENT_TIMEOUT_S = 120.0


def image_body(mb: int) -> bytes:
    """A Roboflow embed_image body whose base64 image is `mb` MiB: over a 20 MiB image's base64."""
    return b'{"image": {"type": "base64", "value": "' + b"A" * (mb << 20) + b'"}}'


def azure_body(mb: int) -> bytes:
    return b'{"input_data": {"columns": ["image", "text"], "data": [["' + b"A" * (mb << 20) + b'", ""]]}}'


@dataclass
class Answer:
    status: int  # 0: no answer (the connection closed first)
    body: Any = None


@dataclass
class BurstReport:
    answers: list[Answer] = field(default_factory=list)
    valid_status: int = 0
    valid_s: float = 0.0
    rss_before_mib: float = 0.0
    peak_mib: float = 0.0
    rss_after_mib: float = 0.0
    elapsed_s: float = 0.0

    def statuses(self) -> dict[str, int]:
        return {str(k): v for k, v in sorted(Counter(a.status for a in self.answers).items())}

    def summary(self) -> dict[str, Any]:
        return {
            "clients": len(self.answers),
            "statuses": self.statuses(),
            "valid_status": self.valid_status,
            "valid_s": round(self.valid_s, 2),
            "rss_before_mib": round(self.rss_before_mib, 1),
            "peak_mib": round(self.peak_mib, 1),
            "rss_after_mib": round(self.rss_after_mib, 1),
            "peak_growth_mib": round(self.peak_mib - self.rss_before_mib, 1),
            "after_growth_pct": round(100 * (self.rss_after_mib / self.rss_before_mib - 1), 1),
            "elapsed_s": round(self.elapsed_s, 1),
        }


def upload(port: int, path: str, body: bytes, *, chunked: bool, pause_s: float) -> Answer:
    """Send one body in 1 MiB pieces (declared, or chunked), then read the answer."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S)
    except OSError:
        return Answer(0)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {len(body)}\r\n\r\n"
    with sock:
        try:
            sock.sendall(head.encode())
            for start in range(0, len(body), PIECE):
                piece = body[start : start + PIECE]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                time.sleep(pause_s)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # refused early: the answer may still be there to read
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            data = response.read()
        except (OSError, http.client.HTTPException):
            return Answer(0)
        try:
            return Answer(response.status, json.loads(data))
        except ValueError:
            return Answer(response.status, data[:200].decode("latin-1"))


def run(
    port: int,
    pid: int,
    requests: list[tuple[str, bytes]],
    *,
    chunked: bool = False,
    pause_s: float = 0.002,
    valid_after_s: float = 1.0,
) -> BurstReport:
    """Upload every (path, body) of `requests` at once; after `valid_after_s`, one small valid text."""
    report = BurstReport(answers=[Answer(0)] * len(requests))
    try:  # reset the server's peak resident memory (VmHWM) to now, so the peak is the burst's
        with open(f"/proc/{pid}/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        pass  # not allowed here: the peak then includes the server's start-up
    report.rss_before_mib = memory_kib(pid)["VmRSS"] / 1024

    def client(i: int, path: str, body: bytes) -> None:
        report.answers[i] = upload(port, path, body, chunked=chunked, pause_s=pause_s)

    threads = [threading.Thread(target=client, args=(i, *r), daemon=True) for i, r in enumerate(requests)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(valid_after_s)
    valid_started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)
    try:
        conn.request("POST", "/clip/embed_text", b'{"text": "a photo of a cat"}', {"Content-Type": "application/json"})
        reply = conn.getresponse()
        reply.read()
        report.valid_status = reply.status
    except OSError:
        report.valid_status = 0
    finally:
        conn.close()
    report.valid_s = time.perf_counter() - valid_started
    for thread in threads:
        thread.join(CLIENT_TIMEOUT_S)
    report.elapsed_s = time.perf_counter() - started
    time.sleep(1.0)  # let the last answers' memory go
    memory = memory_kib(pid)
    report.peak_mib, report.rss_after_mib = memory["VmHWM"] / 1024, memory["VmRSS"] / 1024
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipgate.bench.burst", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True, help="the server's process id, for its memory")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--mb", type=int, default=60, help="each body's size in MiB")
    parser.add_argument("--chunked", action="store_true", help="send without Content-Length")
    args = parser.parse_args(argv)
    body = image_body(args.mb)
    report = run(args.port, args.pid, [("/clip/embed_image", body)] * args.clients, chunked=args.chunked)
    print(json.dumps(report.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
