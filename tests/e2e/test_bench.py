"""The benchmark's own machinery: the load generator against a live server, and `make bench`
end to end in its quick mode (which checks that it runs and reports, not its figures)."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from clipgate.bench import cpu, loadgen, workload
from clipgate.bench.loadgen import percentile


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def test_load_generator_counts_statuses_and_checks_bodies(live_server: str) -> None:
    good = loadgen.json_request("/clip/embed_text", {"text": "a photo of a cat"})
    bad = loadgen.json_request("/clip/embed_text", {"text": 42})
    report = asyncio.run(
        loadgen.run_load(
            "127.0.0.1",
            _port(live_server),
            [good, bad],
            concurrency=3,
            total=12,
            check=loadgen.has_json_key("embeddings"),
        )
    )
    assert report.answered == 12 and report.succeeded == 6
    assert report.statuses == {200: 6, 422: 6}
    assert report.bad_bodies == 0 and not report.failures
    assert report.problems() == ["6 x 422"]
    assert 0 < report.percentile(50) <= report.percentile(99)


def test_load_generator_sends_multipart_the_server_reads(live_server: str) -> None:
    raw = loadgen.multipart_request("/api/predict/file/p/e", "predict_file", "photo.jpg", workload.photo_jpeg(1))
    report = asyncio.run(loadgen.run_load("127.0.0.1", _port(live_server), [raw], concurrency=2, total=4))
    assert report.statuses == {200: 4} and report.clean


def test_load_generator_stops_at_its_deadline(live_server: str) -> None:
    image = base64.b64encode(workload.photo_jpeg(2)).decode()
    raw = loadgen.json_request("/clip/embed_image", {"image": {"type": "base64", "value": image}})
    report = asyncio.run(loadgen.run_load("127.0.0.1", _port(live_server), [raw], concurrency=4, duration_s=0.5))
    assert report.elapsed_s <= 0.5 and report.succeeded >= 1


def test_a_dead_port_is_counted_as_failures_not_raised() -> None:
    from clipgate.bench.servers import free_port

    report = asyncio.run(
        loadgen.run_load("127.0.0.1", free_port(), [b"GET / HTTP/1.1\r\n\r\n"], concurrency=2, total=4)
    )
    assert report.answered == 0 and report.rate == 0.0 and sum(report.failures.values()) == 4


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) == 0.0


def test_make_bench_quick_runs_every_phase_and_writes_its_figures(
    cache_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "clipgate.bench", "--quick", "--model", "random:tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    # bfloat16 is measured only where the CPU has it natively (this machine decides which case
    # this run checks; tests/test_bench_honesty.py covers the decision itself).
    bf16 = cpu.native_bf16(cpu.read_cpuinfo())
    measures = [row["measure"] for row in figures["verdict"]]
    import openvino as ov

    ov_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert len(measures) == 15 + bf16 + 2 * ov_bf16, measures
    assert ("bare images/s, OpenVINO bfloat16 / ONNX Runtime" in measures) is ov_bf16
    assert "short texts/s c16, metrics on / off" in measures
    assert ("images/s c16, bfloat16 / float32 server" in measures) is bf16
    assert "ONNX images/s c16 / torch bare best batch" in measures
    assert "peak RSS MiB after the rounds, ONNX / torch server" in measures
    assert all(row["why"] == [] for row in figures["verdict"]), figures["verdict"]
    assert "ratio" in done.stdout and "p50 ms, one image c1" in done.stdout
    if bf16:
        assert figures["notes"] == [] and "bfloat16_sweep" in figures["bare"]
    else:
        assert any("no native bfloat16" in note for note in figures["notes"]), figures["notes"]
        assert "bfloat16_sweep" not in figures["bare"] and "no native bfloat16" in done.stdout
        assert "no native bfloat16" in done.stderr  # the log line
    (one_round,) = figures["rounds"]
    loads = {phase: summary for phase, summary in one_round.items() if isinstance(summary, dict)}
    assert set(loads) == {
        "image_c1",
        "text_c1",
        "image_json_c16",
        "image_multipart_c16",
        "naive_image_json_c16",
        "text_c16",
        "unmetered_text_c16",
        "naive_text_c16",
        "onnx_image_c1",
        "onnx_text_c1",
        "onnx_image_json_c16",
        "onnx_text_c16",
    } | ({"reduced_image_json_c16"} if bf16 else set())
    for phase, summary in loads.items():
        assert set(summary["statuses"]) == {"200"}, (phase, summary)
        assert summary["succeeded"] == summary["answered"] > 0 and summary["per_s"] > 0, (phase, summary)
        assert summary["problems"] == [] and not summary["failures"] and not summary["bad_bodies"], (phase, summary)
    bares = ["bare_image_b1_per_s", "bare_images_per_s", "bare_short_texts_per_s"]
    bares += ["onnx_bare_images_per_s", "onnx_bare_short_texts_per_s"]
    for bare in bares + (["bare_reduced_images_per_s"] if bf16 else []):
        assert one_round[bare] > 0
    assert ("bare_reduced_images_per_s" in one_round) is bf16
    soak = figures["clipgate_soak"]
    assert soak["load"]["statuses"] == {"200": 80} and soak["load"]["succeeded"] == 80
    # The kernel counts resident pages per CPU in batches, so VmRSS can read a few pages above
    # the peak VmHWM read later: a mebibyte of slack.
    assert soak["peak_rss_mib"] >= soak["rss_before_mib"] - 1 > 0
    assert figures["bare"]["parity"]["reduced_decode_min_cosine"] > 0.9999
    onnx = figures["onnx"]
    assert onnx["parity_to_torch"]["images_min_cosine"] >= 0.99999 and onnx["parity_to_torch"]["texts_max_abs"] <= 1e-4
    assert onnx["int8"]["images_min_cosine_vs_float32"] >= onnx["int8"]["floor"]
    assert set(figures["peak_rss_after_rounds_mib"]) == {"torch", "onnx"}
    assert "bare ONNX float32, images/s by batch" in done.stdout and "bare ONNX int8" in done.stdout
    assert figures["openvino"]["f32_images_per_s"] > 0 and "bare OpenVINO beside ONNX Runtime" in done.stdout


def test_make_soak_short_run_passes_and_reports(cache_dir: Path, tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, "-m", "clipgate.bench.soak", "--model", "random:tiny", "--duration", "6"]
        + ["--capacity-s", "2", "--burst-clients", "8", "--burst-mb", "30", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["problems"] == []
    statuses = figures["load"]["statuses"]
    assert set(statuses) >= {"text", "image", "hostile"}
    assert all(int(code) < 500 or int(code) == 503 for label in statuses.values() for code in label)
    assert {int(code) for code in statuses["hostile"]} - {503, 429} <= {400, 404, 413, 422}
    assert figures["after"] == {"valid": 200, "readiness": 200}
    assert set(figures["bursts"]) == {"declared", "chunked"}
    assert figures["bursts"]["declared"]["clients"] == 8 and figures["bursts"]["declared"]["valid_status"] == 200
    assert "PASS" in done.stdout


def test_the_soak_judge_fails_what_it_should() -> None:
    from clipgate.bench.soak import judge

    ok = {"statuses": {"text": {"200": 5, "503": 2}, "hostile": {"400": 1}}, "failures": {}}
    assert judge(ok, 10, 256, {"valid": 200, "readiness": 200}) == []
    bad = {
        "statuses": {"text": {"500": 1, "422": 1}, "hostile": {"200": 1}},
        "failures": {"timeout": 1},
    }
    problems = judge(bad, 300, 256, {"valid": 503, "readiness": 503})
    assert len(problems) == 7, problems
