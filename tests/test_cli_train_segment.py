from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from prosam.cli import main
from tests.fixtures_coco import write_coco_fixture


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = write_coco_fixture(tmp_path_factory.mktemp("coco"), images=8)
    tmp = tmp_path_factory.mktemp("run")
    common = [
        "--data",
        f"coco:{root}",
        "--fold",
        "0",
        "--folds",
        "2",
        "--model",
        "tiny",
        "--cache-dir",
        str(tmp / "cache"),
    ]
    val = tmp / "val.json"
    assert (
        main(["episodes", "make", *common[:6], "--classes", "novel", "--n", "3", "--out", str(val)])
        == 0
    )
    code = main(
        [
            "train",
            *common,
            "--method",
            "prosam",
            "--out",
            str(tmp / "prosam"),
            "--epochs",
            "1",
            "--episodes-per-epoch",
            "2",
            "--samples",
            "2",
            "--backbone-input",
            "64",
            "--val-episodes",
            str(val),
            "--no-progress",
        ]
    )
    assert code == 0
    return root, tmp, common, val


def _segment(ref, annotation, target, out, method, *extra):
    """``prosam segment`` with the tiny model: one reference annotated by ``annotation``."""
    reference = ["--ref", str(ref), *annotation]
    options = ["--out", str(out), "--method", method, "--model", "tiny", *extra]
    return main(["segment", *reference, str(target), *options])


def test_train_writes_a_loadable_checkpoint_with_its_config(run):
    _, tmp, _, _ = run
    config = json.loads((tmp / "prosam" / "best.json").read_text())["config"]
    assert config["model"]["method"] == "prosam" and config["sam_model"] == "tiny"
    assert config["fold"] == 0 and config["train_classes"] == [2, 4]
    summary = json.loads((tmp / "prosam" / "summary.json").read_text())
    assert len(summary["history"]) == 1 and "val_miou" in summary["history"][0]
    record = summary["history"][0]
    assert record["reference_gain"] == pytest.approx(
        record["val_miou"] - record["val_miou_wrong_reference"]
    )
    assert 0.0 <= record["prediction_overlap"] <= 1.0
    best = json.loads((tmp / "prosam" / "best.json").read_text())
    assert "reference_gain" in best["extra"]["history"][0]


def test_eval_and_segment_with_the_trained_checkpoint(run, tmp_path):
    root, tmp, common, val = run
    ckpt = str(tmp / "prosam" / "best")
    assert (
        main(
            [
                "eval",
                "fss",
                *common,
                "--method",
                "prosam",
                "--checkpoint",
                ckpt,
                "--episodes",
                str(val),
                "--json",
                str(tmp_path / "r.json"),
                "--wrong-reference",
                "--no-progress",
            ]
        )
        == 0
    )
    dep = json.loads((tmp_path / "r.json").read_text())["reference_dependence"]
    assert set(dep) == {
        "miou_fss",
        "miou_fss_wrong_reference",
        "reference_gain",
        "prediction_overlap",
    }
    ref = root / "train" / "img000.png"
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 10:40] = 255
    Image.fromarray(mask).save(tmp_path / "ref_mask.png")
    out = tmp_path / "masks"
    mask_args = ["--ref-mask", str(tmp_path / "ref_mask.png")]
    extra = ["--checkpoint", ckpt, "--no-embedding-cache"]
    assert _segment(ref, mask_args, root / "train", out, "prosam", *extra) == 0
    written = sorted(p.name for p in out.iterdir() if p.suffix == ".png")
    assert written == [f"img{i:03d}.png" for i in range(8)]
    assert np.asarray(Image.open(out / "img003.png")).shape == (48, 64)
    # a VRP method refuses a ProSAM checkpoint, and a trained method needs one
    box = ["--ref-box", "5,5,30,30"]
    assert _segment(ref, box, ref, out, "vrp", "--checkpoint", ckpt) == 2
    points = ["--ref-points", "20,20"]
    assert _segment(ref, points, ref, out, "prosam") == 2
    assert _segment(ref, points, ref, tmp_path / "p", "persam") == 0


def test_train_classes_all_is_honoured_and_novel_refused(run, tmp_path, capsys):
    _, _, common, val = run
    base = [
        "train",
        *common,
        "--method",
        "vrp",
        "--epochs",
        "1",
        "--episodes-per-epoch",
        "2",
        "--backbone-input",
        "64",
        "--no-progress",
    ]
    assert main([*base, "--classes", "all", "--out", str(tmp_path / "all")]) == 0
    config = json.loads((tmp_path / "all" / "best.json").read_text())["config"]
    assert config["train_classes"] == [1, 2, 3, 4]  # nothing held out
    assert main([*base, "--classes", "novel", "--out", str(tmp_path / "n")]) != 0
    assert "novel classes" in capsys.readouterr().err
    # all classes overlap any validation list of the fold: refused, not silently mixed
    assert (
        main([*base, "--classes", "all", "--val-episodes", str(val), "--out", str(tmp_path / "v")])
        != 0
    )


def test_train_with_extra_data_and_an_episode_mix(run, tmp_path, capsys):
    from tests.fixtures_coco import write_boxes_coco

    _, _, common, _ = run
    extra = write_boxes_coco(
        tmp_path / "more",
        ["bar", "dot", "grass"],
        {f"e{i}.jpg": [("bar", (0, 0, 30, 20)), ("dot", (35, 5, 55, 35))] for i in range(3)},
    )
    args = [
        "train",
        *common,
        "--method",
        "vrp",
        "--epochs",
        "1",
        "--episodes-per-epoch",
        "8",
        "--backbone-input",
        "64",
        "--extra-data",
        f"coco:{extra}",
        "--paired",
        "0.5",
        "--absent",
        "0.25",
        "--prior",
        "fused",
        "--prior-bidirectional",
        "--prior-keep",
        "0.5",
        "--target-values",
        "sam",
        "--no-target-residual",
        "--out",
        str(tmp_path / "mix"),
        "--no-progress",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "3 images joined" in out and "dropped: grass" in out
    config = json.loads((tmp_path / "mix" / "best.json").read_text())["config"]
    assert config["extra_data"] == [f"coco:{extra}"]
    model = config["model"]
    assert (model["pseudo_mask_source"], model["bidirectional_prior"]) == ("fused", True)
    assert (model["prior_keep"], model["target_values"], model["target_residual"]) == (
        0.5,
        "sam",
        False,
    )
    summary = json.loads((tmp_path / "mix" / "summary.json").read_text())
    assert summary["settings"]["paired_fraction"] == 0.5
    assert main([*args[:-3], "--paired", "0.9", "--out", str(tmp_path / "bad")]) != 0
    assert "sum to at most 1" in capsys.readouterr().err
    anchored = [*args[:-3], "--anchor-points", "2", "--out", str(tmp_path / "bad2")]
    assert main(anchored) != 0  # anchors need the matcher's prior, not --prior fused
    assert "anchor points are placed on a method's prior" in capsys.readouterr().err
