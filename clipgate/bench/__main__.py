"""`make bench`: the gateway against the bare model and a naive server, side by side, in one run.

    python -m clipgate.bench [--model random:base] [--device cpu|cuda] [--out bench-results.json]

1. The bare model in this process: images and texts per second at each batch size, the cost of
   decoding one JPEG, and the parity of our preprocessing and of the reduced dtype.
2. `clipgate serve` on the same checkpoint: latency at concurrency 1, throughput at
   concurrency 16 (Roboflow base64 JSON, SambaStudio multipart, short texts), and resident
   memory across a 2,000-request mixed run.
3. The naive per-request server under the same load.
4. `clipgate serve` with the reduced dtype (bfloat16 on CPU, float16 on CUDA) under the image load.
   On a CPU without native bfloat16 (no AVX512-BF16, no AMX) the bfloat16 parts are skipped, with
   a note: they would measure an emulation.
5. The ONNX backend beside torch: its bare sweep in ONNX Runtime (same batch sizes), its parity to
   torch and that of its int8 copy to float32, and `clipgate serve` with `model.backend = onnx`
   under the same loads, in the same rounds; peak resident memory of both servers after them.

Every figure is taken in this one run, so ratios compare like with like on a noisy machine.
Throughput and latency count only successful answers (200 with a good body); a phase with any
other outcome fails every target it is part of, and the table says why.
The load stays on 127.0.0.1 and every phase is bounded in time; a round that would take the run
past its time budget is not started. Prints a table; writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from clipgate.bench import bare, cpu, loadgen, servers, workload
from clipgate.config import ModelConfig
from clipgate.engine import resolve_checkpoint
from clipgate.images import ImageTransform

CONCURRENCY = 16
GIB = 1024**3
BUDGET_S = 540.0  # a whole run, so that `make bench` ends within 10 minutes


@dataclass(frozen=True)
class Plan:
    """How long each part runs. `quick` is for tests of the benchmark itself, not for figures."""

    image_batches: tuple[int, ...] = (1, 4, 8, 16, 32)
    text_batches: tuple[int, ...] = (1, 16, 64, 256)
    long_text_batches: tuple[int, ...] = (1, 8, 16, 32)
    reduced_batches: tuple[int, ...] = (8, 32)
    point_s: float = 1.5
    latency_images: int = 15  # per round
    latency_texts: int = 40
    image_load_s: float = 6.0
    text_load_s: float = 5.0
    soak_requests: int = 2000
    soak_max_s: float = 60.0  # the soak stops here even if its requests are not all answered
    images_per_soak_cycle: int = 1  # of every 8 soak requests, this many carry an image

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            image_batches=(1, 4),
            text_batches=(1, 16),
            long_text_batches=(1, 4),
            reduced_batches=(4,),
            point_s=0.05,
            latency_images=4,
            latency_texts=8,
            image_load_s=1.5,
            text_load_s=1.0,
            soak_requests=80,
            soak_max_s=30.0,
        )

    def nominal_s(self, rounds: int) -> float:
        """The timed windows of a run with every server, in seconds: a floor under its length
        that leaves most of the budget for model loads, warm-ups and the count-bound phases."""
        torch_sweep = len(self.image_batches) + len(self.text_batches) + len(self.long_text_batches)
        onnx_sweep = len(self.image_batches) + len(self.text_batches) + 2  # + int8 at the best batches
        openvino = 5  # ONNX Runtime again, OpenVINO float32 and bfloat16 images; the same, less float32, texts
        sweep = self.point_s * (torch_sweep + len(self.reduced_batches) + onnx_sweep + openvino)
        per_round = 4 * self.point_s + 4 * self.image_load_s + 2 * self.text_load_s
        onnx_round = 2 * self.point_s + self.image_load_s + self.text_load_s
        return sweep + rounds * (per_round + onnx_round) + self.soak_max_s


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the requests --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Requests:
    image_json: list[bytes]  # Roboflow /clip/embed_image, base64
    image_multipart: list[bytes]  # SambaStudio /api/predict/file, raw JPEG bytes
    short_text: list[bytes]  # Roboflow /clip/embed_text, one short caption each


def build_requests(jpegs: Sequence[bytes]) -> Requests:
    image_json = [
        loadgen.json_request("/clip/embed_image", {"image": {"type": "base64", "value": base64.b64encode(j).decode()}})
        for j in jpegs
    ]
    multipart = [
        loadgen.multipart_request("/api/predict/file/bench/clip", "predict_file", f"photo{i}.jpg", j)
        for i, j in enumerate(jpegs)
    ]
    texts = [loadgen.json_request("/clip/embed_text", {"text": t}) for t in workload.SHORT_TEXTS]
    return Requests(image_json, multipart, texts)


def long_texts(model_dir: Path, count: int = 8) -> list[str]:
    """Captions of exactly the model's context length (77 tokens with start and end)."""
    from clipgate.engine import load_tokenizer

    tokenizer, _ = load_tokenizer(model_dir)
    tokenizer.no_truncation()
    out = []
    for seed in range(count):
        words = workload.long_text(seed, tokens=90).split()
        while len(tokenizer.encode(" ".join(words)).ids) > 77:
            words.pop()
        out.append(" ".join(words))
    return out


# --- the bare model ---------------------------------------------------------------------------


