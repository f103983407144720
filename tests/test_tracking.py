"""Tracking one object through frames: instances near its last place are kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prosam.errors import InputError
from prosam.methods.base import InstanceMask, MethodOutput, Reference, Target
from prosam.methods.tracking import Tracking, dilate, padded_low_res
from prosam.sam.predictor import ImageEmbedding
from prosam.sam.transforms import geometry_for, original_size_mask

SIZE = 256  # SAM input side of these fake embeddings
SIDE = 64  # low-res side
GEOMETRY = geometry_for((100, 200), SIZE)  # low-res image area: 32 x 64


def _square(r0: int, c0: int, n: int = 6) -> InstanceMask:
    logits = torch.full((1, SIDE, SIDE), -10.0)
    logits[0, r0 : r0 + n, c0 : c0 + n] = 10.0
    return InstanceMask(logits, 1.0)


class _Scripted:
    """A method whose answers are given in advance, one list of instances per target."""

    name = "scripted"

    def __init__(self, answers: list[list[InstanceMask]]) -> None:
        self.answers = list(answers)

    def fit(self, references) -> None:
        pass

    def predict(self, target: Target) -> MethodOutput:
        instances = self.answers.pop(0)
        logits = torch.stack([i.low_res_logits for i in instances]).amax(0)
        return MethodOutput(logits, 0.5, {}, instances)


def _frame() -> Target:
    return Target(np.zeros((100, 200, 3), np.uint8), ImageEmbedding(torch.empty(0), GEOMETRY))


def test_padded_low_res_is_the_mask_in_the_decoders_frame():
    mask = np.zeros((100, 200), bool)
    mask[20:60, 40:120] = True
    low = padded_low_res(torch.as_tensor(mask), GEOMETRY, (SIDE, SIDE))
    assert low.shape == (SIDE, SIDE) and not low[32:].any()  # the padding stays empty
    logits = torch.where(low, 10.0, -10.0)[None]
    back = original_size_mask(logits, GEOMETRY)
    assert (back & mask).sum() / (back | mask).sum() > 0.9


def test_dilate_grows_by_the_radius():
    mask = torch.zeros(9, 9, dtype=torch.bool)
    mask[4, 4] = True
    assert int(dilate(mask, 2).sum()) == 25 and torch.equal(dilate(mask, 0), mask)


def test_tracking_keeps_the_instance_near_the_object_and_follows_it():
    annotation = np.zeros((100, 200), bool)
    annotation[25:50, 25:50] = True  # low-res rows / cols 8..16
    near, far = _square(9, 9), _square(20, 50)
    moved, drifted = _square(12, 12), _square(15, 15)  # each mostly inside the last place
    lost = [_square(24, 30), _square(2, 2)]
    script = [[near, far], [moved, _square(2, 55)], [drifted, far], lost]
    tracker = Tracking(_Scripted(script))
    tracker.fit([Reference(np.zeros((100, 200, 3), np.uint8), annotation, None)])  # type: ignore[arg-type]
    first = tracker.predict(_frame())
    assert first.instances == [near]
    torch.testing.assert_close(first.low_res_logits, near.low_res_logits)
    assert tracker.predict(_frame()).instances == [moved]
    assert tracker.predict(_frame()).instances == [drifted]  # near the last answer, not the start
    assert len(tracker.predict(_frame()).instances) == 2  # nothing near: every instance


def test_tracking_checks_its_options_and_needs_a_fit():
    with pytest.raises(InputError):
        Tracking(_Scripted([]), inside=0.0)
    with pytest.raises(RuntimeError):
        Tracking(_Scripted([])).predict(_frame())
