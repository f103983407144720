"""gfsam's point-mask graph and mask growth on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prosam.errors import InputError
from prosam.methods.matching.gfsam import grow_object, point_components


def test_points_linked_through_masks_form_one_component_each():
    # masks 0 and 1 cover each other's points; mask 2 covers only its own; 3 covers 2's point
    covers = np.array(
        [
            [1, 1, 0, 0],
            [0, 1, 0, 0],
            [0, 0, 1, 0],
            [0, 0, 1, 1],
        ],
        dtype=bool,
    )
    labels = point_components(covers)
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[0] != labels[2]
    assert len(set(point_components(np.eye(3, dtype=bool)).tolist())) == 3
    with pytest.raises(InputError, match="square"):
        point_components(np.ones((2, 3), dtype=bool))


def test_mask_growth_keeps_masks_whose_new_part_is_mostly_positive():
    positive = torch.zeros(4, 4)
    positive[:, :2] = 1  # the left half looks like the reference
    left = torch.zeros(4, 4)
    left[:, :2] = 1
    left_and_more = torch.zeros(4, 4)
    left_and_more[:, :3] = 1  # its new part (column 2) is all negative
    right = torch.zeros(4, 4)
    right[:, 2:] = 1
    cells = torch.stack([left, left_and_more, right])
    kept = grow_object(cells, torch.tensor([0.9, 0.5, 0.1]), positive)
    assert kept == [0]
    # taken in score order: the bigger mask first is mostly positive (8 of 12) and kept,
    # then the left mask adds nothing new (0 > 0 is false)
    assert grow_object(cells[:2], torch.tensor([0.1, 0.9]), positive) == [1]
    assert grow_object(cells[2:], torch.tensor([1.0]), positive) == []
