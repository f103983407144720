"""Several classes in one labelling pass: each pixel to at most one class, the joint (CPC)
path fitted once per job, outputs that agree with each other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import prosam.methods.cpc.bilevel as bilevel
from prosam.errors import InputError
from prosam.io import read_label_map
from prosam.label.api import Segmenter
from prosam.label.joint import CALIBRATION_STEM, JointClasses
from prosam.label.prediction import predict_classes
from prosam.label.writers import decode_mask
from prosam.methods.base import InstanceMask, MethodOutput, Target
from prosam.sam import Predictor

FAST = {"num_sets": 2, "outer_steps": 1}


class Band:
    """A stub whose logits are ``value`` over columns [c0, c1) of the padded square, -8
    elsewhere; optionally one instance covering the same band."""

    name = "band"

    def __init__(self, c0: float, c1: float, value: float, instance: bool = False) -> None:
        self.c0, self.c1, self.value, self.instance = c0, c1, value, instance

    def fit(self, references) -> None:
        pass

    def predict(self, target: Target) -> MethodOutput:
        g = target.embedded.geometry
        side = g.image_size // 4
        logits = torch.full((1, side, side), -8.0)
        w = side * g.input_size[1] / g.image_size
        logits[..., int(self.c0 * w) : int(self.c1 * w)] = self.value
        instances = [InstanceMask(logits.clone(), 0.7)] if self.instance else []
        return MethodOutput(logits, 0.9, {}, instances)


@pytest.fixture(scope="module")
def predictor(tiny_sam) -> Predictor:
    return Predictor(tiny_sam)


def test_each_pixel_goes_to_the_class_of_highest_logit(predictor):
    image = np.full((48, 64, 3), 90, np.uint8)
    methods = {"a": Band(0.0, 0.66, 2.0, instance=True), "b": Band(0.33, 1.0, 4.0)}
    kept = predict_classes(methods, predictor, image, min_area_fraction=0.0)
    a, b = (p.mask for p in kept)
    assert a.any() and b.any() and not (a & b).any()
    alone = predict_classes(methods, predictor, image, min_area_fraction=0.0, overlaps="keep")
    middle = alone[0].mask & alone[1].mask
    # the overlap goes to b (logit 4 > 2), but for b's rising edge where a's 2 is higher
    assert middle.any() and b[middle].mean() > 0.8 and a[middle].any()
    assert not (a & ~alone[0].mask).any() and not (b & ~alone[1].mask).any()
    assert ((a | b) == (alone[0].mask | alone[1].mask)).all()
    ((instance, _),) = kept[0].instances
    assert (instance == a).all()  # the instance is cut to its class's resolved mask
    with pytest.raises(InputError, match="overlaps"):
        predict_classes(methods, predictor, image, overlaps="merge")


def test_a_class_left_too_small_by_the_resolution_is_dropped(predictor):
    image = np.full((48, 64, 3), 90, np.uint8)
    methods = {"small": Band(0.4, 0.6, 2.0), "big": Band(0.0, 1.0, 5.0)}
    small, big = predict_classes(methods, predictor, image, min_area_fraction=0.01)
    assert not small.kept and not small.mask.any() and big.kept and big.mask.all()


def _scene(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A dark image with a bright square (class "light") and a mid-grey one ("grey")."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 30, (h, w, 3), dtype=np.uint8)
    light, grey = np.zeros((h, w), bool), np.zeros((h, w), bool)
    y, x = rng.integers(2, h // 3), rng.integers(2, w // 4)
    light[y : y + h // 3, x : x + w // 4] = True
    grey[y : y + h // 3, x + w // 2 : x + w // 2 + w // 4] = True
    img[light], img[grey] = 230, 130
    return img, light, grey


def _segmenter(tiny_sam, predictor) -> Segmenter:
    seg = Segmenter(tiny_sam, "cpc", predictor=predictor, method_options=FAST)
    image, light, grey = _scene(48, 64, 0)
    return seg.fit([(image, light, "light"), (image, grey, "grey")])


def _targets(root: Path, n: int = 3) -> list[Path]:
    paths = []
    for i in range(n):
        p = root / f"t{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_scene(40 + 4 * i, 60, i + 1)[0]).save(p)
        paths.append(p)
    return paths


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


FORMATS = ["png", "png-indexed", "instances", "coco", "yolo", "overlay"]


def test_cpc_labels_every_class_in_one_pass_and_the_formats_agree(tmp_path, tiny_sam, predictor):
    seg = _segmenter(tiny_sam, predictor)
    assert isinstance(next(iter(seg.methods.values())).joint, JointClasses)
    targets = _targets(tmp_path / "t")
    out = tmp_path / "out"
    summary = seg.label(targets, out, formats=FORMATS, workers=0, progress=False)
    assert summary.finalized and summary.failed == 0
    job = json.loads((out / "job.json").read_text())
    assert len(job["calibration"]) == 1 and (out / f"{CALIBRATION_STEM}.safetensors").is_file()
    coco = json.loads((out / "coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["light", "grey"]
    for t in targets:
        key = t.stem
        light = np.asarray(Image.open(out / "png" / "light" / f"{key}.png")) > 0
        grey = np.asarray(Image.open(out / "png" / "grey" / f"{key}.png")) > 0
        assert not (light & grey).any()  # no pixel in two classes
        labels = read_label_map(out / "png" / f"{key}.png")
        assert ((labels == 1) == light).all() and ((labels == 2) == grey).all()
        image_id = next(im["id"] for im in coco["images"] if im["file_name"] == t.name)
        for ann in (a for a in coco["annotations"] if a["image_id"] == image_id):
            mask = decode_mask(ann["segmentation"])
            assert not (mask & ~(light if ann["category_id"] == 1 else grey)).any()
        lines = (out / "yolo" / f"{key}.txt").read_text().splitlines()
        assert {int(line.split()[0]) for line in lines} <= {0, 1}


def test_a_resumed_cpc_job_reloads_its_calibration_and_ends_identical(
    tmp_path, tiny_sam, predictor, monkeypatch
):
    targets = _targets(tmp_path / "t")
    calls = []
    real_run = bilevel.BilevelCalibrator.run

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(bilevel.BilevelCalibrator, "run", counted)
    full = tmp_path / "full"
    _segmenter(tiny_sam, predictor).label(targets, full, formats=FORMATS, workers=0, progress=False)
    assert len(calls) == 1  # fitted once for the whole job, not per target

    part = tmp_path / "part"
    _segmenter(tiny_sam, predictor).label(
        targets[:1], part, formats=FORMATS, workers=0, progress=False
    )
    assert len(calls) == 2
    (part / "job.json").unlink()  # the first run saw one target; the job is the same
    (part / "targets.json").unlink()
    again = _segmenter(tiny_sam, predictor)
    summary = again.label(targets, part, formats=FORMATS, workers=0, progress=False)
    assert len(calls) == 2  # the saved calibration was loaded, not fitted again
    assert summary.skipped == 1 and summary.processed == len(targets) - 1
    assert _tree(part) == _tree(full)


def test_a_changed_calibration_is_not_loaded(tmp_path, tiny_sam, predictor):
    targets = _targets(tmp_path / "t", 1)
    out = tmp_path / "out"
    _segmenter(tiny_sam, predictor).label(targets, out, formats=["png"], workers=0, progress=False)
    meta = out / f"{CALIBRATION_STEM}.json"
    doc = json.loads(meta.read_text())
    doc["config"]["key"] = "another job"
    meta.write_text(json.dumps(doc))
    _segmenter(tiny_sam, predictor).label(
        targets, out, formats=["png"], workers=0, progress=False, restart=True
    )
    assert json.loads(meta.read_text())["config"]["key"] != "another job"  # fitted again


def test_a_class_without_a_usable_reference_is_refused(tiny_sam, predictor):
    image, light, _ = _scene(48, 64, 0)
    seg = Segmenter(tiny_sam, "cpc", predictor=predictor, method_options=FAST)
    with pytest.raises(InputError, match="empty"):
        seg.fit([(image, light, "light"), (image, np.zeros_like(light), "grey")])
    assert seg.methods == {}  # nothing fitted
    seg.fit([(image, light, "light")])
    with pytest.raises(InputError, match="at least one reference"):
        JointClasses(seg.methods["light"].joint.method, {"light": []})


def test_the_cli_labels_two_classes_and_keeps_overlaps_when_asked(tmp_path, capsys):
    from prosam.cli import main

    image, light, grey = _scene(48, 64, 0)
    Image.fromarray(image).save(tmp_path / "ref.png")
    Image.fromarray((light * 255).astype(np.uint8)).save(tmp_path / "light.png")
    Image.fromarray((grey * 255).astype(np.uint8)).save(tmp_path / "grey.png")
    targets = _targets(tmp_path / "t", 2)
    args = [
        "label", "--ref", str(tmp_path / "ref.png"), "--ref-mask", str(tmp_path / "light.png"),
        "--class", "light", "--ref", str(tmp_path / "ref.png"), "--ref-mask",
        str(tmp_path / "grey.png"), "--class", "grey", *map(str, targets), "--model", "tiny",
        "--method", "persam", "--no-progress", "--workers", "0", "--no-embedding-cache",
    ]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--overlaps", "keep"]) == 0
    for folder, rule in (("a", "resolve"), ("b", "keep")):
        assert json.loads((tmp_path / folder / "job.json").read_text())["overlaps"] == rule
        for t in targets:
            light = np.asarray(Image.open(tmp_path / folder / "png" / "light" / f"{t.stem}.png"))
            grey = np.asarray(Image.open(tmp_path / folder / "png" / "grey" / f"{t.stem}.png"))
            if rule == "resolve":
                assert not ((light > 0) & (grey > 0)).any()
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "c"), "--overlaps", "merge"])
    assert "invalid choice" in capsys.readouterr().err


def test_segment_takes_several_classes(tmp_path, capsys):
    from prosam.cli import main

    image, light, _ = _scene(48, 64, 0)
    Image.fromarray(image).save(tmp_path / "ref.png")
    Image.fromarray((light * 255).astype(np.uint8)).save(tmp_path / "light.png")
    targets = _targets(tmp_path / "t", 2)
    out = tmp_path / "masks"
    code = main(
        [
            "segment", "--ref", str(tmp_path / "ref.png"), "--ref-mask",
            str(tmp_path / "light.png"), "--class", "light", "--ref", str(tmp_path / "ref.png"),
            "--ref-box", "34,2,60,20", "--class", "grey", str(tmp_path / "t"), "--out", str(out),
            "--model", "tiny", "--method", "persam", "--no-progress", "--no-embedding-cache",
            "--instances",
        ]
    )  # fmt: skip
    assert code == 0
    for t in targets:
        a = np.asarray(Image.open(out / "light" / f"{t.stem}.png")) > 0
        b = np.asarray(Image.open(out / "grey" / f"{t.stem}.png")) > 0
        assert a.shape == b.shape == np.asarray(Image.open(t)).shape[:2] and not (a & b).any()
        assert (out / "light" / f"{t.stem}-instances.png").is_file()
    rows = (out / "review.csv").read_text().splitlines()
    assert rows[0].startswith("rank,file_name,class") and {r.split(",")[2] for r in rows[1:]} <= {
        "light",
        "grey",
    }
    assert main(["segment", str(tmp_path / "t"), "--out", str(out), "--model", "tiny"]) == 2
    assert "give at least one --ref" in capsys.readouterr().err