@dataclass
class BareSide:
    """The bare models, loaded once and kept: they are measured again in every round."""

    fp32: bare.BareModel
    reduced: bare.BareModel | None  # None: the reduced dtype is not measured on this machine
    best_image_batch: int
    best_text_batch: int
    best_reduced_batch: int


def sweep_bare(
    model_dir: Path, jpegs: Sequence[bytes], args: argparse.Namespace, plan: Plan, reduced_name: str, with_reduced: bool
) -> tuple[dict[str, Any], BareSide]:
    """Every batch size once, to find the best; the decode cost; parity of preprocessing and, when
    `with_reduced`, of the reduced dtype."""
    import torch

    from clipgate.config import ImagesConfig
    from clipgate.images import decode_image
    from clipgate.service import REDUCED_DECODE_MARGIN

    results: dict[str, Any] = {}
    log("bare model, float32: images by batch size")
    model = bare.BareModel(model_dir, dtype=torch.float32, device=args.device)
    images = model.images(plan.image_batches, min_s=plan.point_s)
    log("bare model, float32: short and 77-token texts by batch size")
    short = model.texts(workload.SHORT_TEXTS, plan.text_batches, min_s=plan.point_s)
    long = model.texts(long_texts(model_dir), plan.long_text_batches, min_s=plan.point_s)
    results["float32_sweep"] = {
        "images": _points(images),
        "short_texts": _points(short),
        "long_texts": _points(long),
    }
    log("decoding and preprocessing: ours (reduced JPEG decode and full) and transformers' processor")
    transform = ImageTransform.from_processor_config(json.loads((model_dir / "preprocessor_config.json").read_text()))
    reduce_to = math.ceil(REDUCED_DECODE_MARGIN * transform.crop_height)
    results["decode_ms"] = {
        "ours_reduced": round(bare.decode_seconds(jpegs, transform, reduce_to=reduce_to) * 1000, 2),
        "ours_full": round(bare.decode_seconds(jpegs, transform, reduce_to=None) * 1000, 2),
        "transformers_processor": round(bare.reference_decode_seconds(model_dir, jpegs) * 1000, 2),
    }
    log("parity: our preprocessing against transformers' processor, through the model")
    limits = ImagesConfig()
    reference = model.image_vectors(bare.reference_pixels(model_dir, jpegs))
    ours_reduced = np.stack([transform(decode_image(j, limits, reduce_to=reduce_to)) for j in jpegs])
    ours_full = np.stack([transform(decode_image(j, limits)) for j in jpegs])
    fp32_vectors = model.image_vectors(ours_reduced)
    results["parity"] = {
        "reduced_decode_min_cosine": float(bare.cosines(fp32_vectors, reference).min()),
        "full_decode_min_cosine": float(bare.cosines(model.image_vectors(ours_full), reference).min()),
    }
    results["reduced_dtype"] = reduced_name
    results["best_batch"] = {
        "images": bare.best(images).batch,
        "short_texts": bare.best(short).batch,
        "long_texts": bare.best(long).batch,
    }
    reduced = None
    best_reduced_batch = 0
    if with_reduced:
        log(f"bare model, {reduced_name}: images by batch size")
        reduced = bare.BareModel(model_dir, dtype=getattr(torch, reduced_name), device=args.device)
        reduced_points = reduced.images(plan.reduced_batches, min_s=plan.point_s)
        results[f"{reduced_name}_sweep"] = {
            "images": _points(reduced_points),
            "min_cosine_vs_float32": float(bare.cosines(reduced.image_vectors(ours_reduced), fp32_vectors).min()),
        }
        best_reduced_batch = results["best_batch"]["reduced_images"] = bare.best(reduced_points).batch
    side = BareSide(
        fp32=model,
        reduced=reduced,
        best_image_batch=results["best_batch"]["images"],
        best_text_batch=results["best_batch"]["short_texts"],
        best_reduced_batch=best_reduced_batch,
    )
    return results, side


@dataclass
class OnnxSide:
    """The ONNX export in ONNX Runtime, kept like `BareSide` for the rounds."""

    fp32: bare.OnnxBare
    best_image_batch: int
    best_text_batch: int


