"""The benchmark's honesty rules, without a model: only good 200s count towards a figure, a
phase with anything else fails every target built on it, bfloat16 is measured only on a CPU
that has it natively, and the plan fits its time budget."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from clipgate.bench import cpu, loadgen
from clipgate.bench.__main__ import BUDGET_S, Plan, over_budget, table, verdict

# --- LoadReport: what counts ----------------------------------------------------------------


def _summary(answers: dict[int, int], latency_s: float, elapsed_s: float, bad_bodies: int = 0) -> dict[str, Any]:
    report = loadgen.LoadReport(concurrency=16, elapsed_s=elapsed_s)
    for status, n in answers.items():
        for _ in range(n):
            report.record(status, latency_s)
    for _ in range(bad_bodies):
        report.record(200, latency_s, body_ok=False)
    return report.summary()


def test_a_run_of_503s_has_no_throughput_and_no_latency() -> None:
    report = loadgen.LoadReport(concurrency=16, elapsed_s=7.0)
    for _ in range(635):
        report.record(503, 0.01)
    assert report.answered == 635
    assert report.succeeded == 0
    assert report.rate == 0.0
    assert report.percentile(50) == 0.0
    assert not report.clean and report.problems() == ["635 x 503"]
    summary = report.summary()
    assert summary["per_s"] == 0.0 and summary["p50_ms"] == 0.0 and summary["p99_ms"] == 0.0
    assert summary["statuses"] == {"503": 635}


def test_only_good_200s_count_towards_rate_and_latency() -> None:
    report = loadgen.LoadReport(concurrency=16, elapsed_s=2.0)
    for _ in range(10):
        report.record(200, 0.5)
    for _ in range(90):
        report.record(503, 0.001)  # fast refusals must not pull the latency down
    for _ in range(5):
        report.record(200, 0.002, body_ok=False)  # a 200 whose body failed the check
    assert report.answered == 105 and report.succeeded == 10 and report.bad_bodies == 5
    assert report.rate == 5.0
    assert report.percentile(50) == 0.5 and report.percentile(99) == 0.5
    assert report.problems() == ["90 x 503", "5 x 200 with a bad body"]


def test_a_clean_run_has_no_problems_and_an_empty_one_has_one() -> None:
    report = loadgen.LoadReport(concurrency=1, elapsed_s=1.0)
    assert report.problems() == ["no answer in the window"]
    report.record(200, 0.1)
    assert report.clean and report.rate == 1.0
    report.failures["timeout"] += 1
    assert report.problems() == ["1 x timeout"]


async def _fake_server(statuses: Iterator[tuple[int, bytes]]) -> asyncio.Server:
    """A keep-alive HTTP/1.1 server on 127.0.0.1 that answers each request with the next
    (status, body), whatever was asked."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                status, body = next(statuses)
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _run_against(answers: list[tuple[int, bytes]], total: int) -> loadgen.LoadReport:
    async def go() -> loadgen.LoadReport:
        server = await _fake_server(itertools.cycle(answers))
        port = server.sockets[0].getsockname()[1]
        try:
            raw = loadgen.json_request("/clip/embed_image", {"image": "x"})
            check = loadgen.has_json_key("embeddings")
            return await loadgen.run_load("127.0.0.1", port, [raw], concurrency=4, total=total, check=check)
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(go())


def test_run_load_against_a_server_that_answers_503_counts_nothing() -> None:
    report = _run_against([(503, b'{"message": "overloaded"}')], total=40)
    assert report.statuses == {503: 40}
    assert report.succeeded == 0 and report.rate == 0.0
    assert report.summary()["per_s"] == 0.0 and report.summary()["problems"] == ["40 x 503"]


def test_run_load_counts_only_checked_200s() -> None:
    good, bad_body = (200, b'{"embeddings": [[0.5]]}'), (200, b'{"oops": 1}')
    report = _run_against([good, (503, b"{}"), bad_body, good], total=40)
    assert report.statuses == {200: 30, 503: 10}
    assert report.bad_bodies == 10 and report.succeeded == 20
    assert report.rate == pytest.approx(20 / report.elapsed_s)
    assert report.problems() == ["10 x 503", "10 x 200 with a bad body"]


# --- the verdict ----------------------------------------------------------------------------


