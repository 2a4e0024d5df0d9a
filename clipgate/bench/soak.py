"""`make soak`: twice the measured capacity, for minutes, with hostile requests mixed in.

    python -m clipgate.bench.soak [--model random:base] [--duration 180] [--out soak-results.json]

1. Start `clipgate serve`, then measure its capacity for the valid request mix (16 closed-loop
   clients on short texts and 1024x768 base64 JPEGs).
2. Send that mix plus hostile requests (bad base64, non-images, pixel bombs, wrong JSON types,
   deep JSON, unknown models) open-loop at twice the capacity for `--duration` seconds, so the
   queue bounds have to do their work.
3. Check the outcome and exit 1 on any failure: a 5xx other than 503 (429 on Azure), any
   request without an answer (timeout or dropped connection), a valid request refused with
   anything but 503/429, a hostile request answered 2xx or 5xx, resident memory grown past
   the bound, or a server that does not answer a valid request and its readiness probe afterwards.

Everything stays on 127.0.0.1 and ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from clipgate.bench import burst, loadgen, servers, workload

OVERLOAD_STATUSES = {503, 429}


def _png_bomb(side: int = 60_000) -> bytes:
    """A PNG header declaring side x side pixels, a few dozen bytes long."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")
    )


def valid_mix(jpegs: Sequence[bytes]) -> list[tuple[str, bytes]]:
    """Of every 10: 6 short texts (Roboflow, Azure, SambaStudio), 4 images (Roboflow base64,
    SambaStudio multipart)."""
    texts = workload.SHORT_TEXTS
    out: list[tuple[str, bytes]] = []
    for i, jpeg in enumerate(jpegs[:4]):
        out += [
            ("text", loadgen.json_request("/clip/embed_text", {"text": texts[i]})),
            ("text", loadgen.json_request("/clip/embed_text", {"text": [texts[i + 4], texts[i + 8]]})),
            (
                "text-azure",
                loadgen.json_request(
                    "/score", {"input_data": {"columns": ["image", "text"], "data": [["", texts[i + 12]]]}}
                ),
            ),
            ("text", loadgen.json_request("/api/predict/nlp/p/e", {"inputs": [texts[i]]})),
            ("text", loadgen.json_request("/clip/embed_text", {"text": texts[(i + 3) % len(texts)]})),
            ("text", loadgen.json_request("/api/v2/predict/generic/p/e", {"items": [{"id": "a", "value": texts[i]}]})),
            (
                "image",
                loadgen.json_request(
                    "/clip/embed_image", {"image": {"type": "base64", "value": base64.b64encode(jpeg).decode()}}
                ),
            ),
            ("image", loadgen.multipart_request("/api/predict/file/p/e", "predict_file", "photo.jpg", jpeg)),
            (
                "image",
                loadgen.json_request(
                    "/clip/embed_image", {"image": [{"type": "base64", "value": base64.b64encode(jpeg).decode()}]}
                ),
            ),
            ("image", loadgen.multipart_request("/api/predict/file/p/e", "predict_file", "photo.jpg", jpeg)),
        ]
    return out


def hostile_mix() -> list[tuple[str, bytes]]:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    deep: Any = "x"
    for _ in range(200):
        deep = [deep]
    cases = [
        loadgen.json_request("/clip/embed_image", {"image": {"type": "base64", "value": "not base64 at all!"}}),
        loadgen.json_request("/clip/embed_image", {"image": {"type": "base64", "value": b64(b"plain text")}}),
        loadgen.json_request("/clip/embed_image", {"image": {"type": "base64", "value": b64(_png_bomb())}}),
        loadgen.json_request("/clip/embed_image", {"image": {"type": "url", "value": "http://169.254.169.254/"}}),
        loadgen.json_request("/clip/embed_text", {"text": 12345}),
        loadgen.json_request("/clip/embed_text", {"text": deep}),
        loadgen.json_request("/clip/embed_text", {"text": "x", "clip_version_id": "ViT-H-14"}),
        loadgen.json_request("/score", {"input_data": {"columns": ["image"], "data": [[b64(b"GIF89a truncated")]]}}),
        loadgen.encode_request("POST", "/clip/embed_text", b"{not json"),
        loadgen.multipart_request("/api/predict/file/p/e", "predict_file", "bomb.png", _png_bomb()),
    ]
    return [("hostile", raw) for raw in cases]