def sweep_onnx(
    model_id: str, model_dir: Path, jpegs: Sequence[bytes], torch_side: BareSide, plan: Plan
) -> tuple[dict[str, Any], OnnxSide]:
    """The export (made or found), the ONNX Runtime sweep, parity to torch, and the int8 copy:
    its parity to float32 and its speed at the float32 best batches."""
    from clipgate.backends import onnx as onnx_backend
    from clipgate.config import ImagesConfig
    from clipgate.engine import Checkpoint
    from clipgate.images import decode_image

    results: dict[str, Any] = {}
    checkpoint = Checkpoint.read(model_dir, model_id)
    transform = ImageTransform.from_processor_config(checkpoint.processor)
    for quantize in ("none", "int8"):
        cached = onnx_backend.find_export(model_dir, quantize) is not None
        log(f"ONNX export ({quantize}): {'cached' if cached else 'making it (once per checkpoint)'}")
        started = time.perf_counter()
        export = onnx_backend.ensure_export(checkpoint, transform.crop_height, quantize)
        results[f"export_{quantize}"] = {
            "folder": str(export.folder),
            "cached": cached,
            "seconds": round(time.perf_counter() - started, 1),
        }
    fp32_export = onnx_backend.ensure_export(checkpoint, transform.crop_height)
    log("bare ONNX Runtime, float32: images and short texts by batch size")
    model = bare.OnnxBare(model_dir, fp32_export)
    images = model.images(plan.image_batches, min_s=plan.point_s)
    short = model.texts(workload.SHORT_TEXTS, plan.text_batches, min_s=plan.point_s)
    results["float32_sweep"] = {"images": _points(images), "short_texts": _points(short)}
    results["best_batch"] = {"images": bare.best(images).batch, "short_texts": bare.best(short).batch}
    log("parity: ONNX against torch, int8 against float32 (the bench's JPEGs and short texts)")
    limits = ImagesConfig()
    pixels = np.stack([transform(decode_image(j, limits)) for j in jpegs])
    ids, mask = model.token_batch(workload.SHORT_TEXTS, len(workload.SHORT_TEXTS))
    onnx_images, onnx_texts = model.image_vectors(pixels), model.text_vectors(ids, mask)
    torch_images = torch_side.fp32.image_vectors(pixels)
    import torch

    # Padding follows the end token, which CLIP pools at under a causal mask: no mask needed here.
    torch_texts = torch_side.fp32.text_vectors(torch.from_numpy(ids))
    results["parity_to_torch"] = {
        "images_min_cosine": float(bare.cosines(onnx_images, torch_images).min()),
        "images_max_abs": float(np.abs(onnx_images - torch_images).max()),
        "texts_min_cosine": float(bare.cosines(onnx_texts, torch_texts).min()),
        "texts_max_abs": float(np.abs(onnx_texts - torch_texts).max()),
    }
    int8_export = onnx_backend.ensure_export(checkpoint, transform.crop_height, "int8")
    int8 = bare.OnnxBare(model_dir, int8_export)
    log("bare ONNX Runtime, int8: images and short texts at the float32 best batches")
    int8_images = int8.images([results["best_batch"]["images"]], min_s=plan.point_s)
    int8_texts = int8.texts(workload.SHORT_TEXTS, [results["best_batch"]["short_texts"]], min_s=plan.point_s)
    results["int8"] = {
        "images": _points(int8_images),
        "short_texts": _points(int8_texts),
        "images_min_cosine_vs_float32": float(bare.cosines(int8.image_vectors(pixels), onnx_images).min()),
        "texts_min_cosine_vs_float32": float(bare.cosines(int8.text_vectors(ids, mask), onnx_texts).min()),
        "probe_parity": int8_export.info().get("parity", {}),
        "floor": ModelConfig().int8_min_cosine,
    }
    del int8
    side = OnnxSide(model, results["best_batch"]["images"], results["best_batch"]["short_texts"])
    return results, side


def sweep_openvino(model_dir: Path, onnx_side: OnnxSide, plan: Plan) -> dict[str, Any]:
    """OpenVINO on the same export beside ONNX Runtime, at ONNX Runtime's best batches: images in
    float32 and bfloat16, short texts in bfloat16; bfloat16 only where the CPU has it natively.
    The case for model.backend = openvino: it exists for the bfloat16 path."""
    import openvino as ov

    from clipgate.backends import onnx as onnx_backend

    export = onnx_backend.find_export(model_dir)
    assert export is not None  # sweep_onnx made it
    native = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    ib, tb = onnx_side.best_image_batch, onnx_side.best_text_batch
    out: dict[str, Any] = {"image_batch": ib, "text_batch": tb, "native_bf16": native}
    texts = workload.SHORT_TEXTS
    log(f"bare OpenVINO beside ONNX Runtime: images at batch {ib}, short texts at batch {tb}")
    out["onnxruntime_images_per_s"] = onnx_side.fp32.images([ib], min_s=plan.point_s)[0].per_s
    f32 = bare.OpenVinoBare(model_dir, export, "f32")
    out["f32_images_per_s"] = f32.images([ib], min_s=plan.point_s)[0].per_s
    del f32
    out["onnxruntime_short_texts_per_s"] = onnx_side.fp32.texts(texts, [tb], min_s=plan.point_s)[0].per_s
    if native:
        bf16 = bare.OpenVinoBare(model_dir, export, "bf16")
        out["bf16_images_per_s"] = bf16.images([ib], min_s=plan.point_s)[0].per_s
        out["bf16_short_texts_per_s"] = bf16.texts(texts, [tb], min_s=plan.point_s)[0].per_s
        rng = np.random.default_rng(1)
        pixels = rng.standard_normal((8, 3, 224, 224), dtype=np.float32)
        ids, mask = onnx_side.fp32.token_batch(texts, len(texts))
        out["bf16_images_min_cosine_vs_float32"] = float(
            bare.cosines(bf16.image_vectors(pixels), onnx_side.fp32.image_vectors(pixels)).min()
        )
        out["bf16_texts_min_cosine_vs_float32"] = float(
            bare.cosines(bf16.text_vectors(ids, mask), onnx_side.fp32.text_vectors(ids, mask)).min()
        )
    return out


def _points(points: Sequence[bare.Point]) -> list[dict[str, float]]:
    return [{"batch": p.batch, "per_s": round(p.per_s, 2)} for p in points]


# --- the rounds ---------------------------------------------------------------------------------


