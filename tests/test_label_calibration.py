from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prosam.errors import InputError
from prosam.label.calibration import (
    DEFAULT_AREA_GRID,
    DEFAULT_SCORE_GRID,
    TargetRecord,
    evaluate_point,
    grid_search,
    is_kept,
    presence_auc,
    quantile_grid,
    target_utility,
)
from prosam.label.job import predict_classes
from prosam.methods.base import MethodOutput, Target
from prosam.sam import Predictor

PIXELS = 10_000


def pos(score: float, iou: float, area: int = 1000, **extra: float) -> TargetRecord:
    return TargetRecord(True, {"score": score, **extra}, area, PIXELS, iou)


def neg(score: float, area: int = 1000, **extra: float) -> TargetRecord:
    return TargetRecord(False, {"score": score, **extra}, area, PIXELS)


def test_target_utility():
    assert target_utility(pos(0.9, 0.7), kept=True) == 0.7
    assert target_utility(pos(0.9, 0.7), kept=False) == 0.0
    assert target_utility(neg(0.9), kept=True) == 0.0
    assert target_utility(neg(0.9), kept=False) == 1.0


def test_is_kept_follows_the_label_rule():
    r = pos(0.5, 0.5, area=10)  # 0.1% of the image
    assert is_kept(r, 0.5, 1e-3)  # both bounds inclusive
    assert not is_kept(r, 0.51, 1e-3)
    assert not is_kept(r, 0.0, 1.1e-3)
    empty = pos(0.99, 0.0, area=0)
    assert not is_kept(empty, 0.0, 0.0)  # an empty mask is never kept
    assert is_kept(neg(0.2, area=1), -math.inf, 0.0)


def test_optimal_score_threshold_by_hand():
    # Positives at scores 0.9 / 0.8 / 0.6 with IoU 0.8 / 0.6 / 0.1; negatives at 0.7 / 0.5.
    # Utility (mean over 5 targets) as the threshold t rises:
    #   t <= 0.5:       0.8 + 0.6 + 0.1 + 0 + 0      = 1.5
    #   0.5 < t <= 0.6: 0.8 + 0.6 + 0.1 + 0 + 1      = 2.5
    #   0.6 < t <= 0.7: 0.8 + 0.6 + 0   + 0 + 1      = 2.4
    #   0.7 < t <= 0.8: 0.8 + 0.6 + 0   + 1 + 1      = 3.4   <- best
    #   0.8 < t <= 0.9: 0.8 + 0     + 0 + 1 + 1      = 2.8
    records = [pos(0.9, 0.8), pos(0.8, 0.6), pos(0.6, 0.1), neg(0.7), neg(0.5)]
    result = grid_search(records, [0.0, 0.5, 0.55, 0.65, 0.75, 0.85, 0.95], [0.0])
    best = result.best
    assert best.score_threshold == 0.75
    assert best.utility == pytest.approx(3.4 / 5)
    assert best.kept_positive_rate == pytest.approx(2 / 3)
    assert best.dropped_negative_rate == 1.0
    assert best.balanced_accuracy == pytest.approx((2 / 3 + 1) / 2)
    assert best.positive_utility == pytest.approx(1.4 / 3)
    assert (best.positives, best.negatives) == (3, 2)
    assert len(result.grid) == 7
    assert [p.utility for p in result.grid] == pytest.approx(
        [1.5 / 5, 1.5 / 5, 2.5 / 5, 2.4 / 5, 3.4 / 5, 2.8 / 5, 2 / 5]
    )


def test_optimal_area_threshold_by_hand():
    # Scores do not separate; the negatives' masks are specks (0.5% and 1% of the image).
    records = [pos(0.9, 0.5, area=2000), pos(0.9, 0.9, area=500), neg(0.9, 50), neg(0.9, 100)]
    best = grid_search(records, [0.0], DEFAULT_AREA_GRID).best
    assert best.min_area_fraction == 3e-2  # the lowest fraction above 1% and below 5%
    assert best.utility == pytest.approx((0.5 + 0.9 + 2) / 4)


def test_ties_go_to_the_lower_thresholds():
    # Any score threshold in (0.3, 0.8] and any area fraction up to 10% separate perfectly.
    records = [pos(0.9, 0.6), neg(0.3)]
    result = grid_search(records, reversed(DEFAULT_SCORE_GRID), reversed(DEFAULT_AREA_GRID))
    assert result.best.score_threshold == 0.31
    assert result.best.min_area_fraction == 0.0
    assert result.best.utility == pytest.approx(0.8)
    # The grid is evaluated in ascending order whatever the order given.
    assert result.grid[0].score_threshold == 0.0
    assert result.grid[0].min_area_fraction == 0.0


def test_keeping_everything_and_dropping_everything():
    records = [pos(0.9, 0.6), pos(0.4, 0.2), neg(0.3), neg(0.95)]
    keep_all = evaluate_point(records, -math.inf, 0.0)
    assert keep_all.utility == pytest.approx(0.8 / 4)
    assert keep_all.balanced_accuracy == 0.5
    drop_all = evaluate_point(records, 2.0, 0.0)
    assert drop_all.utility == pytest.approx(0.5)
    assert drop_all.balanced_accuracy == 0.5


