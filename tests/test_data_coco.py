from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from prosam.data import coco as coco_module
from prosam.data.coco import load_coco
from prosam.errors import InputError

H, W = 20, 30
CATEGORIES = [
    {"id": 7, "name": "dog"},
    {"id": 3, "name": "cat"},
    {"id": 1, "name": "person"},
]  # contiguous ids in category-id order: person=1, cat=2, dog=3
PERSON, CAT, DOG = 1, 2, 3

POLYGON = [[2.0, 2.0, 12.0, 2.0, 12.0, 10.0, 2.0, 10.0]]


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


RLE_REGION = _box(12, 17, 5, 21)
CROWD_REGION = _box(6, 19, 10, 15)  # overlaps both the polygon and the RLE instance
DOG_REGION = _box(0, 3, 25, 28)  # 9 pixels: 1.5 % of the image


def _compressed(m: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def _uncompressed(m: np.ndarray) -> dict:
    flat = m.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = [0, *changes.tolist(), flat.size]
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": [H, W], "counts": counts}


def _write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 128, dtype=np.uint8)).save(path)


def _write_json(path: Path, images: list[dict], annotations: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    path.write_text(json.dumps(doc))
    return path


def _ann(aid: int, image_id: int, cat: int, segm: object, crowd: int = 0) -> dict:
    return {"id": aid, "image_id": image_id, "category_id": cat, "segmentation": segm,
            "iscrowd": crowd, "area": 0, "bbox": [0, 0, 1, 1]}  # fmt: skip


@pytest.fixture
def coco_root(tmp_path: Path) -> tuple[list[tuple[Path, Path]], Path]:
    root = tmp_path / "coco"
    for name in ("a.jpg", "b.jpg"):
        _write_image(root / "imgs1" / name)
    _write_image(root / "imgs2" / "a.jpg")
    _write_image(root / "imgs2" / "c.jpg")
    img = {"height": H, "width": W}
    first = _write_json(
        root / "ann1.json",
        [{"id": 1, "file_name": "a.jpg", **img}, {"id": 2, "file_name": "b.jpg", **img}],
        [
            _ann(10, 1, 3, POLYGON),
            _ann(11, 1, 3, _compressed(RLE_REGION)),
            _ann(12, 1, 3, _uncompressed(CROWD_REGION), crowd=1),
            _ann(13, 1, 7, [[25.0, 0.0, 28.0, 0.0, 28.0, 3.0, 25.0, 3.0]]),
            _ann(14, 2, 1, _compressed(_box(0, 10, 0, 10))),
            _ann(15, 99, 1, POLYGON),  # orphan: no such image
        ],
    )
    second = _write_json(
        root / "ann2.json",
        [
            {"id": 5, "file_name": "a.jpg", **img},  # duplicate of ann1's a.jpg: dropped
            {"id": 6, "file_name": "c.jpg", **img},
            {"id": 7, "file_name": "missing.jpg", **img},
        ],
        [
            _ann(20, 5, 1, POLYGON),
            _ann(21, 6, 7, _uncompressed(_box(3, 9, 3, 9))),
            _ann(23, 6, 3, _uncompressed(_box(10, 20, 0, 30)), crowd=1),  # crowd-only cat
            _ann(22, 7, 7, POLYGON),
        ],
    )
    return [(first, root / "imgs1"), (second, root / "imgs2")], root


def test_categories_dedupe_and_stats(coco_root) -> None:
    sources, root = coco_root
    with pytest.warns(UserWarning, match="missing"):
        ds = load_coco(sources)
    assert ds.class_names == {PERSON: "person", CAT: "cat", DOG: "dog"}
    assert [s.key for s in ds] == ["a.jpg", "b.jpg", "c.jpg"]
    a = ds.sample("a.jpg")
    assert a.image_path == root / "imgs1" / "a.jpg"  # first source wins
    assert a.classes == {CAT, DOG}  # the duplicate's person annotation is not merged in
    assert a.size == (H, W) and a.image().shape == (H, W, 3)
    assert ds.stats["duplicate_images"] == 1
    assert ds.stats["missing_images"] == 1
    assert ds.stats["orphan_annotations"] == 1
    assert ds.stats["annotations_of_dropped_images"] == 2
    assert [s.key for s in ds.samples_with_class(DOG)] == ["a.jpg", "c.jpg"]
    c = ds.sample("c.jpg")
    assert c.classes == {DOG} and c.present_classes == {DOG, CAT}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools under numpy 2
def test_class_mask_is_union_and_crowd_is_ignore(coco_root) -> None:
    sources, _ = coco_root
    with pytest.warns(UserWarning):
        ds = load_coco(sources)
    fg, ignore = ds.sample("a.jpg").mask(CAT)
    assert fg.dtype == bool and ignore.dtype == bool and fg.shape == (H, W)
    poly = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(POLYGON, H, W))).astype(bool)
    assert poly[5, 5] and poly[9, 11] and not poly[11, 5]
    np.testing.assert_array_equal(fg, poly | RLE_REGION)
    np.testing.assert_array_equal(ignore, CROWD_REGION & ~(poly | RLE_REGION))
    assert ignore[18, 12] and not ignore[14, 12] and not fg[18, 12]
    assert not (fg & ignore).any()
    dog_fg, dog_ignore = ds.sample("a.jpg").mask(DOG)
    assert dog_fg.sum() == 9 and not dog_ignore.any()  # other classes' crowds are not ignore
    c_fg, _ = ds.sample("c.jpg").mask(DOG)
    np.testing.assert_array_equal(c_fg, _box(3, 9, 3, 9))
    person_fg, _ = ds.sample("a.jpg").mask(PERSON)
    assert not person_fg.any()


