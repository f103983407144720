"""Boxes: tight boxes, IoU, noisy boxes and boxes of controlled IoU."""

from __future__ import annotations

import numpy as np
import pytest

from prosam.errors import InputError
from prosam.prompts import box_iou, box_to_mask, box_with_iou_in_range, mask_to_box, noisy_box


def _mask() -> np.ndarray:
    m = np.zeros((40, 50), dtype=bool)
    m[10:21, 5:31] = True  # rows 10..20, cols 5..30
    m[25, 40] = True
    return m


def test_mask_to_box_hand_case() -> None:
    assert mask_to_box(_mask()) == (5, 10, 41, 26)
    single = np.zeros((5, 5), dtype=bool)
    single[3, 1] = True
    assert mask_to_box(single) == (1, 3, 2, 4)
    x0, y0, x1, y1 = mask_to_box(_mask())
    np.testing.assert_array_equal(
        box_to_mask((x0, y0, x1, y1), (40, 50)).sum(), (x1 - x0) * (y1 - y0)
    )


def test_mask_to_box_empty_raises() -> None:
    with pytest.raises(InputError, match="empty"):
        mask_to_box(np.zeros((4, 4), dtype=bool))


def test_box_iou_hand_cases() -> None:
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (2, 2, 4, 4)) == pytest.approx(4 / 100)
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges
    assert box_iou((0, 0, 1, 1), (3, 3, 4, 4)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    many = box_iou(np.array([[0, 0, 10, 10], [5, 0, 15, 10]]), np.array([0, 0, 10, 10]))
    np.testing.assert_allclose(many, [1.0, 1 / 3])


def test_noisy_box_deterministic_and_clipped() -> None:
    box = (5, 10, 41, 26)
    a = noisy_box(box, 3, image_size=(40, 50))
    assert a == noisy_box(box, np.random.default_rng(3), image_size=(40, 50))
    assert a != noisy_box(box, 4, image_size=(40, 50))
    rng = np.random.default_rng(0)
    for _ in range(200):
        x0, y0, x1, y1 = noisy_box(box, rng, scale=0.4, image_size=(40, 50))
        assert 0 <= x0 < x1 <= 50 and 0 <= y0 < y1 <= 40
        assert x1 - x0 >= 1 and y1 - y0 >= 1
        # Each coordinate moves by at most scale * side (before clipping only tightens it).
        assert abs(x0 - 5) <= 0.4 * 36 + 1e-9 and abs(y1 - 26) <= 0.4 * 16 + 1e-9
    assert noisy_box(box, 0, scale=0.0) == tuple(float(v) for v in box)


def test_noisy_box_hq_sam_mode() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        x0, y0, x1, y1 = noisy_box((10, 10, 30, 20), rng, mode="cxcywh", image_size=(100, 100))
        assert abs((x0 + x1) / 2 - 20) <= 0.4 * 20 / 2 + 1e-9
        assert abs((x1 - x0) - 20) <= 0.4 * 20 + 1e-9
        assert abs((y0 + y1) / 2 - 15) <= 0.4 * 10 / 2 + 1e-9
        assert abs((y1 - y0) - 10) <= 0.4 * 10 + 1e-9


@pytest.mark.parametrize(("lo", "hi"), [(0.5, 0.6), (0.8, 0.9), (0.1, 0.3), (0.95, 1.0)])
def test_box_with_iou_in_range(lo: float, hi: float) -> None:
    m = _mask()
    gt = mask_to_box(m)
    for seed in range(3):
        box = box_with_iou_in_range(m, seed, lo, hi)
        assert lo <= box_iou(box, gt) < hi
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= 50 and 0 <= y0 < y1 <= 40
    assert box_with_iou_in_range(m, 9, lo, hi) == box_with_iou_in_range(m, 9, lo, hi)


def test_box_with_iou_in_range_from_box_and_failures() -> None:
    box = box_with_iou_in_range((100, 100, 200, 160), 0, 0.7, 0.8, image_size=(480, 640))
    assert 0.7 <= box_iou(box, (100, 100, 200, 160)) < 0.8
    with pytest.raises(InputError, match="no noisy box"):
        box_with_iou_in_range((0, 0, 10, 10), 0, 0.5, 0.5000001, max_tries=50)
    with pytest.raises(ValueError):
        box_with_iou_in_range((0, 0, 10, 10), 0, 0.9, 0.5)
    with pytest.raises(InputError, match="empty"):
        box_with_iou_in_range(np.zeros((5, 5), dtype=bool), 0, 0.5, 0.9)
