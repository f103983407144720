from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

import prosam.label
from prosam.cli.label import add_parser as add_label_parser
from prosam.cli.label import parse_formats, parse_shard
from prosam.errors import InputError
from prosam.io import write_mask_png
from prosam.label.api import annotation_to_mask
from prosam.label.targets import expand_label_targets


def _image(seed: int, h: int = 40, w: int = 52) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    img[8:24, 10:30] = 220
    return img


@pytest.fixture
def files(tmp_path):
    ref, mask = tmp_path / "ref.png", tmp_path / "ref_mask.png"
    Image.fromarray(_image(0)).save(ref)
    m = np.zeros((40, 52), bool)
    m[8:24, 10:30] = True
    write_mask_png(mask, m)
    targets = []
    for i in range(3):
        p = tmp_path / "targets" / f"t{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(_image(i + 1, 40 + i)).save(p)
        targets.append(p)
    return ref, mask, targets


def test_annotation_forms():
    size = (20, 30)
    m = np.zeros(size, np.uint8)
    m[2:5, 3:9] = 255
    mask, kind = annotation_to_mask(m, size)
    assert kind == "mask" and mask.sum() == 18
    box, kind = annotation_to_mask({"box": [3, 2, 9, 5]}, size)
    assert kind == "box" and np.array_equal(box, mask)
    pts, kind = annotation_to_mask({"points": [[4, 4], [20, 10]]}, size)
    assert kind == "point" and pts[4, 4] and pts[10, 20]
    assert annotation_to_mask({"scribble": m > 0}, size)[1] == "scribble"
    for bad, match in [
        (np.zeros(size), "empty"),
        (np.ones((5, 5)), r"\(5, 5\)"),
        ({"box": [5, 5, 1, 1]}, "x0<=x1"),
        ({"points": [[40, 1]]}, "outside"),
        ({"box": [0, 0, 1, 1], "points": [[1, 1]]}, "exactly one"),
    ]:
        with pytest.raises(InputError, match=match):
            annotation_to_mask(bad, size)


def test_load_fit_predict_and_save(tmp_path, files, tiny_sam):
    ref, mask, targets = files
    seg = prosam.label.load(method="persam", model=tiny_sam)
    seg.fit(
        [
            (ref, mask),
            (_image(0), {"box": [10, 8, 30, 24]}),
            (str(ref), {"points": [[15, 12], [20, 16]]}, "other"),
        ]
    )
    assert seg.classes == ["object", "other"] and len(seg.references["object"]) == 2
    results = seg.predict([_image(7), *targets])
    assert [r.key for r in results] == ["image_0", "t0", "t1", "t2"]
    for r, h in zip(results, [40, 40, 41, 42], strict=True):
        assert r.image_size == (h, 52) and set(r.masks) == {"object", "other"}
        assert all(m.shape == (h, 52) and m.dtype == bool for m in r.masks.values())
        assert set(r.scores) == set(r.uncertainty) == {"object", "other"}
    seg.save_png(results, tmp_path / "out")
    seg.save_png(results, tmp_path / "out", indexed=True)
    coco_path = seg.save_coco(results, tmp_path / "out")
    seg.save_yolo(results, tmp_path / "out")
    seg.save_overlay(results, tmp_path / "out")
    out = tmp_path / "out"
    assert len(list((out / "png" / "other").glob("*.png"))) == 4
    assert len(list((out / "png").glob("*.png"))) == 4
    assert len(list((out / "overlay").glob("*.jpg"))) == 4
    assert (out / "yolo" / "classes.txt").read_text() == "object\nother\n"
    coco = json.loads(coco_path.read_text())
    assert [i["file_name"] for i in coco["images"]] == ["image_0", "t0.png", "t1.png", "t2.png"]
    found = sum(len(r.found) for r in results)
    assert len(coco["annotations"]) == found


def test_label_job_through_the_api_is_resumable(tmp_path, files, tiny_sam):
    ref, mask, targets = files
    seg = prosam.label.load(model=tiny_sam).fit([(ref, mask, "thing")])
    first = seg.label(targets, tmp_path / "out", workers=0, progress=False)
    assert first.processed == 3 and first.finalized
    again = seg.label(targets, tmp_path / "out", workers=0, progress=False)
    assert again.skipped == 3 and again.processed == 0
    other = prosam.label.load(model=tiny_sam).fit([(ref, {"box": [0, 0, 10, 10]}, "thing")])
    with pytest.raises(InputError, match="references"):
        other.label(targets, tmp_path / "out", workers=0, progress=False)


