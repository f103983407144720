from __future__ import annotations

import json

import numpy as np
from PIL import Image

from prosam.cli import main
from tests.fixtures_coco import write_coco_fixture


def test_stable_train_then_robustness_and_predict(tmp_path, capsys):
    root = write_coco_fixture(tmp_path / "coco", images=10)
    other = write_coco_fixture(tmp_path / "other", images=10, seed=1)
    model = ["--model", "tiny", "--cache-dir", str(tmp_path / "cache")]
    listed = tmp_path / "eval-images.txt"
    rob = ["eval", "robustness", "--data", f"coco:{root}", "--max-objects", "3"]
    dry = [*rob, "--json", str(tmp_path / "x.json"), "--list-images", str(listed), "--dry-run"]
    assert main([*dry, *model]) == 0
    excluded = listed.read_text().split()
    assert excluded and not (tmp_path / "x.json").exists()
    train = [
        "stable",
        "train",
        "--data",
        f"coco:{root}",
        "--data",
        f"coco:{other}",
        "--exclude-images",
        str(listed),
        "--val-fraction",
        "0.3",
        "--val-every",
        "4",
        "--out",
        str(tmp_path / "st"),
        "--epochs",
        "1",
        "--objects",
        "instances",
        "--no-progress",
        *model,
    ]
    assert main(train) == 0
    assert "trainable parameters" in capsys.readouterr().out
    summary = json.loads((tmp_path / "st" / "summary.json").read_text())
    first = [n for name, n in summary["object_counts"].items() if str(root) in name]
    n_first = sum(len(s) for s in _classes_per_image(root, exclude=excluded))
    assert summary["objects"] == sum(summary["object_counts"].values())
    assert 0 < first[0] < n_first  # listed images and validation images are left out
    assert len(summary["history"]) >= 2 and "val_miou" in summary["history"][-1]
    log = (tmp_path / "st" / "train.log").read_text()
    assert "validation objects" in log and "objects_seen" in log
    train[train.index("--epochs") + 1] = "2"
    assert main([*train, "--resume"]) == 0
    assert "resumed from" in (tmp_path / "st" / "train.log").read_text()
    summary2 = json.loads((tmp_path / "st" / "summary.json").read_text())
    assert summary2["objects_seen"] == 2 * summary["objects_seen"]
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


def _classes_per_image(root, exclude):
    doc = json.loads((root / "annotations" / "instances_train.json").read_text())
    names = {im["id"]: im["file_name"] for im in doc["images"]}
    per: dict[str, set[int]] = {}
    for a in doc["annotations"]:
        if names[a["image_id"]] not in exclude:
            per.setdefault(names[a["image_id"]], set()).add(a["category_id"])
    return list(per.values())