def _results(**overrides: dict[str, Any]) -> dict[str, Any]:
    """One round where every target is met by clean phases, but for `overrides`."""
    clean_images = _summary({200: 350}, 0.3, 7.0)  # 50 images/s
    one_round: dict[str, Any] = {
        "bare_image_b1_per_s": 20.0,
        "image_c1": _summary({200: 15}, 0.055, 1.0),
        "text_c1": _summary({200: 40}, 0.01, 0.5),
        "bare_images_per_s": 52.0,
        "image_json_c16": clean_images,
        "image_multipart_c16": clean_images,
        "naive_image_json_c16": _summary({200: 140}, 0.8, 7.0),
        "reduced_image_json_c16": _summary({200: 700}, 0.15, 7.0),
        "bare_reduced_images_per_s": 110.0,
        "bare_short_texts_per_s": 1000.0,
        "text_c16": _summary({200: 4000}, 0.02, 5.0),
        "naive_text_c16": _summary({200: 1000}, 0.08, 5.0),
    }
    one_round.update(overrides)
    return {
        "rounds": [one_round],
        "bare": {"decode_ms": {"ours_reduced": 5.0}, "reduced_dtype": "bfloat16"},
        "clipgate_soak": {
            "load": _summary({200: 2000}, 0.05, 20.0),
            "requests_planned": 2000,
            "max_s": 60.0,
            "peak_rss_mib": 1000.0,
            "rss_growth_after_quarter_mib": 2.0,
        },
    }


def _rows_by_name(results: dict[str, Any]) -> dict[str, Any]:
    return {row.what: row for row in verdict(results, weights_mib=570.0)}


def test_clean_phases_that_meet_their_targets_pass() -> None:
    rows = _rows_by_name(_results())
    assert len(rows) == 9
    assert all(row.ok and not row.why for row in rows.values()), table(list(rows.values()))


def test_a_reduced_server_that_answered_503_fails_its_row_and_says_why() -> None:
    # The incident: every request of the bfloat16 phase answered 503, fast. Counted as answers,
    # that was 90.7 "images/s" and a 10.7x ratio marked "yes".
    results = _results(reduced_image_json_c16=_summary({503: 635}, 0.01, 7.0))
    rows = _rows_by_name(results)
    reduced = rows["images/s c16, bfloat16 / float32 server"]
    assert reduced.ours == 0.0 and reduced.ratio == 0.0
    assert not reduced.ok
    assert reduced.why == ("reduced_image_json_c16: 635 x 503",)
    others = [row for name, row in rows.items() if name != reduced.what]
    assert all(row.ok for row in others)
    printed = table(list(rows.values()))
    line = next(line for line in printed.splitlines() if line.startswith(reduced.what))
    assert line.endswith("NO")
    assert "not a clean measure: reduced_image_json_c16: 635 x 503" in printed


def test_one_refusal_in_a_phase_fails_every_row_built_on_it_even_when_the_ratio_meets_the_target() -> None:
    results = _results(image_json_c16=_summary({200: 350, 503: 1}, 0.3, 7.0))
    rows = _rows_by_name(results)
    hit = {
        "images/s c16, base64 JSON / bare best batch",
        "images/s c16 / naive server",
        "images/s c16, bfloat16 / float32 server",
    }
    for name, row in rows.items():
        if name in hit:
            assert not row.ok and row.why == ("image_json_c16: 1 x 503",), row
        else:
            assert row.ok, row
    assert rows["images/s c16, base64 JSON / bare best batch"].ratio >= 0.85  # met, and still NO


def _with_onnx(**overrides: Any) -> dict[str, Any]:
    results = _results()
    onnx_round = {
        "onnx_image_c1": _summary({200: 15}, 0.03, 1.0),
        "onnx_image_json_c16": _summary({200: 420}, 0.2, 6.0),  # 70 images/s
        "onnx_text_c16": _summary({200: 6500}, 0.02, 5.0),  # 1300 texts/s
        "onnx_bare_images_per_s": 75.0,
        "onnx_bare_short_texts_per_s": 1600.0,
    }
    results["rounds"][0].update(onnx_round, **overrides)
    results["peak_rss_after_rounds_mib"] = {"torch": 1000.0, "onnx": 700.0}
    return results


def test_the_onnx_rows_compare_with_torch_bare_and_their_own_bare() -> None:
    rows = _rows_by_name(_with_onnx())
    assert len(rows) == 15 and all(row.ok for row in rows.values()), table(list(rows.values()))
    images = rows["ONNX images/s c16 / torch bare best batch"]
    assert (images.ours, images.versus, images.target) == (70.0, 52.0, ">= 1.3")
    latency = rows["ONNX p50 ms, one image c1 / torch server's"]
    assert latency.target == "<= 0.6" and latency.ratio == pytest.approx(30 / 55)
    assert rows["ONNX short texts/s c16 / ONNX bare best batch"].versus == 1600.0
    assert rows["peak RSS MiB after the rounds, ONNX / torch server"].ratio == pytest.approx(0.7)


def test_an_onnx_phase_with_refusals_fails_its_rows_and_not_torchs() -> None:
    rows = _rows_by_name(_with_onnx(onnx_text_c16=_summary({200: 4000, 503: 2}, 0.02, 5.0)))
    failed = {name for name, row in rows.items() if not row.ok}
    assert failed == {
        "ONNX short texts/s c16 / torch bare best batch",
        "ONNX short texts/s c16 / ONNX bare best batch",
        "peak RSS MiB after the rounds, ONNX / torch server",
    }