def interleave(
    valid: list[tuple[str, bytes]], hostile: list[tuple[str, bytes]], every: int = 10
) -> list[tuple[str, bytes]]:
    """One hostile request after every `every - 1` valid ones."""
    out: list[tuple[str, bytes]] = []
    h = 0
    for i, item in enumerate(valid):
        out.append(item)
        if i % (every - 1) == every - 2:
            out.append(hostile[h % len(hostile)])
            h += 1
    return out


def probe(port: int, method: str, path: str, body: bytes | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} if body else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def judge(report: dict[str, Any], rss_growth_mib: float, max_growth_mib: float, after: dict[str, int]) -> list[str]:
    problems = []
    for label, statuses in report["statuses"].items():
        for code, count in statuses.items():
            status = int(code)
            if status >= 500 and status not in OVERLOAD_STATUSES:
                problems.append(f"{count} {label} requests answered {status}")
            if label == "hostile" and 200 <= status < 300:
                problems.append(f"{count} hostile requests answered {status}")
            if label != "hostile" and 400 <= status < 500 and status not in OVERLOAD_STATUSES:
                problems.append(f"{count} valid {label} requests refused with {status}")
    if report["failures"]:
        problems.append(f"requests without an answer: {report['failures']}")
    if rss_growth_mib > max_growth_mib:
        problems.append(f"resident memory grew {rss_growth_mib:.0f} MiB, over the {max_growth_mib:.0f} MiB bound")
    if after.get("valid") != 200:
        problems.append(f"a valid request afterwards was answered {after.get('valid')}")
    if after.get("readiness") != 200:
        problems.append(f"readiness afterwards was {after.get('readiness')}")
    return problems