def test_min_area_fraction(coco_root) -> None:
    sources, _ = coco_root
    with pytest.warns(UserWarning):
        ds = load_coco(sources, min_area_fraction=0.02)
    a = ds.sample("a.jpg")
    assert a.classes == {CAT} and a.present_classes == {CAT, DOG}
    assert [s.key for s in ds.samples_with_class(DOG)] == ["c.jpg"]  # 36 px = 6 %
    assert ds.stats["small_pairs_skipped"] == 1
    with pytest.warns(UserWarning):
        strict = load_coco(sources, min_area_fraction=0.5)
    assert len(strict) == 0 and strict.stats["images_without_classes"] == 3
    with pytest.raises(InputError):
        load_coco(sources, min_area_fraction=1.5)


def test_masks_are_decoded_lazily(coco_root, monkeypatch: pytest.MonkeyPatch) -> None:
    sources, _ = coco_root
    calls: list[int] = []
    real = mask_utils.decode

    def counting(rle):
        calls.append(1)
        return real(rle)

    monkeypatch.setattr(coco_module.mask_utils, "decode", counting)
    with pytest.warns(UserWarning):
        ds = load_coco(sources, min_area_fraction=0.01)
    assert calls == []
    ds.sample("a.jpg").mask(CAT)
    assert calls


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_coco([(tmp_path / "nope.json", tmp_path)])
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not a COCO"):
        load_coco([(tmp_path / "x.json", tmp_path)])
    _write_image(tmp_path / "i" / "a.jpg")
    bad = _write_json(
        tmp_path / "bad.json",
        [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}],
        [_ann(1, 1, 3, {"size": [H + 1, W], "counts": [0, 5]})],
    )
    ds = load_coco([(bad, tmp_path / "i")])
    with pytest.raises(InputError, match="RLE size"):
        ds.sample("a.jpg").mask(CAT)
    malformed = _write_json(tmp_path / "m.json", [{"id": 1, "file_name": "a.jpg"}], [])
    with pytest.raises(InputError, match="malformed"):
        load_coco([(malformed, tmp_path / "i")])


def test_a_single_split_layout_loads_by_spec(tmp_path):
    """``annotations/instances.json`` with ``images/`` (msrc-v2's layout) is a coco: root."""
    from prosam.data.specs import coco_sources, load_dataset_spec

    _write_image(tmp_path / "images" / "a.png")
    ann = {"id": 1, "image_id": 1, "category_id": 3, "segmentation": POLYGON, "iscrowd": 0}
    images = [{"id": 1, "file_name": "a.png", "height": H, "width": W}]
    _write_json(tmp_path / "annotations" / "instances.json", images, [ann])
    assert coco_sources(tmp_path) == [
        (tmp_path / "annotations" / "instances.json", tmp_path / "images")
    ]
    ds = load_dataset_spec(f"coco:{tmp_path}")
    assert [s.key for s in ds] == ["a.png"] and ds.class_names[CAT] == "cat"
    with pytest.raises(InputError, match="instances_val2017"):
        coco_sources(tmp_path, "val2017")  # a named split still needs its own files


def test_class_names_keep_only_the_named_classes(tmp_path):
    import argparse

    from prosam.cli.options import dataset_and_classes

    _write_image(tmp_path / "images" / "a.png")
    anns = [
        {"id": i + 1, "image_id": 1, "category_id": c, "segmentation": POLYGON, "iscrowd": 0}
        for i, c in enumerate((1, 3, 7))
    ]
    images = [{"id": 1, "file_name": "a.png", "height": H, "width": W}]
    _write_json(tmp_path / "annotations" / "instances.json", images, anns)
    args = argparse.Namespace(
        data=f"coco:{tmp_path}", split=None, min_area=0.0, fold=0, folds=1, scheme=None,
        classes="all", class_names="dog, cat",
    )  # fmt: skip
    _, classes, _ = dataset_and_classes(args)
    assert classes == [DOG, CAT]
    args.class_names = "dog,horse"
    with pytest.raises(InputError, match="horse"):
        dataset_and_classes(args)


def test_instances_are_the_separate_non_crowd_annotations(tmp_path):
    _write_image(tmp_path / "images" / "a.png")
    left, right = _box(2, 8, 2, 8), _box(10, 16, 15, 25)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "segmentation": _compressed(left), "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "segmentation": _uncompressed(right),
         "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 3, "segmentation": _compressed(DOG_REGION),
         "iscrowd": 1},
    ]  # fmt: skip
    images = [{"id": 1, "file_name": "a.png", "height": H, "width": W}]
    ann_file = _write_json(tmp_path / "annotations" / "instances.json", images, anns)
    (sample,) = load_coco([(ann_file, tmp_path / "images")])
    objects = sample.instances(CAT)
    assert len(objects) == 2 and (objects[0] == left).all() and (objects[1] == right).all()
    fg, _ = sample.mask(CAT)
    assert (fg == (left | right)).all()
    assert sample.instances(PERSON) == []
