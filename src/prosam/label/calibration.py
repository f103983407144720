"""Calibrating the empty-target rule of ``prosam label`` on annotated validation targets.

:func:`prosam.label.job.predict_classes` keeps a class's mask when

    ``area > 0 and area >= min_area_fraction * pixels and score >= score_threshold``

(:func:`is_kept` is the same test) and drops it otherwise, so a target without the class
should end with no mask. This module chooses the pair ``(score_threshold,
min_area_fraction)`` from a grid, on records of the method's raw (unfiltered) predictions
on *positive* targets (the class is present; the record holds the raw mask's IoU with the
ground truth) and *negative* targets (the class is absent).

The criterion (:func:`target_utility`, averaged by :func:`evaluate_point`) is the expected
per-target IoU when an empty prediction on an empty target counts as perfect:

- a negative target scores 1 if its mask is dropped, else 0;
- a positive target scores its IoU if its mask is kept, else 0.

Its mean over all targets is the *utility*. It depends on the share of negatives in the
records (one per positive in ``benchmarks/empty_target_calibration.py``): with more empty
targets in the real data, higher thresholds pay off more. :func:`grid_search` returns the
grid point of highest utility, ties going to the lower score threshold, then the lower
area fraction (the more permissive rule). The balanced accuracy of the present / absent
decision (mean of the share of positives kept and the share of negatives dropped) is
reported alongside; it ignores mask quality. :func:`presence_auc` says how well a signal
separates present from absent at all, whatever the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from prosam.errors import InputError

SCORE_KEY = "score"
"""The key of the method's own score (SAM's predicted IoU), the one ``prosam label`` filters on."""

DEFAULT_SCORE_GRID: tuple[float, ...] = tuple(round(0.01 * i, 2) for i in range(101))
"""Score thresholds 0.00, 0.01, ..., 1.00 (SAM's predicted IoU lies in about [0, 1])."""

DEFAULT_AREA_GRID: tuple[float, ...] = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
"""Minimum mask area fractions, 0 (any non-empty mask) to 10% of the image."""

_TIE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class TargetRecord:
    """One raw prediction of a method on one target.

    Args:
        positive: the target shows the class (else it is an empty target).
        scores: the prediction's scores, higher = more confident; :data:`SCORE_KEY` is the
            method's own score, other keys are extra signals (e.g. ``similarity_max``).
        area: pixels of the raw mask at the target's original size.
        pixels: pixels of the target image (height x width).
        iou: the raw mask's IoU with the ground truth (positives only; ``None`` for
            negatives).
        info: anything to carry along (keys, class), not used here.
    """

    positive: bool
    scores: Mapping[str, float]
    area: int
    pixels: int
    iou: float | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def area_fraction(self) -> float:
        """The raw mask's share of the image."""
        return self.area / self.pixels

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (with ``area_fraction``)."""
        return {
            "positive": self.positive,
            "scores": dict(self.scores),
            "area": self.area,
            "pixels": self.pixels,
            "area_fraction": self.area_fraction,
            "iou": self.iou,
            **dict(self.info),
        }


def is_kept(
    record: TargetRecord,
    score_threshold: float,
    min_area_fraction: float,
    score_key: str = SCORE_KEY,
) -> bool:
    """Whether ``prosam label``'s rule keeps this prediction (the test of ``predict_classes``)."""
    area = record.area
    return (
        area > 0
        and area >= min_area_fraction * record.pixels
        and record.scores[score_key] >= score_threshold
    )


def target_utility(record: TargetRecord, kept: bool) -> float:
    """The criterion on one target: negatives 1 when dropped else 0; positives IoU when kept
    else 0."""
    if record.positive:
        assert record.iou is not None
        return float(record.iou) if kept else 0.0
    return 0.0 if kept else 1.0


@dataclass(frozen=True)
class OperatingPoint:
    """The criterion and the present / absent rates of one ``(score, area)`` threshold pair.

    ``utility``: mean :func:`target_utility` over all targets (the criterion);
    ``positive_utility``: its mean over positives (the mean IoU, dropped masks counting 0);
    ``kept_positive_rate``: share of positives kept (true positive rate of "present");
    ``dropped_negative_rate``: share of negatives dropped (true negative rate);
    ``balanced_accuracy``: the mean of those two rates.
    """

    score_key: str
    score_threshold: float
    min_area_fraction: float
    utility: float
    balanced_accuracy: float
    kept_positive_rate: float
    dropped_negative_rate: float
    positive_utility: float
    positives: int
    negatives: int

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class CalibrationResult:
    """The chosen point of a grid search and every point it evaluated (grid order)."""

    best: OperatingPoint
    grid: list[OperatingPoint]

    def as_dict(self, *, with_grid: bool = True) -> dict[str, Any]:
        """A JSON-ready dict (the full grid only with ``with_grid``)."""
        out: dict[str, Any] = {"best": self.best.as_dict()}
        if with_grid:
            out["grid"] = [p.as_dict() for p in self.grid]
        return out


def check_records(records: Sequence[TargetRecord], score_key: str = SCORE_KEY) -> None:
    """Refuse records calibration cannot use.

    Raises:
        InputError: no records, no positive or no negative, a record without a finite
            ``score_key`` score, a bad area / pixel count, or a positive without an IoU in
            [0, 1].
    """
    if not records:
        raise InputError("calibration needs records; got none")
    positives = sum(r.positive for r in records)
    if positives == 0 or positives == len(records):
        raise InputError(
            f"calibration needs positive and negative targets; got {positives} positive(s) "
            f"and {len(records) - positives} negative(s)"
        )
    for i, r in enumerate(records):
        score = r.scores.get(score_key)
        if score is None or not math.isfinite(score):
            raise InputError(f"record {i}: no finite {score_key!r} score ({score!r})")
        if r.pixels <= 0 or not 0 <= r.area <= r.pixels:
            raise InputError(f"record {i}: area {r.area} of {r.pixels} pixels is impossible")
        if r.positive and (r.iou is None or not 0.0 <= r.iou <= 1.0):
            raise InputError(f"record {i}: a positive target needs an IoU in [0, 1], got {r.iou}")


def _check_grid(values: Iterable[float], what: str) -> list[float]:
    grid = sorted({float(v) for v in values})
    if not grid:
        raise InputError(f"the {what} grid is empty")
    if any(math.isnan(v) for v in grid):
        raise InputError(f"the {what} grid holds NaN")
    return grid


def _point(
    records: Sequence[TargetRecord],
    score_threshold: float,
    min_area_fraction: float,
    score_key: str,
) -> OperatingPoint:
    pos_kept = neg_dropped = pos = 0
    pos_utility = total = 0.0
    for r in records:
        kept = is_kept(r, score_threshold, min_area_fraction, score_key)
        u = target_utility(r, kept)
        total += u
        if r.positive:
            pos += 1
            pos_kept += kept
            pos_utility += u
        else:
            neg_dropped += not kept
    neg = len(records) - pos
    tpr, tnr = pos_kept / pos, neg_dropped / neg
    return OperatingPoint(
        score_key=score_key,
        score_threshold=float(score_threshold),
        min_area_fraction=float(min_area_fraction),
        utility=total / len(records),
        balanced_accuracy=(tpr + tnr) / 2,
        kept_positive_rate=tpr,
        dropped_negative_rate=tnr,
        positive_utility=pos_utility / pos,
        positives=pos,
        negatives=neg,
    )


def evaluate_point(
    records: Sequence[TargetRecord],
    score_threshold: float,
    min_area_fraction: float,
    score_key: str = SCORE_KEY,
) -> OperatingPoint:
    """The criterion and rates of one threshold pair on ``records`` (see the module doc).

    Raises:
        InputError: as :func:`check_records`.
    """
    check_records(records, score_key)
    return _point(records, score_threshold, min_area_fraction, score_key)


def grid_search(
    records: Sequence[TargetRecord],
    score_thresholds: Iterable[float] = DEFAULT_SCORE_GRID,
    min_area_fractions: Iterable[float] = DEFAULT_AREA_GRID,
    score_key: str = SCORE_KEY,
) -> CalibrationResult:
    """The threshold pair of highest utility on ``records``.

    Every pair of the two grids is evaluated (score thresholds ascending, then area
    fractions ascending, whatever the order given); among pairs whose utility is within
    1e-12 of the best, the first wins: the lowest score threshold, then the lowest area
    fraction.

    Raises:
        InputError: as :func:`check_records`, or an empty grid or one holding NaN.
    """
    check_records(records, score_key)
    scores = _check_grid(score_thresholds, "score threshold")
    areas = _check_grid(min_area_fractions, "min area fraction")
    grid = [_point(records, s, a, score_key) for s in scores for a in areas]
    best = grid[0]
    for p in grid[1:]:
        if p.utility > best.utility + _TIE_TOLERANCE:
            best = p
    return CalibrationResult(best, grid)


def quantile_grid(values: Iterable[float], n: int = 101) -> tuple[float, ...]:
    """``n`` evenly spaced quantiles of ``values`` (distinct, sorted) and ``-inf`` (keep all):
    a score grid for a signal whose range is not known in advance.

    Raises:
        InputError: no finite value, or ``n < 2``.
    """
    finite = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        raise InputError("no finite value to build a grid from")
    if n < 2:
        raise InputError(f"a quantile grid needs n >= 2, got {n}")
    q = np.quantile(finite, np.linspace(0.0, 1.0, n))
    return (-math.inf, *sorted({float(v) for v in q}))


def presence_auc(positives: Iterable[float], negatives: Iterable[float]) -> float:
    """ROC AUC of a signal for "the class is present": the probability that a random
    positive's value exceeds a random negative's (ties count half). 0.5 = no information.

    Raises:
        InputError: no positive or no negative value, or a NaN.
    """
    pos = np.asarray(list(positives), dtype=np.float64)
    neg = np.asarray(list(negatives), dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise InputError(f"an AUC needs positives and negatives; got {pos.size} and {neg.size}")
    if np.isnan(pos).any() or np.isnan(neg).any():
        raise InputError("an AUC needs values that are not NaN")
    neg = np.sort(neg)
    below = np.searchsorted(neg, pos, side="left")
    not_above = np.searchsorted(neg, pos, side="right")
    return float((below + not_above).sum() / (2 * pos.size * neg.size))


def balanced_threshold(positives: Iterable[float], negatives: Iterable[float]) -> float:
    """The presence threshold of highest balanced accuracy (share of positives at or above
    it plus share of negatives below it, over 2), among the observed values; ties go to the
    lowest threshold. It assumes nothing about how often the class is absent, nor about
    mask quality (unlike :func:`grid_search`'s utility).

    Raises:
        InputError: no positive or no negative value, or a NaN.
    """
    pos = np.sort(np.asarray(list(positives), dtype=np.float64))
    neg = np.sort(np.asarray(list(negatives), dtype=np.float64))
    if pos.size == 0 or neg.size == 0:
        raise InputError(
            f"a threshold needs positives and negatives; got {pos.size} and {neg.size}"
        )
    if np.isnan(pos).any() or np.isnan(neg).any():
        raise InputError("a threshold needs values that are not NaN")
    candidates = np.unique(np.concatenate([pos, neg]))
    kept = 1.0 - np.searchsorted(pos, candidates, side="left") / pos.size
    dropped = np.searchsorted(neg, candidates, side="left") / neg.size
    return float(candidates[int(np.argmax(kept + dropped))])