def test_a_failed_phase_names_its_round() -> None:
    results = _results()
    second = dict(results["rounds"][0], text_c16=_summary({200: 10}, 0.02, 5.0, bad_bodies=3))
    results["rounds"].append(second)
    row = _rows_by_name(results)["short texts/s c16 / bare best batch"]
    assert not row.ok and row.why == ("text_c16 round 2: 3 x 200 with a bad body",)


def test_a_soak_with_refusals_fails_the_memory_rows() -> None:
    results = _results()
    results["clipgate_soak"]["load"] = _summary({503: 2000}, 0.001, 3.0)
    rows = _rows_by_name(results)
    for name in ("peak RSS MiB / (weights + 1.5 GiB)", "RSS growth MiB over the last 3/4 / 64 MiB"):
        assert not rows[name].ok and rows[name].why == ("clipgate_soak: 2000 x 503",)


def test_a_soak_cut_short_by_its_time_bound_fails_the_memory_rows() -> None:
    results = _results()
    results["clipgate_soak"]["load"] = _summary({200: 401}, 0.05, 60.0)
    rows = _rows_by_name(results)
    for name in ("peak RSS MiB / (weights + 1.5 GiB)", "RSS growth MiB over the last 3/4 / 64 MiB"):
        assert not rows[name].ok
        assert rows[name].why == ("clipgate_soak: 401 of its 2000 requests answered within its 60 s bound",)


def test_a_latency_row_from_refusals_fails_though_its_zero_ratio_is_under_the_bound() -> None:
    row = _rows_by_name(_results(image_c1=_summary({503: 15}, 0.001, 0.1)))[
        "p50 ms, one image c1 / (bare batch 1 + decode)"
    ]
    assert row.ratio == 0.0 and not row.ok and row.why == ("image_c1: 15 x 503",)


# --- native bfloat16 ------------------------------------------------------------------------

AVX2_ONLY = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2
bugs\t\t: spectre_v1 spectre_v2

processor\t: 1
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2
"""
AVX512_NO_BF16 = "flags\t\t: fpu sse2 avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni\n"
AVX512_BF16 = "flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 avx512_fp16\n"
AMX = "flags\t\t: fpu sse2 avx avx2 avx512f amx_bf16 amx_tile amx_int8\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [
        pytest.param(AVX2_ONLY, False, id="avx2"),
        pytest.param(AVX512_NO_BF16, False, id="avx512-without-bf16"),
        pytest.param(AVX512_BF16, True, id="avx512_bf16"),
        pytest.param(AMX, True, id="amx_bf16"),
        pytest.param("", False, id="no-cpuinfo"),
        pytest.param("model name\t: avx512_bf16 lookalike\nflags\t: avx2\n", False, id="flag-outside-flags-line"),
        pytest.param("flags\t: avx512_bf16x avx2\n", False, id="flag-prefix-only"),
    ],
)
def test_native_bf16_reads_the_flags_lines(cpuinfo: str, native: bool) -> None:
    assert cpu.native_bf16(cpuinfo) is native


def test_bfloat16_is_skipped_with_a_reason_where_it_would_be_emulated() -> None:
    dtype, reason = cpu.reduced_dtype("cpu", AVX2_ONLY)
    assert dtype == "bfloat16"
    assert reason is not None and "no native bfloat16" in reason and "skipped" in reason
    assert cpu.reduced_dtype("cpu", AVX512_BF16) == ("bfloat16", None)
    assert cpu.reduced_dtype("cpu", AMX) == ("bfloat16", None)


def test_cuda_always_measures_float16() -> None:
    assert cpu.reduced_dtype("cuda", AVX2_ONLY) == ("float16", None)
    assert cpu.reduced_dtype("cuda:1", "") == ("float16", None)


def test_cpu_flags_are_the_union_of_the_flags_lines() -> None:
    assert {"avx2", "bmi2", "fpu"} <= cpu.cpu_flags(AVX2_ONLY)
    assert "spectre_v1" not in cpu.cpu_flags(AVX2_ONLY)  # a `bugs` line, not a flag


# --- the time budget ------------------------------------------------------------------------


def test_the_full_plan_leaves_most_of_ten_minutes_to_model_loads_and_warm_ups() -> None:
    assert BUDGET_S < 600
    assert Plan().nominal_s(rounds=3) <= BUDGET_S / 2
    assert Plan.quick().nominal_s(rounds=1) < 60


def test_no_round_is_started_that_could_overrun_the_budget() -> None:
    plan = Plan()
    assert not over_budget(elapsed_s=200.0, round_s=70.0, plan=plan, budget_s=BUDGET_S)
    assert over_budget(elapsed_s=430.0, round_s=70.0, plan=plan, budget_s=BUDGET_S)
