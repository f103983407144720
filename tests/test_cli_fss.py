from __future__ import annotations

import json

import pytest

from prosam.cli import main
from tests.fixtures_coco import write_coco_fixture


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco_fixture(tmp_path_factory.mktemp("coco"), images=10)


def _data_args(coco_root, classes="all"):
    return ["--data", f"coco:{coco_root}", "--fold", "0", "--folds", "2", "--classes", classes]


def _make(coco_root, out, *extra):
    return main(
        ["episodes", "make", *_data_args(coco_root), "--n", "12", "--out", str(out), *extra]
    )


def _eval(coco_root, episodes, *extra, classes="all"):
    """``prosam eval fss`` with the tiny model on an episode file of the fixture."""
    data = _data_args(coco_root, classes)
    return main(["eval", "fss", *data, "--episodes", str(episodes), "--model", "tiny", *extra])


def test_episode_files_are_seeded_and_split_by_target(coco_root, tmp_path):
    assert _make(coco_root, tmp_path / "a.json") == 0
    assert _make(coco_root, tmp_path / "b.json") == 0
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    assert (
        _make(
            coco_root,
            tmp_path / "t.json",
            "--val-fraction",
            "0.4",
            "--val-out",
            str(tmp_path / "v.json"),
        )
        == 0
    )
    test = json.loads((tmp_path / "t.json").read_text())
    val = json.loads((tmp_path / "v.json").read_text())
    assert test["count"] + val["count"] == 12
    assert not {e["target"] for e in test["episodes"]} & {e["target"] for e in val["episodes"]}
    assert val["meta"]["role"] == "validation" and test["meta"]["fold"] == 0


def test_eval_fss_writes_results_with_hashes(coco_root, tmp_path, capsys):
    episodes = tmp_path / "ep.json"
    assert _make(coco_root, episodes, "--annotation", "box") == 0
    out = tmp_path / "res.json"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    code = _eval(
        coco_root, episodes, "--method", "persam", "--json", str(out), "--no-progress", *cache
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["num_episodes"] == 12 and report["protocol"]["annotation"] == "box"
    assert report["episodes_hash"] == json.loads(episodes.read_text())["hash"]
    for block in ("original_size", "working_resolution"):
        s = report[block]["summary"]
        assert 0.0 <= s["miou_fss"] <= 1.0 and 0.0 <= s["fb_iou"] <= 1.0
    table = capsys.readouterr().out
    assert "mIoU (FSS" in table and "FB-IoU" in table


def test_eval_refuses_contradicting_arguments(coco_root, tmp_path, capsys):
    episodes = tmp_path / "ep.json"
    _make(coco_root, episodes)
    geometric = ["--method", "geometric", "--json", str(tmp_path / "r.json")]
    code = _eval(coco_root, episodes, *geometric, "--shots", "5")
    assert code == 2 and "contradicts" in capsys.readouterr().err
    code = _eval(coco_root, episodes, *geometric, classes="novel")
    assert code == 2 and "not in the novel classes" in capsys.readouterr().err
    code = main(
        [
            "eval",
            "fss",
            "--data",
            "coco:/nonexistent",
            "--fold",
            "0",
            "--method",
            "persam",
            "--json",
            str(tmp_path / "r.json"),
            "--model",
            "tiny",
        ]
    )
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_method_options_reach_the_method(coco_root, tmp_path, capsys):
    episodes = tmp_path / "ep.json"
    _make(coco_root, episodes)
    common = ["--no-progress", "--json", str(tmp_path / "r.json")]
    options = [
        "--method-option",
        "backbone=efficientnet_lite0",
        "--method-option",
        "backbone_input=64",
    ]
    code = _eval(coco_root, episodes, *common, "--method", "geometric", *options)
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["method_options"] == {"backbone": "efficientnet_lite0", "backbone_input": 64}
    code = _eval(
        coco_root, episodes, *common, "--method", "persam", "--method-option", "nonsense=1"
    )
    assert code == 2 and "nonsense" in capsys.readouterr().err


def test_eval_fss_with_and_without_a_stable_plugin(coco_root, tmp_path, tiny_sam):
    import torch

    from prosam.stable import StableSamPlugin, save_stable_plugin

    torch.manual_seed(0)
    plugin = StableSamPlugin.for_sam(tiny_sam, blocks=(0, 1))
    with torch.no_grad():
        for p in plugin.parameters():
            p.normal_(0.0, 0.5)  # non-zero offsets: the plugin is not the identity
    save_stable_plugin(tmp_path / "plugin", plugin, tiny_sam)
    episodes = tmp_path / "ep.json"
    assert _make(coco_root, episodes) == 0
    reports = {}
    for name, extra in (("plain", []), ("stable", ["--stable", str(tmp_path / "plugin")])):
        out = tmp_path / f"{name}.json"
        common = ["--method", "persam", "--json", str(out), "--no-progress"]
        assert _eval(coco_root, episodes, *common, *extra) == 0
        reports[name] = json.loads(out.read_text())
    assert reports["plain"]["stable_plugin"] is None
    assert reports["stable"]["stable_plugin"] == str(tmp_path / "plugin")
    assert reports["stable"]["decoder_backend"] == "torch"
    assert (
        reports["plain"]["evaluated_episodes_hash"] == reports["stable"]["evaluated_episodes_hash"]
    )
    ious = {k: [e["iou"] for e in r["episodes"]] for k, r in reports.items()}
    assert ious["plain"] != ious["stable"]