def load(port: int, reqs: Sequence[bytes], **kwargs: Any) -> loadgen.LoadReport:
    return asyncio.run(loadgen.run_load("127.0.0.1", port, reqs, **kwargs))


def one_round(
    n: int,
    side: BareSide,
    gate: servers.ServerProcess,
    naive: servers.ServerProcess | None,
    reduced: servers.ServerProcess | None,
    reqs: Requests,
    plan: Plan,
    unmetered: servers.ServerProcess | None = None,
    onnx: tuple[OnnxSide, servers.ServerProcess] | None = None,
) -> dict[str, Any]:
    """Each measure next to the one it is compared with, seconds apart, so a noisy neighbour
    slows both sides of a ratio alike."""
    out: dict[str, Any] = {}
    check = loadgen.has_json_key("embeddings")
    c16 = {"concurrency": CONCURRENCY, "check": check}
    warm = 1 if n == 1 else 0  # later rounds find the servers warm
    log(f"round {n}: one image at a time, bare batch 1 then clipgate")
    out["bare_image_b1_per_s"] = side.fp32.images([1], min_s=plan.point_s)[0].per_s
    out["image_c1"] = load(
        gate.port, reqs.image_json, concurrency=1, total=plan.latency_images, warmup=2 * warm, check=check
    ).summary()
    out["text_c1"] = load(
        gate.port, reqs.short_text, concurrency=1, total=plan.latency_texts, warmup=4 * warm, check=check
    ).summary()
    if onnx is not None:
        out["onnx_image_c1"] = load(
            onnx[1].port, reqs.image_json, concurrency=1, total=plan.latency_images, warmup=2 * warm, check=check
        ).summary()
        out["onnx_text_c1"] = load(
            onnx[1].port, reqs.short_text, concurrency=1, total=plan.latency_texts, warmup=4 * warm, check=check
        ).summary()
    log(f"round {n}: images, bare best batch then {CONCURRENCY} clients on each server")
    out["bare_images_per_s"] = side.fp32.images([side.best_image_batch], min_s=plan.point_s)[0].per_s
    out["image_json_c16"] = load(
        gate.port, reqs.image_json, duration_s=plan.image_load_s, warmup=CONCURRENCY * warm, **c16
    ).summary()
    out["image_multipart_c16"] = load(
        gate.port,
        reqs.image_multipart,
        duration_s=plan.image_load_s,
        warmup=CONCURRENCY * warm,
        concurrency=CONCURRENCY,
        check=loadgen.has_json_key("data"),  # SambaStudio's shape
    ).summary()
    if naive is not None:
        out["naive_image_json_c16"] = load(
            naive.port, reqs.image_json, duration_s=plan.image_load_s, warmup=CONCURRENCY * warm, **c16
        ).summary()
    if reduced is not None and side.reduced is not None:
        out["reduced_image_json_c16"] = load(
            reduced.port, reqs.image_json, duration_s=plan.image_load_s, warmup=CONCURRENCY * warm, **c16
        ).summary()
        out["bare_reduced_images_per_s"] = side.reduced.images([side.best_reduced_batch], min_s=plan.point_s)[0].per_s
    if onnx is not None:
        out["onnx_bare_images_per_s"] = onnx[0].fp32.images([onnx[0].best_image_batch], min_s=plan.point_s)[0].per_s
        out["onnx_image_json_c16"] = load(
            onnx[1].port, reqs.image_json, duration_s=plan.image_load_s, warmup=CONCURRENCY * warm, **c16
        ).summary()
    log(f"round {n}: short texts, bare best batch then {CONCURRENCY} clients on each server")
    out["bare_short_texts_per_s"] = side.fp32.texts(workload.SHORT_TEXTS, [side.best_text_batch], min_s=plan.point_s)[
        0
    ].per_s
    text_servers = [("text_c16", gate), ("unmetered_text_c16", unmetered)]
    for key, server in text_servers if n % 2 else text_servers[::-1]:  # alternate which goes first
        if server is not None:
            out[key] = load(
                server.port, reqs.short_text, duration_s=plan.text_load_s, warmup=4 * CONCURRENCY * warm, **c16
            ).summary()
    if naive is not None:
        out["naive_text_c16"] = load(
            naive.port, reqs.short_text, duration_s=plan.text_load_s, warmup=CONCURRENCY * warm, **c16
        ).summary()
    if onnx is not None:
        out["onnx_bare_short_texts_per_s"] = (
            onnx[0].fp32.texts(workload.SHORT_TEXTS, [onnx[0].best_text_batch], min_s=plan.point_s)[0].per_s
        )
        out["onnx_text_c16"] = load(
            onnx[1].port, reqs.short_text, duration_s=plan.text_load_s, warmup=4 * CONCURRENCY * warm, **c16
        ).summary()
    return out