def test_another_score_key():
    records = [pos(0.5, 0.7, sim=0.8), neg(0.9, sim=0.4)]
    assert grid_search(records, [0.0, 0.6], [0.0]).best.utility == pytest.approx(0.7 / 2)
    best = grid_search(records, [0.0, 0.6], [0.0], score_key="sim").best
    assert (best.score_key, best.score_threshold, best.utility) == ("sim", 0.6, 0.85)


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([], "none"),
        ([pos(0.9, 0.5), pos(0.1, 0.2)], "0 negative"),
        ([neg(0.9)], "0 positive"),
        ([pos(0.9, None), neg(0.1)], "IoU"),  # type: ignore[arg-type]
        ([pos(0.9, 1.5), neg(0.1)], "IoU"),
        ([pos(math.nan, 0.5), neg(0.1)], "finite"),
        ([pos(0.9, 0.5), TargetRecord(False, {}, 3, PIXELS)], "score"),
        ([pos(0.9, 0.5), TargetRecord(False, {"score": 0.1}, 3, 0)], "pixels"),
    ],
)
def test_refuses_unusable_records(records, message):
    with pytest.raises(InputError, match=message):
        grid_search(records)
    with pytest.raises(InputError, match=message):
        evaluate_point(records, 0.0, 0.0)


def test_refuses_empty_grids():
    records = [pos(0.9, 0.5), neg(0.1)]
    with pytest.raises(InputError, match="score threshold grid is empty"):
        grid_search(records, [], [0.0])
    with pytest.raises(InputError, match="area fraction grid is empty"):
        grid_search(records, [0.0], [])
    with pytest.raises(InputError, match="NaN"):
        grid_search(records, [math.nan], [0.0])


def test_quantile_grid():
    grid = quantile_grid([0.3, 0.1, math.nan, 0.2], n=3)
    assert grid == (-math.inf, 0.1, 0.2, 0.3)
    assert quantile_grid([0.5, 0.5], n=5) == (-math.inf, 0.5)
    with pytest.raises(InputError):
        quantile_grid([math.nan])
    with pytest.raises(InputError):
        quantile_grid([0.1], n=1)


def test_presence_auc():
    assert presence_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert presence_auc([0.1], [0.9, 0.8]) == 0.0
    assert presence_auc([0.5, 0.5], [0.5]) == 0.5
    # 0.9 beats both negatives, 0.5 ties 0.5 and beats 0.3 (1.5), 0.1 beats none: 3.5 / 6
    assert presence_auc([0.9, 0.5, 0.1], [0.5, 0.3]) == pytest.approx(3.5 / 6)
    assert presence_auc([-math.inf, 1.0], [0.0]) == 0.5
    with pytest.raises(InputError):
        presence_auc([], [0.1])
    with pytest.raises(InputError):
        presence_auc([0.1], [math.nan])


def test_record_dict():
    d = TargetRecord(True, {"score": 0.5}, 25, 100, 0.4, {"class_id": 3}).as_dict()
    assert d["area_fraction"] == 0.25
    assert d["class_id"] == 3
    assert d["scores"] == {"score": 0.5}


class _Blob:
    """A stub method: a square of positive logits on the low-res grid, a fixed score."""

    name = "blob"

    def __init__(self, side: int, score: float) -> None:
        self.side, self.score = side, score

    def fit(self, references) -> None:
        pass

    def predict(self, target: Target) -> MethodOutput:
        s = target.embedded.geometry.image_size // 4
        logits = torch.full((1, s, s), -8.0)
        logits[:, : self.side, : self.side] = 8.0
        return MethodOutput(logits, self.score)


def test_is_kept_agrees_with_predict_classes(tiny_sam):
    predictor = Predictor(tiny_sam)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    embedded = predictor.embed(image)
    methods = {"a": _Blob(0, 0.9), "b": _Blob(1, 0.4), "c": _Blob(3, 0.7), "d": _Blob(8, 0.2)}
    raw = predict_classes(
        methods, predictor, image, embedded=embedded, score_threshold=-math.inf, min_area_fraction=0
    )
    records = {
        p.class_name: TargetRecord(False, {"score": p.score}, int(p.mask.sum()), 48 * 64)
        for p in raw
    }
    areas = sorted({r.area for r in records.values()})
    assert areas[0] == 0 and len(areas) == 4
    fractions = [0.0, *(a / (48 * 64) for a in areas[1:]), 0.5]
    for threshold in (-math.inf, 0.2, 0.5, 0.9):
        for fraction in fractions:
            preds = predict_classes(
                methods,
                predictor,
                image,
                embedded=embedded,
                score_threshold=threshold,
                min_area_fraction=fraction,
            )
            for p in preds:
                assert p.kept == is_kept(records[p.class_name], threshold, fraction)


def test_balanced_threshold_by_hand():
    from prosam.label.calibration import balanced_threshold

    # at 0.6: positives 0.6, 0.9 kept (2/3), negatives 0.1, 0.2, 0.5 dropped (3/3)
    assert balanced_threshold([0.3, 0.6, 0.9], [0.1, 0.2, 0.5]) == 0.6
    assert balanced_threshold([0.8, 0.9], [0.1, 0.2]) == 0.8  # the lowest observed separator
    assert balanced_threshold([0.5], [0.5]) == 0.5  # nothing separates them: keep everything
    with pytest.raises(ValueError):
        balanced_threshold([], [0.1])
    with pytest.raises(ValueError):
        balanced_threshold([float("nan")], [0.1])
