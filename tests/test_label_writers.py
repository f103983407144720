from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from prosam.io import read_label_map
from prosam.label.writers import (
    CocoWriter,
    LabelMask,
    OverlayWriter,
    PngWriter,
    YoloWriter,
    decode_mask,
    encode_mask,
    make_writer,
    mask_polygons,
    rasterize_polygons,
    read_yolo_polygons,
    rle_bbox_area,
    voc_palette,
)
from prosam.prompts import mask_to_box

H, W = 48, 64


def _shapes() -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:H, :W]
    disk = (yy - 24) ** 2 + (xx - 30) ** 2 <= 15**2
    rect = np.zeros((H, W), bool)
    rect[5:30, 8:60] = True
    ell = np.zeros((H, W), bool)
    ell[4:44, 4:16] = True
    ell[32:44, 4:58] = True
    blobs = np.zeros((H, W), bool)
    blobs[3:15, 3:15] = True
    blobs[(yy - 34) ** 2 + (xx - 48) ** 2 <= 9**2] = True
    edge = np.zeros((H, W), bool)
    edge[:, W - 10 :] = True  # touches the image border
    return {"disk": disk, "rect": rect, "L": ell, "two_blobs": blobs, "border": edge}


SHAPES = _shapes()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_rle_round_trip_and_bbox(name):
    mask = SHAPES[name]
    rle = encode_mask(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [H, W]
    json.dumps(rle)
    np.testing.assert_array_equal(decode_mask(rle), mask)
    bbox, area = rle_bbox_area(rle)
    x0, y0, x1, y1 = mask_to_box(mask)
    assert bbox == [x0, y0, x1 - x0, y1 - y0] and area == mask.sum()


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_yolo_polygons_rasterise_back_to_the_mask(tmp_path, name):
    mask = SHAPES[name]
    writer = YoloWriter(tmp_path, ["thing", "other"])
    writer.add("img", (H, W), [LabelMask("other", mask, 0.9)])
    writer.finalize()
    lines = read_yolo_polygons(tmp_path / "yolo" / "img.txt", (H, W))
    assert len(lines) == 1  # one object, one row, whatever its pieces
    assert all(idx == 1 for idx, _ in lines)
    raw = (tmp_path / "yolo" / "img.txt").read_text().split()
    coords = np.array([float(v) for v in raw if "." in v])
    assert coords.min() >= 0 and coords.max() <= 1
    back = rasterize_polygons([poly for _, poly in lines], (H, W))
    assert _iou(back, mask) >= 0.9
    assert (tmp_path / "yolo" / "classes.txt").read_text() == "thing\nother\n"


def test_polygons_of_thin_and_tiny_components():
    mask = np.zeros((10, 12), bool)
    mask[2, 1:9] = True  # a 1-pixel-wide line: kept, as its traced pixels
    mask[7, 10] = True  # a single pixel: no polygon
    polys = mask_polygons(mask)
    assert len(polys) == 1 and len(polys[0]) >= 3
    assert _iou(rasterize_polygons(polys, mask.shape), mask) >= 0.85
    assert mask_polygons(np.zeros((4, 4), bool)) == []


def test_yolo_empty_image_gives_an_empty_file(tmp_path):
    YoloWriter(tmp_path, ["a"]).add("nothing", (H, W), [])
    assert (tmp_path / "yolo" / "nothing.txt").read_text() == ""


def test_png_per_class_masks(tmp_path):
    writer = PngWriter(tmp_path, ["cat", "dog wolf"])
    writer.add("x", (H, W), [LabelMask("cat", SHAPES["disk"], 0.5)])
    cat = np.asarray(Image.open(tmp_path / "png" / "cat" / "x.png"))
    dog = np.asarray(Image.open(tmp_path / "png" / "dog_wolf" / "x.png"))
    assert set(np.unique(cat)) == {0, 255}
    np.testing.assert_array_equal(cat == 255, SHAPES["disk"])
    assert not dog.any()  # a class not found: an all-zero mask


def test_indexed_png_values_palette_and_overlaps(tmp_path):
    writer = PngWriter(tmp_path, ["rect", "disk", "L"], indexed=True)
    masks = [
        LabelMask("rect", SHAPES["rect"], 0.9),  # wins where it overlaps the disk
        LabelMask("disk", SHAPES["disk"], 0.3),
    ]
    writer.add("x", (H, W), masks)
    img = Image.open(tmp_path / "png" / "x.png")
    assert img.mode == "P"
    assert img.getpalette()[: 3 * 4] == voc_palette(4).ravel().tolist()
    labels = read_label_map(tmp_path / "png" / "x.png")
    expected = np.zeros((H, W), np.uint8)
    expected[SHAPES["disk"]] = 2
    expected[SHAPES["rect"]] = 1
    np.testing.assert_array_equal(labels, expected)
    assert voc_palette(3).tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools under numpy 2
def test_coco_json_loads_with_pycocotools(tmp_path):
    writer = CocoWriter(tmp_path, ["rect", "disk"])
    writer.add(
        "a",
        (H, W),
        [LabelMask("rect", SHAPES["rect"], 0.8), LabelMask("disk", SHAPES["disk"], 0.4)],
        file_name="sub/a.jpg",
    )
    writer.add("b", (H, W), [], file_name="b.jpg")  # an image with nothing found
    writer.add(
        "c", (H, W), [LabelMask("disk", encode_mask(SHAPES["L"]), 0.6, {"uncertainty": 0.25})]
    )
    writer.finalize()
    coco = COCO(str(tmp_path / "coco.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["rect", "disk"]
    assert [coco.imgs[i]["file_name"] for i in sorted(coco.imgs)] == ["sub/a.jpg", "b.jpg", "c"]
    assert coco.imgs[1]["width"] == W and coco.imgs[1]["height"] == H
    anns = coco.loadAnns(coco.getAnnIds())
    assert [(a["image_id"], a["category_id"]) for a in anns] == [(1, 1), (1, 2), (3, 2)]
    for ann, mask in zip(anns, [SHAPES["rect"], SHAPES["disk"], SHAPES["L"]], strict=True):
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
        assert ann["area"] == mask.sum()
    assert anns[0]["score"] == 0.8 and anns[2]["uncertainty"] == 0.25
    assert "uncertainty" not in anns[0]


def test_overlay_legend_names_found_classes_with_their_estimate(tmp_path):
    image = np.full((120, 160, 3), 100, np.uint8)
    mask = np.zeros((120, 160), bool)
    mask[60:100, 80:140] = True
    plain = OverlayWriter(tmp_path / "plain", ["a", "b"])
    plain.add("x", (120, 160), [LabelMask("b", mask, 0.5)], image=image)
    rated = OverlayWriter(tmp_path / "rated", ["a", "b"])
    rated.add("x", (120, 160), [LabelMask("b", mask, 0.5, {"quality": 0.25})], image=image)
    none = OverlayWriter(tmp_path / "none", ["a", "b"])
    none.add("x", (120, 160), [], image=image)
    a, b, c = (
        np.asarray(Image.open(tmp_path / d / "overlay" / "x.jpg")).astype(int)
        for d in ("plain", "rated", "none")
    )
    band = (slice(0, 12), slice(0, 80))
    assert np.abs(c[band] - 100).max() < 10  # nothing found: no legend
    width = [int((v[band].max(axis=2) < 60).any(axis=0).sum()) for v in (a, b)]
    assert 0 < width[0] < width[1]  # a dark band behind the text; "b 0.25" is wider than "b"


def test_overlay_preview(tmp_path):
    image = np.full((H, W, 3), 100, np.uint8)
    writer = OverlayWriter(tmp_path, ["a", "b"])
    writer.add("x", (H, W), [LabelMask("b", SHAPES["disk"], 0.5)], image=image)
    preview = np.asarray(Image.open(tmp_path / "overlay" / "x.jpg"))
    assert preview.shape == (H, W, 3)
    assert np.abs(preview[24, 30].astype(int) - 100).max() > 30  # tinted inside the mask
    assert np.abs(preview[-3, -3].astype(int) - 100).max() < 10
    assert preview[0, 1].astype(int).max() < 80  # the legend's dark band, top left
    small = OverlayWriter(tmp_path / "s", ["a"], max_side=32)
    small.add("x", (H, W), [LabelMask("a", SHAPES["disk"], 0.5)], image=image)
    assert Image.open(tmp_path / "s" / "overlay" / "x.jpg").size == (32, 24)


def test_writer_checks(tmp_path):
    with pytest.raises(ValueError, match="given twice"):
        PngWriter(tmp_path, ["a", "a"])
    with pytest.raises(ValueError, match="share the output folder"):
        PngWriter(tmp_path, ["a b", "a_b"])
    with pytest.raises(ValueError, match="unknown class"):
        YoloWriter(tmp_path, ["a"]).add("x", (H, W), [LabelMask("b", SHAPES["disk"], 1.0)])
    with pytest.raises(ValueError, match="does not match"):
        PngWriter(tmp_path, ["a"]).add("x", (H + 1, W), [LabelMask("a", SHAPES["disk"], 1.0)])
    with pytest.raises(ValueError, match="unknown format"):
        make_writer("tiff", tmp_path, ["a"])
    assert not list(tmp_path.rglob("*.tmp"))


def test_polygons_are_corner_pixels_in_raster_order():
    mask = np.zeros((40, 50), bool)
    mask[25:35, 2:8] = True  # starts lower: second
    mask[5:30, 20:45] = True  # first pixel (5, 20): first
    first, second = mask_polygons(mask)
    assert sorted(map(tuple, first.tolist())) == [(20, 5), (20, 29), (44, 5), (44, 29)]
    assert sorted(map(tuple, second.tolist())) == [(2, 25), (2, 34), (7, 25), (7, 34)]
    np.testing.assert_array_equal(rasterize_polygons([first, second], mask.shape), mask)


def _two_cats() -> LabelMask:
    left = np.zeros((H, W), bool)
    left[5:20, 4:20] = True
    right = np.zeros((H, W), bool)
    right[10:40, 18:50] = True  # touches the left one: one component in the class mask
    return LabelMask("cat", left | right, 0.9, None, [(right, 0.8), (encode_mask(left), 0.6)])


def test_instances_give_one_coco_annotation_and_one_yolo_row_each(tmp_path):
    cats = _two_cats()
    coco = CocoWriter(tmp_path, ["cat"])
    coco.add("img", (H, W), [cats])
    assert [a["score"] for a in coco.annotations] == [0.8, 0.6]
    areas = [a["area"] for a in coco.annotations]
    assert areas == [30 * 32, 15 * 16 - 10 * 2]  # the shared pixels go to the better cat
    yolo = YoloWriter(tmp_path, ["cat"])
    yolo.add("img", (H, W), [cats])
    rows = read_yolo_polygons(tmp_path / "yolo" / "img.txt", (H, W))
    assert len(rows) == 2  # the class mask alone would give one polygon
    single = YoloWriter(tmp_path / "single", ["cat"])
    single.add("img", (H, W), [LabelMask("cat", cats.mask, 0.9)])
    assert len(read_yolo_polygons(tmp_path / "single" / "yolo" / "img.txt", (H, W))) == 1


def test_instance_pngs_number_objects_best_first(tmp_path):
    writer = make_writer("instances", tmp_path, ["cat", "dog"])
    writer.add("img", (H, W), [_two_cats()])
    ids = np.asarray(Image.open(tmp_path / "instances" / "cat" / "img.png"))
    assert ids[30, 30] == 1 and ids[6, 6] == 2 and ids[45, 60] == 0
    assert ids[15, 19] == 1  # where the two overlap, the better-scoring object wins
    dog = np.asarray(Image.open(tmp_path / "instances" / "dog" / "img.png"))
    assert not dog.any()
    plain = make_writer("instances", tmp_path / "plain", ["cat"])
    plain.add("img", (H, W), [LabelMask("cat", SHAPES["disk"], 0.5)])
    ids = np.asarray(Image.open(tmp_path / "plain" / "instances" / "cat" / "img.png"))
    np.testing.assert_array_equal(ids == 1, SHAPES["disk"])


def test_one_yolo_row_per_instance_and_formats_agree_on_instances(tmp_path):
    from prosam.label.writers import CocoWriter, InstanceWriter

    rng = np.random.default_rng(0)
    cat = SHAPES["disk"].copy()
    specks = rng.random((H, W)) < 0.02  # specks and holes, as a real mask has
    cat = (cat & ~(rng.random((H, W)) < 0.05)) | specks
    inner = np.zeros((H, W), bool)
    inner[20:26, 20:26] = True  # a duplicate wholly inside the better instance
    overlapping = np.zeros((H, W), bool)
    overlapping[5:40, 40:70] = True  # shares pixels with the cat
    instances = [(cat, 0.9), (inner, 0.5), (overlapping, 0.7)]
    label = LabelMask("cat", cat | inner | overlapping, 0.9, instances=instances)
    coco = CocoWriter(tmp_path, ["cat"])
    coco.add("x", (H, W), [label])
    yolo = YoloWriter(tmp_path, ["cat"])
    yolo.add("x", (H, W), [label])
    png = InstanceWriter(tmp_path, ["cat"])
    png.add("x", (H, W), [label])
    anns = coco.to_dict()["annotations"]
    assert len(anns) == 2  # the contained duplicate is gone
    rows = (tmp_path / "yolo" / "x.txt").read_text().splitlines()
    assert len(rows) == len(anns)
    ids = np.asarray(Image.open(tmp_path / "instances" / "cat" / "x.png"))
    masks = [decode_mask(a["segmentation"]) for a in anns]
    assert not (masks[0] & masks[1]).any()  # disjoint
    for i, m in enumerate(masks):
        np.testing.assert_array_equal(ids == i + 1, m)