def judge_bursts(bursts: dict[str, burst.BurstReport], max_growth_mib: float) -> list[str]:
    """Every large body answered (413, or 503/429 from the body budget), the peak within its bound,
    a valid request served during the burst, and the memory back within 10% afterwards."""
    problems = []
    for name, report in bursts.items():
        statuses = report.statuses()
        if set(statuses) - {"413", "429", "503"}:
            problems.append(f"burst ({name}): answers other than 413/429/503: {statuses}")
        if report.peak_mib - report.rss_before_mib > max_growth_mib:
            problems.append(f"burst ({name}): peak grew {report.peak_mib - report.rss_before_mib:.0f} MiB")
        if report.valid_status != 200:
            problems.append(f"burst ({name}): a valid request was answered {report.valid_status}")
        if report.rss_after_mib > 1.10 * report.rss_before_mib:
            problems.append(f"burst ({name}): memory did not come back ({report.summary()})")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipgate.bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="random:base")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of overload (default 180)")
    parser.add_argument("--capacity-s", type=float, default=10.0, help="seconds spent measuring capacity")
    parser.add_argument("--overload", type=float, default=2.0, help="arrival rate as a multiple of capacity")
    parser.add_argument("--max-rss-growth-mib", type=float, default=256.0, help="allowed growth of resident memory")
    parser.add_argument("--burst-clients", type=int, default=200, help="clients in the large-body burst (0: none)")
    parser.add_argument("--burst-mb", type=int, default=60, help="each burst body's size in MiB")
    parser.add_argument("--max-burst-growth-mib", type=float, default=1536.0, help="allowed peak growth in the burst")
    parser.add_argument("--out", default="soak-results.json")
    args = parser.parse_args(argv)
    jpegs = [workload.photo_jpeg(seed) for seed in range(4)]
    valid = valid_mix(jpegs)
    hostile = hostile_mix()
    mix = interleave(valid * len(hostile), hostile)  # every hostile case comes round
    workdir = Path(tempfile.mkdtemp(prefix="clipgate-soak-"))
    port = servers.free_port()
    argv_ = servers.clipgate_argv(args.model, port, device=args.device, dtype="auto")
    results: dict[str, Any] = {"model": args.model, "duration_s": args.duration, "overload": args.overload}
    print(f"[soak] starting clipgate ({args.model}); log in {workdir}", file=sys.stderr, flush=True)
    with servers.ServerProcess("clipgate", argv_, port, workdir / "clipgate.log") as server:
        capacity = asyncio.run(
            loadgen.run_load(
                "127.0.0.1", port, [raw for _, raw in valid], concurrency=16, duration_s=args.capacity_s, warmup=16
            )
        )
        rate = max(1.0, args.overload * capacity.rate)
        before = servers.memory_kib(server.pid)
        print(
            f"[soak] capacity {capacity.rate:.1f} requests/s; now {rate:.1f}/s for {args.duration:.0f} s "
            f"(RSS {before['VmRSS'] / 1024:.0f} MiB)",
            file=sys.stderr,
            flush=True,
        )
        samples: list[tuple[float, float]] = []

        def tick(elapsed: float) -> None:
            if int(elapsed) % 10 == 0:
                samples.append((round(elapsed), servers.memory_kib(server.pid)["VmRSS"] / 1024))

        started = time.perf_counter()
        report = asyncio.run(
            loadgen.run_open_loop(
                "127.0.0.1", port, mix, rate=rate, duration_s=args.duration, max_connections=600, on_tick=tick
            )
        )
        after_mem = servers.memory_kib(server.pid)
        after = {
            "valid": probe(port, "POST", "/clip/embed_text", orjson.dumps({"text": "still there?"})),
            "readiness": probe(port, "GET", "/readyz"),
        }
        summary = report.summary()
        growth = (after_mem["VmRSS"] - before["VmRSS"]) / 1024
        bursts: dict[str, Any] = {}
        for chunked, clients in ((False, args.burst_clients), (True, args.burst_clients // 4)):
            if clients:
                name = "chunked" if chunked else "declared"
                print(f"[soak] burst: {clients} clients x {args.burst_mb} MiB bodies ({name})", file=sys.stderr)
                body = burst.image_body(args.burst_mb)
                bursts[name] = burst.run(port, server.pid, [("/clip/embed_image", body)] * clients, chunked=chunked)
        results.update(
            capacity_per_s=round(capacity.rate, 2),
            load=summary,
            rss_before_mib=round(before["VmRSS"] / 1024, 1),
            rss_after_mib=round(after_mem["VmRSS"] / 1024, 1),
            rss_peak_mib=round(after_mem["VmHWM"] / 1024, 1),
            rss_growth_mib=round(growth, 1),
            rss_samples_mib=samples,
            after=after,
            bursts={name: b.summary() for name, b in bursts.items()},
            wall_s=round(time.perf_counter() - started, 1),
        )
    problems = judge(summary, growth, args.max_rss_growth_mib, after)
    problems += judge_bursts(bursts, args.max_burst_growth_mib)
    results["problems"] = problems
    Path(args.out).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(
        f"capacity {results['capacity_per_s']} requests/s; offered {summary['rate_per_s']}/s for {args.duration:.0f} s"
    )
    print(
        f"sent {summary['sent']}, client-side drops {summary['client_saturated']}, no answer {summary['failures'] or 0}"
    )
    for label, statuses in summary["statuses"].items():  # type: ignore[attr-defined]
        print(f"  {label:<11} {statuses}")
    print(f"latency p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, max {summary['max_ms']} ms")
    print(
        f"RSS before {results['rss_before_mib']} MiB, after {results['rss_after_mib']} MiB "
        f"(growth {results['rss_growth_mib']}), peak {results['rss_peak_mib']} MiB; samples {samples}"
    )
    print(f"afterwards: valid request {after['valid']}, readiness {after['readiness']}")
    for name, b in bursts.items():
        print(f"burst ({name}): {b.summary()}")
    print("PASS" if not problems else "FAIL:\n  " + "\n  ".join(problems))
    print(f"figures in {args.out}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
