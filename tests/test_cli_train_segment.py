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


def test_train_writes_a_loadable_checkpoint_with_its_config(run):
    _, tmp, _, _ = run
    config = json.loads((tmp / "prosam" / "best.json").read_text())["config"]
    assert config["model"]["method"] == "prosam" and config["sam_model"] == "tiny"
    assert config["fold"] == 0 and config["train_classes"] == [2, 4]
    summary = json.loads((tmp / "prosam" / "summary.json").read_text())
    assert len(summary["history"]) == 1 and "val_miou" in summary["history"][0]


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
                "--no-progress",
            ]
        )
        == 0
    )
    ref = root / "train" / "img000.png"
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 10:40] = 255
    Image.fromarray(mask).save(tmp_path / "ref_mask.png")
    out = tmp_path / "masks"
    assert (
        main(
            [
                "segment",
                "--ref",
                str(ref),
                "--ref-mask",
                str(tmp_path / "ref_mask.png"),
                str(root / "train"),
                "--out",
                str(out),
                "--method",
                "prosam",
                "--checkpoint",
                ckpt,
                "--model",
                "tiny",
                "--no-embedding-cache",
            ]
        )
        == 0
    )
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"img{i:03d}.png" for i in range(8)]
    assert np.asarray(Image.open(out / "img003.png")).shape == (48, 64)
    # a VRP method refuses a ProSAM checkpoint, and a trained method needs one
    assert (
        main(
            [
                "segment",
                "--ref",
                str(ref),
                "--ref-box",
                "5,5,30,30",
                str(ref),
                "--out",
                str(out),
                "--method",
                "vrp",
                "--checkpoint",
                ckpt,
                "--model",
                "tiny",
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "segment",
                "--ref",
                str(ref),
                "--ref-points",
                "20,20",
                str(ref),
                "--out",
                str(out),
                "--method",
                "prosam",
                "--model",
                "tiny",
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "segment",
                "--ref",
                str(ref),
                "--ref-points",
                "20,20",
                str(ref),
                "--out",
                str(tmp_path / "p"),
                "--method",
                "persam",
                "--model",
                "tiny",
            ]
        )
        == 0
    )