def run_soak(server: servers.ServerProcess, reqs: Requests, plan: Plan) -> dict[str, Any]:
    """A mixed run of `plan.soak_requests` at concurrency 16 (at most `plan.soak_max_s`), with
    resident memory sampled."""
    mix = reqs.image_json[: plan.images_per_soak_cycle] + reqs.short_text[: 8 - plan.images_per_soak_cycle]
    log(f"{server.name}: {plan.soak_requests} mixed requests, watching resident memory")
    marks: dict[int, int] = {}

    def progress(done: int) -> None:
        if done % max(1, plan.soak_requests // 10) == 0:
            marks[done] = servers.memory_kib(server.pid)["VmRSS"]

    before = servers.memory_kib(server.pid)["VmRSS"]
    with servers.MemoryWatch(server.pid) as watch:
        report = load(
            server.port,
            mix,
            concurrency=CONCURRENCY,
            total=plan.soak_requests,
            duration_s=plan.soak_max_s,
            check=loadgen.has_json_key("embeddings"),
            on_progress=progress,
        )
    after = servers.memory_kib(server.pid)
    rss = [kib for _, kib in watch.samples] or [after["VmRSS"]]
    quarter = sorted(marks.items())
    early = [kib for done, kib in quarter if done <= plan.soak_requests // 4] or [before]
    return {
        "load": report.summary(),
        "requests_planned": plan.soak_requests,
        "max_s": plan.soak_max_s,
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after["VmRSS"] / 1024, 1),
        "rss_max_during_mib": round(max(rss) / 1024, 1),
        "rss_at_quarter_mib": round(max(early) / 1024, 1),
        "rss_growth_after_quarter_mib": round((after["VmRSS"] - max(early)) / 1024, 1),
        "peak_rss_mib": round(after["VmHWM"] / 1024, 1),
        "rss_marks_mib": {str(k): round(v / 1024, 1) for k, v in quarter},
    }


# --- the verdict --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    what: str
    ours: float  # medians over the rounds
    versus: float
    ratio: float  # the median of the per-round ratios
    target: str
    ok: bool
    why: tuple[str, ...] = ()  # the phases behind the row that were not clean, and how


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def phase_problems(r: dict[str, Any], key: str) -> list[str]:
    """What kept a load phase from being a clean measure, round by round: any answer but a
    good 200, any request without an answer, a soak stopped by its time bound before its last
    request. Empty when every round of it was clean."""
    out = []
    if key == "clipgate_soak":
        soak = r["clipgate_soak"]
        runs = [soak["load"]]
        if soak["load"]["answered"] < soak["requests_planned"]:
            out.append(
                f"clipgate_soak: {soak['load']['answered']} of its {soak['requests_planned']} requests answered "
                f"within its {soak['max_s']:.0f} s bound"
            )
    else:
        runs = [x[key] for x in r["rounds"] if isinstance(x.get(key), dict)]
    for n, run in enumerate(runs, 1):
        if run["problems"]:
            where = f"{key} round {n}" if len(runs) > 1 else key
            out.append(f"{where}: {', '.join(run['problems'])}")
    return out


def verdict(r: dict[str, Any], weights_mib: float) -> list[Row]:
    """One row per target. A row fails if its ratio misses the target, or if any load phase it
    is built from (`phases`) had an answer other than a good 200: its figures would not be
    figures of the work the target is about."""
    rounds: list[dict[str, Any]] = r["rounds"]
    decode_ms = r["bare"]["decode_ms"]["ours_reduced"]

    def row(what: str, target: str, ours: list[float], versus: list[float], phases: Sequence[str]) -> Row:
        ratio = _median([a / b for a, b in zip(ours, versus, strict=True) if b])
        bound = float(target.split()[1])
        meets = ratio >= bound if target.startswith(">=") else ratio <= bound
        why = tuple(p for phase in phases for p in phase_problems(r, phase))
        return Row(what, _median(ours), _median(versus), ratio, target, meets and not why, why)

    def series(key: str, field: str = "per_s") -> list[float]:
        return [float(x[key][field]) if isinstance(x[key], dict) else float(x[key]) for x in rounds if key in x]

    rows = [
        row(
            "images/s c16, base64 JSON / bare best batch",
            ">= 0.85",
            series("image_json_c16"),
            series("bare_images_per_s"),
            ["image_json_c16"],
        ),
        row(
            "images/s c16, multipart / bare best batch",
            ">= 0.85",
            series("image_multipart_c16"),
            series("bare_images_per_s"),
            ["image_multipart_c16"],
        ),
        row(
            "short texts/s c16 / bare best batch",
            ">= 0.7",
            series("text_c16"),
            series("bare_short_texts_per_s"),
            ["text_c16"],
        ),
    ]
    if "naive_image_json_c16" in rounds[0]:
        rows += [
            row(
                "images/s c16 / naive server",
                ">= 1.5",
                series("image_json_c16"),
                series("naive_image_json_c16"),
                ["image_json_c16", "naive_image_json_c16"],
            ),
            row(
                "short texts/s c16 / naive server",
                ">= 3",
                series("text_c16"),
                series("naive_text_c16"),
                ["text_c16", "naive_text_c16"],
            ),
        ]
    if "unmetered_text_c16" in rounds[0]:
        rows.append(
            row(
                "short texts/s c16, metrics on / off",
                ">= 0.98",
                series("text_c16"),
                series("unmetered_text_c16"),
                ["text_c16", "unmetered_text_c16"],
            )
        )
    budget = [1000 / b1 + decode_ms for b1 in series("bare_image_b1_per_s")]
    rows.append(
        row(
            "p50 ms, one image c1 / (bare batch 1 + decode)",
            "<= 1.15",
            series("image_c1", "p50_ms"),
            budget,
            ["image_c1"],
        )
    )
    if "reduced_image_json_c16" in rounds[0]:
        rows.append(
            row(
                f"images/s c16, {r['bare']['reduced_dtype']} / float32 server",
                ">= 1.8",
                series("reduced_image_json_c16"),
                series("image_json_c16"),
                ["reduced_image_json_c16", "image_json_c16"],
            )
        )
    if "onnx_image_json_c16" in rounds[0]:
        rows += [
            row(
                "ONNX images/s c16 / torch bare best batch",
                ">= 1.3",
                series("onnx_image_json_c16"),
                series("bare_images_per_s"),
                ["onnx_image_json_c16"],
            ),
            row(
                "ONNX short texts/s c16 / torch bare best batch",
                ">= 1.2",
                series("onnx_text_c16"),
                series("bare_short_texts_per_s"),
                ["onnx_text_c16"],
            ),
            row(
                "ONNX p50 ms, one image c1 / torch server's",
                "<= 0.6",
                series("onnx_image_c1", "p50_ms"),
                series("image_c1", "p50_ms"),
                ["onnx_image_c1", "image_c1"],
            ),
            row(
                "ONNX images/s c16 / ONNX bare best batch",
                ">= 0.85",
                series("onnx_image_json_c16"),
                series("onnx_bare_images_per_s"),
                ["onnx_image_json_c16"],
            ),
            row(
                "ONNX short texts/s c16 / ONNX bare best batch",
                ">= 0.7",
                series("onnx_text_c16"),
                series("onnx_bare_short_texts_per_s"),
                ["onnx_text_c16"],
            ),
        ]
        ov = r.get("openvino", {})
        if "bf16_images_per_s" in ov:  # measured side by side in the sweep, not in the rounds
            rows += [
                row(
                    "bare images/s, OpenVINO bfloat16 / ONNX Runtime",
                    ">= 1",
                    [ov["bf16_images_per_s"]],
                    [ov["onnxruntime_images_per_s"]],
                    [],
                ),
                row(
                    "bare short texts/s, OpenVINO bf16 / ONNX Runtime",
                    ">= 1",
                    [ov["bf16_short_texts_per_s"]],
                    [ov["onnxruntime_short_texts_per_s"]],
                    [],
                ),
            ]
        peak = r["peak_rss_after_rounds_mib"]
        rows.append(
            row(
                "peak RSS MiB after the rounds, ONNX / torch server",
                "<= 1",
                [peak["onnx"]],
                [peak["torch"]],
                ["onnx_image_json_c16", "onnx_text_c16", "image_json_c16", "text_c16"],
            )
        )
    soak = r["clipgate_soak"]
    rows.append(
        row(
            "peak RSS MiB / (weights + 1.5 GiB)",
            "<= 1",
            [soak["peak_rss_mib"]],
            [weights_mib + 1536],
            ["clipgate_soak"],
        )
    )
    rows.append(
        row(
            "RSS growth MiB over the last 3/4 / 64 MiB",
            "<= 1",
            [soak["rss_growth_after_quarter_mib"]],
            [64],
            ["clipgate_soak"],
        )
    )
    return rows


def table(rows: Sequence[Row]) -> str:
    head = f"{'measure (medians over the rounds)':<50} {'ours':>9} {'versus':>9} {'ratio':>7}  {'target':<8} ok"
    lines = [head, "-" * len(head)]
    for row in rows:
        mark = "yes" if row.ok else "NO"
        lines.append(f"{row.what:<50} {row.ours:>9.2f} {row.versus:>9.2f} {row.ratio:>7.3f}  {row.target:<8} {mark}")
        lines += [f"    not a clean measure: {why}" for why in row.why]
    return "\n".join(lines)


def over_budget(elapsed_s: float, round_s: float, plan: Plan, budget_s: float) -> bool:
    """Whether one more round, then the soak, could take the run past `budget_s`."""
    return elapsed_s + round_s + plan.soak_max_s + 15 > budget_s


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipgate.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="random:base", help="checkpoint id or folder (default random:base)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default="bench-results.json", help="where the figures go (JSON)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of side-by-side measures (default 3)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=BUDGET_S,
        help=f"no round is started that could take the run past this many seconds (default {BUDGET_S:.0f})",
    )
    parser.add_argument("--quick", action="store_true", help="seconds, not minutes: checks the benchmark runs")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline server")
    parser.add_argument("--no-reduced", action="store_true", help="skip the bfloat16/float16 server")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX backend (bare, parity, int8, server)")
    parser.add_argument("--no-openvino", action="store_true", help="skip OpenVINO's bare figures beside ONNX Runtime")
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    rounds = 1 if args.quick else args.rounds
    if plan.nominal_s(rounds) > args.budget_s / 2:
        parser.error(
            f"{rounds} rounds time {plan.nominal_s(rounds):.0f} s of load alone, over half the "
            f"{args.budget_s:.0f} s budget: fewer --rounds, or a larger --budget-s"
        )
    started = time.perf_counter()
    notes: list[str] = []
    reduced_name, skip_reduced = cpu.reduced_dtype(args.device, cpu.read_cpuinfo())
    if skip_reduced:
        log(f"note: {skip_reduced}")
        notes.append(skip_reduced)
    model_dir = resolve_checkpoint(ModelConfig(id=args.model, allow_download=False))
    weights_mib = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 2**20
    jpegs = [workload.photo_jpeg(seed) for seed in range(8)]
    reqs = build_requests(jpegs)
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "model": args.model,
        "device": args.device,
        "weights_mib": round(weights_mib, 1),
        "image_bytes_mean": round(sum(map(len, jpegs)) / len(jpegs)),
        "concurrency": CONCURRENCY,
        "quick": args.quick,
        "notes": notes,
    }
    results["bare"], side = sweep_bare(model_dir, jpegs, args, plan, reduced_name, with_reduced=not skip_reduced)
    onnx_side = None
    if not args.no_onnx:
        results["onnx"], onnx_side = sweep_onnx(args.model, model_dir, jpegs, side, plan)
        if not args.no_openvino:
            results["openvino"] = sweep_openvino(model_dir, onnx_side, plan)
    workdir = Path(tempfile.mkdtemp(prefix="clipgate-bench-"))
    log(f"starting the servers; their logs are in {workdir}")
    with contextlib.ExitStack() as stack:

        def start(name: str, argv_for: Any, env: dict[str, str] | None = None) -> servers.ServerProcess:
            port = servers.free_port()
            log_path = workdir / f"{name}.log"
            server = stack.enter_context(servers.ServerProcess(name, argv_for(port), port, log_path, env=env))
            log(f"{name} ready in {server.ready_s:.1f} s")
            return server

        gate = start(
            "clipgate", lambda port: servers.clipgate_argv(args.model, port, device=args.device, dtype="float32")
        )
        naive = None if args.no_naive else start("naive", lambda port: servers.naive_argv(model_dir, port))
        unmetered = start(  # the same server with metrics off: what the metrics cost
            "clipgate-no-metrics",
            lambda port: servers.clipgate_argv(args.model, port, device=args.device, dtype="float32"),
            env={"CLIPGATE_SERVER_METRICS": "0"},
        )
        reduced = None
        if not args.no_reduced and side.reduced is not None:
            reduced = start(
                f"clipgate-{reduced_name}",
                lambda port: servers.clipgate_argv(args.model, port, device=args.device, dtype=reduced_name),
            )
        onnx_server = None
        if onnx_side is not None:
            onnx_server = start(
                "clipgate-onnx",
                lambda port: servers.clipgate_argv(args.model, port, device=args.device, dtype="float32"),
                env={"CLIPGATE_MODEL_BACKEND": "onnx"},
            )
        onnx = None if onnx_side is None or onnx_server is None else (onnx_side, onnx_server)
        started_servers = (gate, naive, reduced, unmetered, onnx_server)
        results["ready_s"] = {s.name: round(s.ready_s, 2) for s in started_servers if s is not None}
        results["rounds"] = []
        longest_round_s = 0.0
        for n in range(1, rounds + 1):
            elapsed = time.perf_counter() - started
            if n > 1 and over_budget(elapsed, longest_round_s, plan, args.budget_s):
                note = (
                    f"stopped after {n - 1} of {rounds} rounds: another ({longest_round_s:.0f} s) and the soak "
                    f"could take the run past its {args.budget_s:.0f} s budget"
                )
                log(f"note: {note}")
                notes.append(note)
                break
            results["rounds"].append(one_round(n, side, gate, naive, reduced, reqs, plan, unmetered, onnx))
            longest_round_s = max(longest_round_s, time.perf_counter() - started - elapsed)
        if onnx_server is not None:  # both have served the same rounds
            results["peak_rss_after_rounds_mib"] = {
                name: round(servers.memory_kib(server.pid)["VmHWM"] / 1024, 1)
                for name, server in (("torch", gate), ("onnx", onnx_server))
            }
        for other in (naive, reduced, unmetered, onnx_server):  # the soak has the machine to itself
            if other is not None:
                other.__exit__()
        results["clipgate_soak"] = run_soak(gate, reqs, plan)
    rows = verdict(results, weights_mib)
    results["verdict"] = [
        {
            "measure": r.what,
            "ours": r.ours,
            "versus": r.versus,
            "ratio": round(r.ratio, 4),
            "target": r.target,
            "ok": r.ok,
            "why": list(r.why),
        }
        for r in rows
    ]
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    print(summary_text(results))
    print(table(rows))
    print(f"\nfigures in {args.out}; {results['elapsed_s']:.0f} s in all")
    return 0


