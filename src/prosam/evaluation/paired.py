"""Two evaluations of the same episodes compared, with a bootstrap over target images.

Episodes that share a target image are not independent (the wider validation list draws
several per image), so the interval resamples target images, each with all its episodes,
and recomputes the FSS mIoU (per class, intersection and union pooled over its episodes,
then the mean over classes) and the mean per-episode IoU of both runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prosam.errors import InputError


@dataclass(frozen=True)
class PairedComparison:
    """Run B minus run A: FSS mIoU and mean per-episode IoU, their 95 % bootstrap
    intervals over target images, and how many episodes got better or worse."""

    miou_a: float
    miou_b: float
    miou_delta_interval: tuple[float, float]
    episode_delta: float
    episode_delta_interval: tuple[float, float]
    better: int
    worse: int
    episodes: int
    targets: int


def fss_miou(
    class_ids: np.ndarray, intersection: np.ndarray, union: np.ndarray, weights: np.ndarray
) -> float:
    """FSS mIoU of episodes counted ``weights`` times each: per class, summed intersection
    over summed union; the mean over classes with at least one counted episode."""
    ious = []
    for c in np.unique(class_ids):
        sel = class_ids == c
        w = weights[sel]
        if w.sum() == 0:
            continue
        u = float((union[sel] * w).sum())
        ious.append(float((intersection[sel] * w).sum()) / u if u > 0 else 1.0)
    return float(np.mean(ious)) if ious else float("nan")


def _columns(records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    try:
        return {
            "target": np.array([str(r["target"]) for r in records]),
            "class_id": np.array([int(r["class_id"]) for r in records]),
            "iou": np.array([float(r["iou"]) for r in records]),
            "intersection": np.array([float(r["intersection"]) for r in records]),
            "union": np.array([float(r["union"]) for r in records]),
        }
    except KeyError as e:
        raise InputError(
            f"an episode record lacks {e.args[0]!r} (reports from before per-episode "
            "intersection and union cannot be compared)"
        ) from None


def compare_runs(
    a: Sequence[Mapping[str, Any]],
    b: Sequence[Mapping[str, Any]],
    *,
    resamples: int = 2000,
    seed: int = 0,
    tolerance: float = 1e-9,
) -> PairedComparison:
    """Compare two runs' per-episode records (``prosam eval fss --json``'s ``episodes``),
    which must list the same episodes in the same order."""
    if len(a) != len(b) or not a:
        raise InputError(f"the runs must list the same episodes, got {len(a)} and {len(b)}")
    ca, cb = _columns(a), _columns(b)
    if (ca["target"] != cb["target"]).any() or (ca["class_id"] != cb["class_id"]).any():
        raise InputError("the runs list different episodes (targets or classes differ)")
    targets, index = np.unique(ca["target"], return_inverse=True)
    ones = np.ones(len(a))
    delta = cb["iou"] - ca["iou"]

    def miou(cols: dict[str, np.ndarray], w: np.ndarray) -> float:
        return fss_miou(cols["class_id"], cols["intersection"], cols["union"], w)

    rng = np.random.default_rng(seed)
    miou_deltas, episode_deltas = [], []
    for _ in range(resamples):
        counts = np.bincount(rng.integers(0, len(targets), len(targets)), minlength=len(targets))
        w = counts[index].astype(np.float64)
        miou_deltas.append(miou(cb, w) - miou(ca, w))
        episode_deltas.append(float((delta * w).sum() / w.sum()))

    def interval(values: list[float]) -> tuple[float, float]:
        lo, hi = np.percentile(values, [2.5, 97.5])
        return float(lo), float(hi)

    return PairedComparison(
        miou_a=miou(ca, ones),
        miou_b=miou(cb, ones),
        miou_delta_interval=interval(miou_deltas),
        episode_delta=float(delta.mean()),
        episode_delta_interval=interval(episode_deltas),
        better=int((delta > tolerance).sum()),
        worse=int((delta < -tolerance).sum()),
        episodes=len(a),
        targets=len(targets),
    )
