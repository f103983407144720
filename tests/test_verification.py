from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from prosam.cli import main
from prosam.errors import InputError
from prosam.methods.prompt_encoder.verification import VerificationSettings, run_verification
from prosam.sam import Predictor


@pytest.fixture(scope="module")
def scene(tiny_sam):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[10:30, 15:45] = True
    return Predictor(tiny_sam).embed(image), image, mask


def _settings(**kw):
    base = dict(
        starts=2,
        tokens=3,
        init_std=1.0,
        lr=0.1,
        max_steps=4,
        patience=50,
        samples=2,
        eval_samples=3,
        perturbation_scales=(0.0, 0.5, 5.0),
        perturbation_draws=2,
    )
    return VerificationSettings(**{**base, **kw})


def test_report_shapes_and_zero_perturbation_equals_the_solution(tiny_sam, scene):
    embedded, _, mask = scene
    r = run_verification(tiny_sam, embedded, mask, _settings())
    assert len(r["singles"]) == 2 and len(r["distribution"]["samples"]) == 3
    assert all(s["steps"] == 4 for s in r["singles"]) and r["distribution"]["steps"] == 4
    curves = r["perturbation"]["singles"]
    assert [len(c) for c in curves] == [3, 3] and len(r["perturbation"]["mean"]) == 3
    # scale 0 re-scores the unperturbed solution
    for curve, single in zip(curves, r["singles"], strict=True):
        assert curve[0] == pytest.approx(single["iou"])
    assert r["perturbation"]["mean"][0] == pytest.approx(r["distribution"]["mean"]["iou"])
    beats = np.mean([r["distribution"]["mean"]["iou"] >= s["iou"] for s in r["singles"]])
    assert r["mean_beats_fraction"] == pytest.approx(beats)
    proj = r["projection"]
    assert len(proj["singles"]) == 2 and len(proj["samples"]) == 3 and len(proj["mean"]) == 2
    json.dumps(r)  # JSON-ready


def test_descent_lowers_the_loss_and_is_seeded(tiny_sam, scene):
    embedded, _, mask = scene
    short = run_verification(tiny_sam, embedded, mask, _settings(max_steps=1, lr=0.05))
    long = run_verification(tiny_sam, embedded, mask, _settings(max_steps=30, lr=0.05))
    assert np.mean([s["bce"] for s in long["singles"]]) < np.mean(
        [s["bce"] for s in short["singles"]]
    )
    assert long["distribution"]["mean"]["bce"] < short["distribution"]["mean"]["bce"]
    again = run_verification(tiny_sam, embedded, mask, _settings(max_steps=30, lr=0.05))
    assert again["singles"] == long["singles"] and again["perturbation"] == long["perturbation"]


def test_early_stopping_fires_when_the_loss_stalls(tiny_sam, scene):
    embedded, _, mask = scene
    r = run_verification(
        tiny_sam, embedded, mask, _settings(lr=1e-9, max_steps=50, patience=3, starts=1)
    )
    assert r["singles"][0]["steps"] == 4  # the first step sets the best; 3 more without gain


def test_bad_inputs(tiny_sam, scene):
    embedded, _, mask = scene
    with pytest.raises(InputError, match="non-empty"):
        run_verification(tiny_sam, embedded, np.zeros_like(mask), _settings())
    with pytest.raises(InputError, match="does not match"):
        run_verification(tiny_sam, embedded, mask[:, :50], _settings())
    with pytest.raises(InputError, match="starts"):
        VerificationSettings(starts=0)


def test_cli_writes_json_and_plot(tmp_path, scene, capsys):
    pytest.importorskip("matplotlib")
    _, image, mask = scene
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    args = [
        "study",
        "verification",
        "--image",
        str(tmp_path / "img.png"),
        "--mask",
        str(tmp_path / "mask.png"),
        "--out",
        str(tmp_path / "out"),
        "--starts",
        "2",
        "--tokens",
        "2",
        "--max-steps",
        "2",
        "--samples",
        "2",
        "--scales",
        "0,1",
        "--draws",
        "2",
        "--model",
        "tiny",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main(args) == 0
    report = json.loads((tmp_path / "out" / "verification.json").read_text())
    assert report["settings"]["starts"] == 2 and report["perturbation"]["scales"] == [0.0, 1.0]
    assert (tmp_path / "out" / "verification.png").stat().st_size > 1000
    assert "mean prompt IoU" in capsys.readouterr().out
