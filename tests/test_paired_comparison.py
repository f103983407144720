"""The paired comparison of two evaluations, with its bootstrap over target images."""

from __future__ import annotations

import numpy as np
import pytest

from prosam.errors import InputError
from prosam.evaluation.paired import compare_runs, fss_miou


def _records(rows):
    return [
        {"target": t, "class_id": c, "iou": i / u, "intersection": i, "union": u}
        for t, c, i, u in rows
    ]


def test_fss_miou_pools_per_class_then_averages_by_hand():
    ids = np.array([1, 1, 2])
    inter, union = np.array([1.0, 3.0, 2.0]), np.array([2.0, 6.0, 8.0])
    assert fss_miou(ids, inter, union, np.ones(3)) == pytest.approx((4 / 8 + 2 / 8) / 2)
    assert fss_miou(ids, inter, union, np.array([2.0, 0.0, 1.0])) == pytest.approx(
        (2 / 4 + 2 / 8) / 2
    )


def test_identical_runs_differ_by_nothing_and_a_better_run_is_seen():
    a = _records([("x", 1, 1, 4), ("x", 2, 2, 4), ("y", 1, 0, 4), ("z", 2, 1, 2)])
    same = compare_runs(a, a, resamples=50)
    assert same.miou_a == same.miou_b
    assert same.miou_delta_interval == (0.0, 0.0) and same.episode_delta == 0.0
    assert (same.better, same.worse, same.episodes, same.targets) == (0, 0, 4, 3)
    b = _records([("x", 1, 3, 4), ("x", 2, 2, 4), ("y", 1, 1, 4), ("z", 2, 1, 2)])
    up = compare_runs(a, b, resamples=200)
    assert (up.better, up.worse) == (2, 0)
    assert up.episode_delta == pytest.approx((0.5 + 0.25) / 4)
    assert up.miou_b - up.miou_a == pytest.approx((4 / 8 - 1 / 8) / 2)
    assert 0.0 <= up.miou_delta_interval[0] <= up.miou_delta_interval[1]


def test_runs_of_different_episodes_are_refused():
    a = _records([("x", 1, 1, 4)])
    with pytest.raises(InputError, match="different episodes"):
        compare_runs(a, _records([("y", 1, 1, 4)]))
    with pytest.raises(InputError, match="same episodes"):
        compare_runs(a, a + a)
    with pytest.raises(InputError, match="intersection"):
        compare_runs([{"target": "x", "class_id": 1, "iou": 0.5}], a)
