"""Tests for prosam.metrics, on small masks whose expected values are counted by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from prosam.metrics import (
    FSSAccumulator,
    boundary_iou,
    confusion_counts,
    confusion_rates,
    intersection_union,
    mask_stability,
)


def m(rows: list[list[int]]) -> np.ndarray:
    return np.array(rows, dtype=bool)


# pred / target / ignore for the I/U and confusion tests. Valid pixels (ignore excluded):
#   (0,0) fg/fg  (1,0) fg/fg  (1,1) bg/fg  (0,2) bg/bg  (1,2) bg/bg ; (0,1) fg/bg is ignored.
PRED = m([[1, 1, 0], [1, 0, 0]])
TARGET = m([[1, 0, 0], [1, 1, 0]])
IGNORE = m([[0, 1, 0], [0, 0, 0]])


def test_intersection_union_with_ignore() -> None:
    assert intersection_union(PRED, TARGET) == (2, 4)  # I: (0,0),(1,0); U adds (0,1),(1,1)
    assert intersection_union(PRED, TARGET, IGNORE) == (2, 3)  # (0,1) dropped from U
    # background: both bg at (0,2),(1,2); U adds (1,1) (pred bg, target fg)
    assert intersection_union(PRED, TARGET, IGNORE, foreground=False) == (2, 3)
    # without ignore, (0,1) is target-bg/pred-fg, so it joins the background union
    assert intersection_union(PRED, TARGET, foreground=False) == (2, 4)


def test_torch_and_numeric_inputs_match_numpy() -> None:
    iu = intersection_union(torch.from_numpy(PRED), torch.from_numpy(TARGET).float(), IGNORE)
    assert iu == (2, 3)
    assert intersection_union(PRED.astype(np.uint8), TARGET.astype(np.int64)) == (2, 4)


def test_confusion_rates() -> None:
    assert confusion_counts(PRED, TARGET, IGNORE) == {"tp": 2, "fp": 0, "fn": 1, "tn": 2}
    r = confusion_rates(PRED, TARGET, IGNORE)
    assert r == pytest.approx({"tpr": 2 / 3, "fnr": 1 / 3, "tnr": 1.0, "fpr": 0.0})
    r = confusion_rates(PRED, TARGET)  # (0,1) is now a false positive
    assert r == pytest.approx({"tpr": 2 / 3, "fnr": 1 / 3, "tnr": 2 / 3, "fpr": 1 / 3})


def test_confusion_rates_zero_denominator_is_nan() -> None:
    r = confusion_rates(m([[1, 0]]), m([[1, 1]]))  # target has no background
    assert r["tpr"] == 0.5 and r["fnr"] == 0.5
    assert math.isnan(r["tnr"]) and math.isnan(r["fpr"])


def test_invalid_inputs_raise_value_error() -> None:
    with pytest.raises(ValueError):
        intersection_union(np.zeros((2, 3), bool), np.zeros((3, 2), bool))
    with pytest.raises(ValueError):
        intersection_union(PRED, TARGET, np.zeros((2, 2), bool))
    with pytest.raises(ValueError):
        boundary_iou(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    with pytest.raises(ValueError):
        FSSAccumulator().update(0, np.zeros((2, 3), bool), np.zeros((2, 4), bool))
    with pytest.raises(ValueError):  # not binary: looks like logits
        intersection_union(np.array([0.2, 1.0]), np.array([0, 1]))
    with pytest.raises(ValueError):
        mask_stability(np.zeros((4, 4), bool))  # needs (B, H, W)


# --------------------------------------------------------------------------------------------
# Boundary IoU


def test_boundary_iou_equals_mask_iou_when_band_is_whole_mask() -> None:
    # 3x3 image: d = max(1, round(0.02 * 4.24)) = 1; no pixel of these masks has its whole 3x3
    # neighbourhood inside the mask, so each band is the whole mask.
    pred = m([[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    target = m([[0, 1, 1], [0, 1, 1], [0, 0, 0]])
    assert intersection_union(pred, target) == (2, 6)
    assert boundary_iou(pred, target) == pytest.approx(1 / 3)


def test_boundary_iou_below_mask_iou() -> None:
    # 5x5 image, d = 1. Two 3x3 squares shifted by one column: mask IoU = 6/12.
    # Each band = square minus its centre (8 px); the shared 3x2 block minus the two centres
    # (2,2),(2,3) leaves 4 shared band pixels: boundary IoU = 4 / (8 + 8 - 4) = 1/3.
    pred = np.zeros((5, 5), bool)
    pred[1:4, 1:4] = True
    target = np.zeros((5, 5), bool)
    target[1:4, 2:5] = True
    i, u = intersection_union(pred, target)
    assert (i, u) == (6, 12)
    b = boundary_iou(pred, target)
    assert b == pytest.approx(1 / 3)
    assert b < i / u


def test_boundary_iou_empty_and_identical() -> None:
    z = np.zeros((6, 7), bool)
    assert boundary_iou(z, z) == 1.0
    sq = z.copy()
    sq[1:5, 2:6] = True
    assert boundary_iou(sq, sq) == 1.0
    assert boundary_iou(sq, z) == 0.0


def _reference_boundary(mask: np.ndarray, ratio: float) -> np.ndarray:
    """The reference algorithm spelled out: pad 1 with 0, erode d times with a 3x3 kernel
    (cv2's default border for erosion: outside the padded image does not erode)."""
    h, w = mask.shape
    d = max(1, round(ratio * math.sqrt(h * h + w * w)))
    x = np.pad(mask, 1, constant_values=False)
    for _ in range(d):
        xp = np.pad(x, 1, constant_values=True)
        out = np.ones_like(x)
        for dy in range(3):
            for dx in range(3):
                out &= xp[dy : dy + x.shape[0], dx : dx + x.shape[1]]
        x = out
    return mask & ~x[1 : h + 1, 1 : w + 1]


@pytest.mark.parametrize("ratio", [0.02, 0.05, 0.1])
def test_boundary_iou_matches_reference_algorithm(ratio: float) -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        # blocky masks (4x4 cells) so that erosion leaves an interior; odd crop size
        coarse = rng.random((10, 15)) > 0.4
        pred = np.kron(coarse, np.ones((4, 4), bool))[:37, :58]
        b = rng.random((37, 58)) > 0.3
        target = pred ^ (b & (rng.random((37, 58)) > 0.9))
        bp, bt = _reference_boundary(pred, ratio), _reference_boundary(target, ratio)
        expected = (bp & bt).sum() / (bp | bt).sum()
        assert boundary_iou(pred, target, dilation_ratio=ratio) == pytest.approx(expected)


# --------------------------------------------------------------------------------------------
# mask stability (Stable-SAM mSF)


def test_mask_stability() -> None:
    a = m([[1, 1], [0, 0]])
    assert mask_stability(np.stack([a, a, a])) == 1.0
    b = m([[1, 0], [0, 0]])
    # union = a (2 px): IoU(a, U) = 1, IoU(b, U) = 1/2
    assert mask_stability(np.stack([a, b])) == pytest.approx(0.75)
    c = m([[0, 0], [0, 1]])
    # union 3 px: IoUs 2/3, 1/3, 1/3
    assert mask_stability(torch.from_numpy(np.stack([a, b, c]))) == pytest.approx(4 / 9)
    assert mask_stability(np.zeros((3, 2, 2), bool)) == 1.0


# --------------------------------------------------------------------------------------------
# FSSAccumulator

# Episode A, class 1: I = 1 ((0,1)), U = 4           -> IoU 1/4; tp 1 fp 1 fn 2 tn 2
EP_A = (1, m([[1, 1, 0], [0, 0, 0]]), m([[0, 1, 1], [0, 0, 1]]))
# Episode B, class 1: pred == target, 3 px            -> IoU 1;   tp 3 fp 0 fn 0 tn 3
EP_B = (1, m([[1, 1, 1], [0, 0, 0]]), m([[1, 1, 1], [0, 0, 0]]))
# Episode C, class 2: I = 1 ((1,1)), U = 2            -> IoU 1/2; tp 1 fp 1 fn 0 tn 4
EP_C = (2, m([[0, 0, 0], [1, 1, 0]]), m([[0, 0, 0], [0, 1, 0]]))
# Totals: tp 5, fp 2, fn 2, tn 9.


def _fed(*episodes: tuple[int, np.ndarray, np.ndarray]) -> FSSAccumulator:
    acc = FSSAccumulator()
    for cid, p, t in episodes:
        acc.update(cid, p, t)
    return acc


def test_fss_miou_pooled_differs_from_per_episode_mean() -> None:
    acc = _fed(EP_A, EP_B, EP_C)
    s = acc.summary()
    # class 1 pooled: (1 + 3) / (4 + 3) = 4/7; class 2: 1/2  -> (4/7 + 1/2) / 2 = 15/28
    assert s["miou_fss"] == pytest.approx(15 / 28)
    # per episode: (1/4 + 1 + 1/2) / 3 = 7/12
    assert s["miou_per_episode"] == pytest.approx(7 / 12)
    assert s["miou_fss"] != pytest.approx(s["miou_per_episode"])
    pc = acc.per_class()
    assert list(pc) == [1, 2]
    assert pc[1]["iou"] == pytest.approx(4 / 7)
    assert (pc[1]["intersection"], pc[1]["union"], pc[1]["episodes"]) == (4, 7, 2)
    assert pc[1]["miou_per_episode"] == pytest.approx(5 / 8)
    assert pc[2]["iou"] == pytest.approx(1 / 2)
    assert s["num_episodes"] == 3 and s["num_classes"] == 2 and s["warning"] is None


def test_fb_iou_and_pooled_rates() -> None:
    s = _fed(EP_A, EP_B, EP_C).summary()
    # fg: 5 / (5+2+2) = 5/9; bg: 9 / (9+2+2) = 9/13
    assert s["iou_fg"] == pytest.approx(5 / 9)
    assert s["iou_bg"] == pytest.approx(9 / 13)
    assert s["fb_iou"] == pytest.approx((5 / 9 + 9 / 13) / 2)
    assert s["tpr"] == pytest.approx(5 / 7) and s["fnr"] == pytest.approx(2 / 7)
    assert s["tnr"] == pytest.approx(9 / 11) and s["fpr"] == pytest.approx(2 / 11)
    assert math.isnan(s["boundary_iou"]) and s["boundary_episodes"] == 0


def test_absent_class_is_excluded_with_warning() -> None:
    acc = _fed(EP_A, EP_B, EP_C)
    s = acc.summary(class_ids=[1, 2, 3])
    assert s["miou_fss"] == pytest.approx(15 / 28)
    assert s["absent_classes"] == [3] and s["num_classes"] == 2
    assert "3" in s["warning"]
    s = acc.summary(class_ids=[1])
    assert s["miou_fss"] == pytest.approx(4 / 7)
    assert s["unlisted_classes"] == [2] and s["warning"] is not None
    assert s["num_episodes"] == 3  # other entries still cover every episode


def test_empty_episode_counts_one_and_empty_accumulator_is_nan() -> None:
    acc = FSSAccumulator()
    assert math.isnan(acc.summary()["miou_fss"]) and math.isnan(acc.summary()["fb_iou"])
    z = np.zeros((2, 2), bool)
    assert acc.update(5, z, z) == 1.0
    # ignore removes the only disagreeing pixel: again an empty/empty episode
    assert acc.update(5, m([[1, 0], [0, 0]]), z, ignore=m([[1, 0], [0, 0]])) == 1.0
    assert acc.summary()["miou_per_episode"] == 1.0


def test_boundary_flag_in_update() -> None:
    pred = np.zeros((5, 5), bool)
    pred[1:4, 1:4] = True
    target = np.zeros((5, 5), bool)
    target[1:4, 2:5] = True
    acc = FSSAccumulator()
    assert acc.update(0, pred, target, boundary=True) == pytest.approx(0.5)
    acc.update(0, pred, pred, boundary=True)
    acc.update(0, pred, pred)  # no boundary for this one
    s = acc.summary()
    assert s["boundary_iou"] == pytest.approx((1 / 3 + 1) / 2)
    assert s["boundary_episodes"] == 2 and s["num_episodes"] == 3


def _close(a: object, b: object) -> bool:
    """Recursive equality, floats compared approximately and nan equal to nan."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, nan_ok=True)
    return a == b


def test_merge_equals_single_accumulator() -> None:
    full = _fed(EP_A, EP_B, EP_C)
    merged = _fed(EP_A).merge(_fed(EP_C, EP_B))
    assert _close(merged.per_class(), full.per_class())
    assert _close(merged.state_dict(), full.state_dict())
    assert _close(merged.summary(), full.summary())
    with pytest.raises(ValueError):
        full.merge(FSSAccumulator(dilation_ratio=0.05))


def test_state_dict_json_round_trip() -> None:
    acc = _fed(EP_A, EP_B, EP_C)
    acc.update(7, EP_B[1], EP_B[2], boundary=True)
    state = json.loads(json.dumps(acc.state_dict()))
    restored = FSSAccumulator.from_state_dict(state)
    assert restored.state_dict() == acc.state_dict()
    assert _close(restored.per_class(), acc.per_class())
    assert list(restored.per_class()) == [1, 2, 7]  # int keys survive JSON
    with pytest.raises(ValueError):
        FSSAccumulator().load_state_dict({**state, "version": 99})


def test_all_reduce_without_distributed_is_noop() -> None:
    acc = _fed(EP_A, EP_B)
    before = acc.state_dict()
    assert acc.all_reduce() is acc
    assert acc.state_dict() == before


def test_all_reduce_sums_states_of_all_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    other_rank = _fed(EP_C, EP_B).state_dict()

    def fake_all_gather_object(out: list, obj: object, group: object = None) -> None:
        out[0], out[1] = obj, other_rank

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "all_gather_object", fake_all_gather_object)
    acc = _fed(EP_A).all_reduce()
    assert _close(acc.summary(), _fed(EP_A, EP_B, EP_C).summary())


def test_all_reduce_single_rank_gloo(tmp_path: object) -> None:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        acc = _fed(EP_A, EP_B, EP_C)
        before = acc.state_dict()
        acc.all_reduce()
        assert acc.state_dict() == before  # one rank: nothing added
    finally:
        dist.destroy_process_group()


def test_mask_iou_hand_case_ignore_and_empty():
    from prosam.metrics import mask_iou

    pred = np.zeros((2, 4), bool)
    target = np.zeros((2, 4), bool)
    pred[0, :3] = True  # 3 pixels
    target[0, 1:] = True  # 3 pixels, 2 shared
    assert mask_iou(pred, target) == pytest.approx(2 / 4)
    ignore = np.zeros((2, 4), bool)
    ignore[0, 0] = True  # drops a pred-only pixel
    assert mask_iou(pred, target, ignore) == pytest.approx(2 / 3)
    assert mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def test_instance_ap_by_hand():
    from prosam.metrics import instance_average_precision as ap

    a = np.zeros((4, 4), bool)
    a[:2, :2] = True
    b = np.zeros((4, 4), bool)
    b[2:, 2:] = True
    wrong = np.zeros((4, 4), bool)
    wrong[0, 3] = True
    assert ap([("x", 0.9, a)], {"x": [a]}) == pytest.approx(1.0)
    # a confident false positive, then both instances: precision 0, 1/2, 2/3 at recall 0,
    # 1/2, 1; the envelope is 2/3 at every recall level
    dets = [("x", 0.9, wrong), ("x", 0.8, a), ("y", 0.7, b)]
    assert ap(dets, {"x": [a], "y": [b]}) == pytest.approx(2 / 3)
    # a second detection of a matched instance is a false positive; one instance missed
    dets = [("x", 0.9, a), ("x", 0.8, a)]
    assert ap(dets, {"x": [a], "y": [b]}) == pytest.approx(51 / 101)
    # below the IoU threshold: no hit at all; an image with no instance only adds negatives
    half = np.zeros((4, 4), bool)
    half[:1, :2] = True  # IoU 0.5 with a: a hit at 0.5, not at 0.75
    assert ap([("x", 1.0, half)], {"x": [a]}) == pytest.approx(1.0)
    assert ap([("x", 1.0, half)], {"x": [a]}, iou_threshold=0.75) == 0.0
    assert ap([("z", 1.0, a), ("x", 0.5, a)], {"x": [a], "z": []}) == pytest.approx(0.5)
    assert math.isnan(ap([], {"z": []}))
    assert ap([], {"x": [a]}) == 0.0
    with pytest.raises(ValueError):
        ap([("q", 1.0, a)], {"x": [a]})