def onnx_summary(r: dict[str, Any]) -> list[str]:
    o = r.get("onnx")
    if o is None:
        return []
    by_batch = ", ".join
    p, q = o["parity_to_torch"], o["int8"]
    made = ", ".join(
        f"{'float32' if kind == 'none' else kind} "
        + ("cached" if o[f"export_{kind}"]["cached"] else f"made in {o[f'export_{kind}']['seconds']:.0f} s")
        for kind in ("none", "int8")
    )
    lines = [
        f"ONNX export (float32 / int8): {made}, in {o['export_none']['folder']}",
        "bare ONNX float32, images/s by batch: "
        + by_batch(f"{x['batch']}: {x['per_s']:.1f}" for x in o["float32_sweep"]["images"]),
        "bare ONNX float32, short texts/s by batch: "
        + by_batch(f"{x['batch']}: {x['per_s']:.0f}" for x in o["float32_sweep"]["short_texts"]),
        f"ONNX to torch: images min cosine {p['images_min_cosine']:.7f}, max |diff| {p['images_max_abs']:.1e}; "
        f"texts min cosine {p['texts_min_cosine']:.7f}, max |diff| {p['texts_max_abs']:.1e}",
        f"bare ONNX int8: images/s {q['images'][0]['per_s']:.1f} at batch {q['images'][0]['batch']}, short texts/s "
        f"{q['short_texts'][0]['per_s']:.0f} at batch {q['short_texts'][0]['batch']}; min cosine to float32: images "
        f"{q['images_min_cosine_vs_float32']:.5f}, texts {q['texts_min_cosine_vs_float32']:.5f} (probe set: "
        + ", ".join(f"{k} {v:.5f}" for k, v in sorted(q["probe_parity"].items()))
        + f"; floor {q['floor']})",
    ]
    ov = r.get("openvino")
    if ov is not None:
        line = (
            f"bare OpenVINO beside ONNX Runtime float32: images/s at batch {ov['image_batch']}: ONNX Runtime "
            f"{ov['onnxruntime_images_per_s']:.1f}, OpenVINO float32 {ov['f32_images_per_s']:.1f}"
        )
        if ov["native_bf16"]:
            line += (
                f", bfloat16 {ov['bf16_images_per_s']:.1f}; short texts/s at batch {ov['text_batch']}: ONNX Runtime "
                f"{ov['onnxruntime_short_texts_per_s']:.0f}, OpenVINO bfloat16 {ov['bf16_short_texts_per_s']:.0f}; "
                f"bfloat16 min cosine to float32: images {ov['bf16_images_min_cosine_vs_float32']:.5f}, texts "
                f"{ov['bf16_texts_min_cosine_vs_float32']:.5f}"
            )
        else:
            line += "; no native bfloat16 on this CPU, so no OpenVINO bfloat16 figures"
        lines.append(line)
    if "peak_rss_after_rounds_mib" in r:
        peak = r["peak_rss_after_rounds_mib"]
        lines.append(f"peak RSS after the rounds, MiB: torch server {peak['torch']}, ONNX server {peak['onnx']}")
    return lines