def test_a_job_is_not_resumed_by_a_method_reading_other_features(tmp_path, files, tiny_sam):
    ref, mask, targets = files
    fast = prosam.label.load("matcher_fast", tiny_sam).fit([(ref, mask, "thing")])
    accurate = prosam.label.load("matcher_fast", tiny_sam, extra_feature_sizes=[96])
    accurate.fit([(ref, mask, "thing")])
    assert fast.fingerprint()["features"] != accurate.fingerprint()["features"]
    assert "features" not in prosam.label.load("persam", tiny_sam).fit([(ref, mask)]).fingerprint()
    fast.label(targets[:1], tmp_path / "out", workers=0, progress=False)
    # a job begun by a version whose matcher_fast read other features (same options)
    job = tmp_path / "out" / "job.json"
    config = json.loads(job.read_text())
    config["features"] = ["efficientnet_lite0:mid1,high:512:older"]
    job.write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"differs in: features\)"):
        fast.label(targets[:1], tmp_path / "out", workers=0, progress=False)


def test_a_job_begun_at_another_encoder_precision_names_it(tmp_path, files, tiny_sam):
    ref, mask, targets = files
    seg = prosam.label.load("persam", tiny_sam).fit([(ref, mask, "thing")])
    seg.label(targets[:1], tmp_path / "out", workers=0, progress=False)
    job = tmp_path / "out" / "job.json"
    config = json.loads(job.read_text())
    assert "encoder" not in config  # PyTorch's embeddings
    config["encoder"] = "openvino-bf16"  # as a job begun with --precision bf16 records it
    job.write_text(json.dumps(config))
    with pytest.raises(InputError, match="it ran SAM's encoder at openvino-bf16, this run at fp32"):
        seg.label(targets[:1], tmp_path / "out", workers=0, progress=False)


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="prosam")
    add_label_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_label_two_classes_then_finalize(tmp_path, files):
    ref, mask, _ = files
    (tmp_path / "list.txt").write_text("# targets\ntargets/t0.png\n\n")
    (tmp_path / "targets" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    common = ["--model", "tiny", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    argv = [
        "label",
        "--ref", str(ref), "--ref-mask", str(mask), "--class", "cat",
        "--ref", str(ref), "--ref-box", "10,8,30,24", "--class", "dog",
        str(tmp_path / "targets"), f"@{tmp_path / 'list.txt'}",
        "--out", str(tmp_path / "out"),
        "--format", "png,coco,yolo",
        "--workers", "0",
        *common,
    ]  # fmt: skip
    assert _run_cli(argv) == 1  # broken.jpg failed, the others are labelled
    out = tmp_path / "out"
    coco = json.loads((out / "coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]
    assert [i["file_name"] for i in coco["images"]] == ["t0.png", "t1.png", "t2.png"]
    assert [f["file_name"] for f in json.loads((out / "failures.json").read_text())] == [
        "broken.jpg"
    ]
    assert _run_cli(["label", "--out", str(out), "--finalize", "--format", "coco"]) == 1
    (tmp_path / "targets" / "broken.jpg").unlink()
    assert _run_cli(argv) == 0


def test_cli_argument_checks(tmp_path):
    assert parse_shard("1/3") == (1, 3)
    assert parse_formats("png,coco,png") == ["png", "coco"]
    for bad in ("3/3", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_shard(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_formats("png,tiff")
    with pytest.raises(SystemExit):
        _run_cli(["label", "--ref-mask", "m.png", "t.png", "--out", "o"])  # mask before --ref
    with pytest.raises(SystemExit):
        _run_cli(
            ["label", "--ref", "r.png", "--ref-mask", "a", "--ref-box", "0,0,1,1", "--out", "o"]
        )
    with pytest.raises(InputError, match="--ref-mask"):
        _run_cli(["label", "--ref", "r.png", "t.png", "--out", str(tmp_path)])
    with pytest.raises(InputError, match="no such file"):
        expand_label_targets([str(tmp_path / "missing.png")])


def test_a_calibrated_presence_threshold_is_the_default_score_threshold(tiny_sam):
    from prosam.label.defaults import DEFAULT_SCORE_THRESHOLD, default_score_threshold
    from prosam.methods.registry import MethodSpec, register_method, unregister_method

    register_method(
        MethodSpec(
            "calibrated_test", "prosam.methods.persam:PerSAM", "test", presence_threshold=0.7
        )
    )
    try:
        assert default_score_threshold("calibrated_test") == 0.7
        assert default_score_threshold("persam") == DEFAULT_SCORE_THRESHOLD
        assert prosam.label.load("calibrated_test", tiny_sam).score_threshold == 0.7
        told = prosam.label.load("calibrated_test", tiny_sam, score_threshold=0.1)
        assert told.score_threshold == 0.1
        assert prosam.label.load("persam", tiny_sam).score_threshold == DEFAULT_SCORE_THRESHOLD
    finally:
        unregister_method("calibrated_test")
