"""Stable-SAM training objects from COCO (split and single-file layouts) and folder sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prosam.data.specs import load_dataset_spec
from prosam.errors import InputError
from prosam.stable import (
    TrainingObjects,
    evenly_spaced_per_class,
    held_out_keys,
    without_keys,
)
from tests.fixtures_coco import write_coco_fixture


def _rect(x0: int, y0: int, x1: int, y1: int) -> list[list[int]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture(scope="module")
def single_file_coco(tmp_path_factory) -> Path:
    """msrc-v2's layout: ``annotations/instances.json`` + ``images/``; image 0 holds two cows
    and a crowd region, image 1 one tiny cow and a boat."""
    root = tmp_path_factory.mktemp("msrc")
    (root / "images").mkdir()
    (root / "annotations").mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 60, 3), 40 * i, np.uint8)).save(root / "images" / f"m{i}.jpg")
    anns = [
        (0, 1, _rect(2, 2, 20, 20), 0),
        (0, 1, _rect(30, 5, 50, 30), 0),
        (0, 1, _rect(52, 30, 59, 39), 1),  # crowd: never an object
        (1, 1, _rect(0, 0, 2, 2), 0),  # 9 px: below min_pixels
        (1, 2, _rect(10, 10, 40, 30), 0),
    ]
    doc = {
        "images": [
            {"id": i, "file_name": f"m{i}.jpg", "height": 40, "width": 60} for i in range(2)
        ],
        "categories": [{"id": 1, "name": "cow"}, {"id": 2, "name": "boat"}],
        "annotations": [
            {
                "id": k + 1,
                "image_id": img,
                "category_id": cat,
                "segmentation": seg,
                "iscrowd": crowd,
                "area": 1.0,
                "bbox": [0, 0, 1, 1],
            }
            for k, (img, cat, seg, crowd) in enumerate(anns)
        ],
    }
    (root / "annotations" / "instances.json").write_text(json.dumps(doc))
    return root


@pytest.fixture(scope="module")
def sequences(tmp_path_factory) -> Path:
    """A folder dataset of two 'video sequences' of 10 and 3 frames."""
    root = tmp_path_factory.mktemp("davis")
    for name, frames in (("dog", 10), ("kite", 3)):
        (root / name).mkdir()
        for f in range(frames):
            Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(root / name / f"{f:05d}.jpg")
            mask = np.zeros((30, 40), np.uint8)
            mask[5 : 15 + f, 10:30] = 255
            Image.fromarray(mask).save(root / name / f"{f:05d}.png")
    return root


def test_object_modes_on_instances_and_crowd(single_file_coco):
    dataset = load_dataset_spec(f"coco:{single_file_coco}")
    keys = {mode: [] for mode in ("instances", "classes", "both", "components")}
    for mode in keys:
        objects = TrainingObjects([dataset], mode=mode, min_pixels=16)
        keys[mode] = [objects.key(i) for i in range(len(objects))]
    assert keys["instances"] == ["m0.jpg#1.0", "m0.jpg#1.1", "m1.jpg#2.0"]
    assert keys["classes"] == ["m0.jpg#1.c", "m1.jpg#2.c"]  # m1's tiny cow is too small
    assert keys["both"] == ["m0.jpg#1.0", "m0.jpg#1.1", "m0.jpg#1.c", "m1.jpg#2.0"]
    assert keys["components"] == ["m0.jpg#1.0", "m0.jpg#1.1", "m1.jpg#2.0"]
    objects = TrainingObjects([dataset], mode="both", min_pixels=16)
    first, second, union = objects[0], objects[1], objects[2]
    assert first.image.shape == (40, 60, 3) and first.mask.shape == (40, 60)
    assert first.mask[10, 10] and not first.mask[10, 40]
    assert second.mask[10, 40] and not second.mask[10, 10]
    np.testing.assert_array_equal(union.mask, first.mask | second.mask)
    assert union.ignore is not None and union.ignore[35, 55] and not union.mask[35, 55]
    with pytest.raises(InputError, match="object mode"):
        TrainingObjects([dataset], mode="pixels")


def test_objects_from_three_kinds_of_source(tmp_path, single_file_coco, sequences):
    coco = load_dataset_spec(f"coco:{write_coco_fixture(tmp_path / 'coco', images=3)}")
    msrc = load_dataset_spec(f"coco:{single_file_coco}")
    davis = evenly_spaced_per_class(load_dataset_spec(f"folder:{sequences}"), 4)
    assert sorted(s.key for s in davis) == [
        "dog/00000.jpg",
        "dog/00003.jpg",
        "dog/00006.jpg",
        "dog/00009.jpg",
        "kite/00000.jpg",
        "kite/00001.jpg",
        "kite/00002.jpg",
    ]
    objects = TrainingObjects([coco, msrc, davis], mode="both", min_pixels=16)
    counts = objects.counts()
    assert list(counts.values())[1:] == [4, 7]
    assert sum(counts.values()) == len(objects)
    n_coco = sum(len(s.classes) for s in coco)
    assert next(iter(counts.values())) == n_coco  # the fixture has one instance per class
    item = objects[len(objects) - 1]
    assert item.key == "kite/00002.jpg#2.0" and item.mask.sum() == 12 * 20
    fraction = TrainingObjects([davis], mode="both", min_area_fraction=0.2)
    assert len(fraction) == sum(1 for s in davis if (10 + int(Path(s.key).stem)) * 20 >= 0.2 * 1200)


def test_held_out_keys_are_stable_and_disjoint(tmp_path):
    dataset = load_dataset_spec(f"coco:{write_coco_fixture(tmp_path / 'c', images=40)}")
    held = held_out_keys(dataset, 0.25, seed=3)
    assert 3 <= len(held) <= 18
    assert held == held_out_keys(dataset, 0.25, seed=3)
    assert held != held_out_keys(dataset, 0.25, seed=4)
    smaller = without_keys(dataset, [s.key for s in dataset.samples[:10]])
    assert held_out_keys(smaller, 0.25, seed=3) == held - {s.key for s in dataset.samples[:10]}
    train, val = without_keys(dataset, held), without_keys(dataset, held, keep=True)
    assert len(train) + len(val) == len(dataset)
    assert not {s.key for s in train} & {s.key for s in val}
    with pytest.raises(InputError):
        held_out_keys(dataset, 1.0)
    with pytest.raises(InputError):
        evenly_spaced_per_class(dataset, 0)
