from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prosam.data.pascal import coco20i, load_pascal_voc, pascal5i, read_split_list
from prosam.errors import InputError

H, W = 16, 24


def _labels(*regions: tuple[int, int, int, int, int]) -> np.ndarray:
    lab = np.zeros((H, W), dtype=np.uint8)
    for value, y0, y1, x0, x1 in regions:
        lab[y0:y1, x0:x1] = value
    return lab


# stem -> label map; 255 marks the VOC "void" border.
LABELS = {
    "2007_000001": _labels((1, 0, 8, 0, 8), (255, 8, 9, 0, 8), (15, 10, 16, 10, 20)),
    "2007_000002": _labels((2, 0, 16, 0, 24)),
    "2007_000003": _labels((1, 0, 2, 0, 2), (6, 4, 12, 4, 12)),  # class 1: only 4 pixels
    "2008_000004": _labels((7, 0, 4, 0, 4)),
    "2008_000005": _labels((3, 2, 10, 2, 10)),
}


def _make_voc(root: Path, palette_stem: str = "2008_000004") -> Path:
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    for stem, lab in LABELS.items():
        Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{stem}.jpg"
        )
        img = Image.fromarray(lab, mode="L")
        if stem == palette_stem:  # VOC's own SegmentationClass masks are palette PNGs
            img = img.convert("P")
            img.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
            img.putpixel((0, 0), 7)
        img.save(root / "SegmentationClassAug" / f"{stem}.png")
    (root / "ImageSets" / "SegmentationAug").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    train = ["2007_000001", "2007_000002", "2007_000003", "2008_000005", "2009_000099"]
    (root / "ImageSets" / "SegmentationAug" / "train_aug.txt").write_text("\n".join(train) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2008_000004\n2008_000005\n")
    return root


def test_split_list_formats(tmp_path: Path) -> None:
    p = tmp_path / "list.txt"
    p.write_text(
        "JPEGImages/2007_000032.jpg SegmentationClassAug/2007_000032.png\n"
        "2007_000033__01\n2007_000033__15\n\n2007_000039\n"
    )
    assert read_split_list(p) == ["2007_000032", "2007_000033", "2007_000039"]


def test_load_voc_classes_ignore_and_overlap(tmp_path: Path) -> None:
    root = _make_voc(tmp_path / "voc")
    with pytest.warns(UserWarning, match="no mask"):
        train = load_pascal_voc(root, "train")
    # 2008_000005 is in val too, 2009_000099 has no files.
    assert [s.key for s in train] == ["2007_000001.jpg", "2007_000002.jpg", "2007_000003.jpg"]
    assert train.stats["val_overlap_dropped"] == 1 and train.stats["missing_masks"] == 1
    s = train.sample("2007_000001.jpg")
    assert s.classes == {1, 15} and s.size == (H, W)
    fg, ignore = s.mask(1)
    np.testing.assert_array_equal(fg, LABELS["2007_000001"] == 1)
    assert ignore[8, 3] and ignore.sum() == 8 and not (fg & ignore).any()
    assert train.class_names[15] == "person" and len(train.class_names) == 20
    val = load_pascal_voc(root, "val")
    fg, _ = val.sample("2008_000004.jpg").mask(7)  # palette PNG: palette indices are labels
    assert fg.sum() == 16


def test_min_area_and_pfenet_lists(tmp_path: Path) -> None:
    root = _make_voc(tmp_path / "voc")
    (root / "lists" / "pascal").mkdir(parents=True)
    (root / "lists" / "pascal" / "val.txt").write_text(
        "JPEGImages/2007_000003.jpg SegmentationClassAug/2007_000003.png\n"
    )
    ds = load_pascal_voc(root, "val", list_file=root / "lists/pascal/val.txt", min_area_pixels=5)
    s = ds.sample("2007_000003.jpg")
    assert s.classes == {6} and s.present_classes == {1, 6}
    assert ds.stats["small_pairs_skipped"] == 1
    frac = load_pascal_voc(root, "val", list_file=root / "lists/pascal/val.txt",
                           min_area_fraction=0.5)  # fmt: skip
    assert len(frac) == 0


def test_class_cache_round_trip(tmp_path: Path) -> None:
    root = _make_voc(tmp_path / "voc")
    cache = tmp_path / "cache.json"
    first = load_pascal_voc(root, "val", cache_path=cache)
    stored = json.loads(cache.read_text())["images"]
    assert set(stored) == {"2008_000004", "2008_000005"}
    stored["2008_000005"]["counts"] = {"9": 64}  # a valid stamp means the cache is trusted
    cache.write_text(json.dumps({"version": 1, "images": stored}))
    again = load_pascal_voc(root, "val", cache_path=cache)
    assert again.sample("2008_000005.jpg").classes == {9}
    assert first.sample("2008_000005.jpg").classes == {3}


def test_pascal5i_fold_views(tmp_path: Path) -> None:
    root = _make_voc(tmp_path / "voc")
    with pytest.warns(UserWarning):
        train = pascal5i(root, 0, "train")  # base = 6..20
    assert {s.key: set(s.classes) for s in train} == {
        "2007_000001.jpg": {15},
        "2007_000003.jpg": {6},
    }
    with pytest.warns(UserWarning):
        strict = pascal5i(root, 0, "train", exclude_novel_images=True)
    assert len(strict) == 0  # both show class 1 (novel in fold 0)
    val = pascal5i(root, 1, "val")  # novel = 6..10
    assert [s.key for s in val] == ["2008_000004.jpg"] and val.class_ids == (7,)
    with pytest.raises(InputError, match="no train list"):
        pascal5i(tmp_path, 0, "train")


def _coco_root(root: Path) -> Path:
    cat_ids = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
    assert len(cat_ids) == 80
    cats = [{"id": c, "name": f"class{c}"} for c in cat_ids]
    box = [[0.0, 0.0, 8.0, 0.0, 8.0, 8.0, 0.0, 8.0]]
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / f"{split}2014").mkdir()
        images, anns = [], []
        for i, cat in enumerate((1, 2, 3)):  # class indices 1, 2, 3
            name = f"COCO_{split}2014_{i:012d}.jpg"
            Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(root / f"{split}2014" / name)
            images.append({"id": i, "file_name": name, "height": H, "width": W})
            anns.append({"id": i, "image_id": i, "category_id": cat, "segmentation": box,
                         "iscrowd": 0})  # fmt: skip
        doc = {"images": images, "annotations": anns, "categories": cats}
        (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(doc))
    return root


def test_coco20i(tmp_path: Path) -> None:
    root = _coco_root(tmp_path / "coco")
    val = coco20i(root, 0, "val")  # fold 0 novel: 1, 5, 9, ...
    assert val.class_ids == (1,) and len(val) == 1
    assert len(val.class_names) == 80 and val.class_names[80] == "class90"
    train = coco20i(root, 1, "train")  # fold 1 novel: 2, 6, ...
    assert train.class_ids == (1, 3) and len(train) == 2
    fg, _ = train.samples[0].mask(1)
    assert fg.sum() == 64