def summary_text(r: dict[str, Any]) -> str:
    b = r["bare"]
    f32 = b["float32_sweep"]
    by_batch = ", ".join
    lines = [
        f"clipgate benchmark: {r['model']} on {r['device']} ({r['machine']['cpus']} CPUs, "
        f"{r['machine']['processor'] or r['machine']['platform']}), {r['concurrency']} clients, "
        f"1024x768 JPEGs of {r['image_bytes_mean'] / 1024:.0f} KiB, {len(r['rounds'])} rounds",
        "bare float32, images/s by batch: " + by_batch(f"{p['batch']}: {p['per_s']:.1f}" for p in f32["images"]),
        "bare float32, short texts/s by batch: "
        + by_batch(f"{p['batch']}: {p['per_s']:.0f}" for p in f32["short_texts"]),
        "bare float32, 77-token texts/s by batch: "
        + by_batch(f"{p['batch']}: {p['per_s']:.1f}" for p in f32["long_texts"]),
    ]
    red = b.get(f"{b['reduced_dtype']}_sweep")
    if red is not None:
        lines.append(
            f"bare {b['reduced_dtype']}, images/s by batch: "
            + by_batch(f"{p['batch']}: {p['per_s']:.1f}" for p in red["images"])
            + f"; min cosine to float32 {red['min_cosine_vs_float32']:.6f}"
        )
    lines += [
        "decode + preprocess one JPEG, ms: ours {ours_reduced} (reduced decode), {ours_full} (full); "
        "transformers' processor {transformers_processor}".format(**b["decode_ms"]),
        "min cosine to transformers' processor: reduced decode "
        f"{b['parity']['reduced_decode_min_cosine']:.7f}, full decode {b['parity']['full_decode_min_cosine']:.7f}",
        *onnx_summary(r),
        *(f"note: {note}" for note in r["notes"]),
        "",
        f"{'phase (medians over the rounds)':<28} {'ok/s':>8} {'p50 ms':>8} {'p99 ms':>8}  "
        "outcomes (figures count good 200s only)",
    ]
    rounds = r["rounds"]
    for key, value in rounds[0].items():
        if not isinstance(value, dict):
            continue
        runs = [x[key] for x in rounds]
        outcomes: dict[str, int] = {}
        for run in runs:
            counts = {**run["statuses"], **run["failures"]}
            if run["bad_bodies"]:
                counts["200 bad body"] = run["bad_bodies"]
                counts["200"] = counts["200"] - run["bad_bodies"]
            for what, count in counts.items():
                outcomes[what] = outcomes.get(what, 0) + count
        lines.append(
            f"{key:<28} {_median([x['per_s'] for x in runs]):>8.1f} {_median([x['p50_ms'] for x in runs]):>8.1f} "
            f"{_median([x['p99_ms'] for x in runs]):>8.1f}  {outcomes}"
        )
    soak = r["clipgate_soak"]
    lines.append(
        f"\nclipgate resident memory over {soak['load']['answered']} mixed requests: "
        f"before {soak['rss_before_mib']} MiB, "
        f"at 1/4 {soak['rss_at_quarter_mib']}, after {soak['rss_after_mib']}, peak {soak['peak_rss_mib']} "
        f"(weights {r['weights_mib']} MiB); statuses {soak['load']['statuses']}, p99 {soak['load']['p99_ms']} ms"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
