from __future__ import annotations

import json

import numpy as np
from PIL import Image

from prosam.cli import main
from tests.fixtures_coco import write_coco_fixture


def test_stable_train_then_robustness_and_predict(tmp_path, capsys):
    root = write_coco_fixture(tmp_path / "coco", images=4)
    model = ["--model", "tiny", "--cache-dir", str(tmp_path / "cache")]
    assert (
        main(
            [
                "stable",
                "train",
                "--data",
                f"coco:{root}",
                "--out",
                str(tmp_path / "st"),
                "--epochs",
                "1",
                "--max-objects",
                "6",
                "--no-progress",
                *model,
            ]
        )
        == 0
    )
    assert "trainable parameters" in capsys.readouterr().out
    ckpt = tmp_path / "st" / "best"
    out = tmp_path / "rob.json"
    assert (
        main(
            [
                "eval",
                "robustness",
                "--data",
                f"coco:{root}",
                "--kinds",
                "gt_box,noisy_box,points_1",
                "--b",
                "3",
                "--max-objects",
                "4",
                "--plugin",
                str(ckpt),
                "--json",
                str(out),
                "--md",
                str(tmp_path / "rob.md"),
                "--no-progress",
                *model,
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["objects"] == 4 and report["plugin"] == str(ckpt)
    assert (tmp_path / "rob.md").read_text().count("|") > 10
    image = root / "train" / "img001.png"
    mask = tmp_path / "m.png"
    assert (
        main(
            [
                "predict",
                str(image),
                "--box",
                "5,5,40,30",
                "--out",
                str(mask),
                "--stable",
                str(ckpt),
                *model,
            ]
        )
        == 0
    )
    assert np.asarray(Image.open(mask)).shape == (48, 64)
    code = main(
        [
            "eval",
            "robustness",
            "--data",
            f"coco:{root}",
            "--kinds",
            "bogus",
            "--json",
            str(out),
            *model,
        ]
    )
    assert code == 2 and "unknown prompt kinds" in capsys.readouterr().err
