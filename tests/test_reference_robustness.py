from __future__ import annotations

import numpy as np
import pytest
import torch

from prosam.backbones import build_backbone
from prosam.data.episodes import make_episodes
from prosam.data.specs import load_dataset_spec
from prosam.errors import InputError
from prosam.evaluation.evaluate import evaluate_episodes
from prosam.evaluation.reference_robustness import (
    evaluate_reference_robustness,
    parse_perturbation,
    to_markdown,
)
from prosam.methods import build_method
from prosam.methods.prompt_encoder.method import PromptEncoderMethod
from prosam.methods.prompt_encoder.network import PromptNetwork, PromptNetworkConfig
from prosam.sam import Predictor
from tests.fixtures_coco import write_coco_fixture


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_sam):
    dataset = load_dataset_spec(f"coco:{write_coco_fixture(tmp_path_factory.mktemp('c'))}")
    episodes = make_episodes(dataset, dataset.class_ids, n=3, seed=1, annotation="mask")
    return Predictor(tiny_sam), episodes


@pytest.fixture(scope="module")
def vrp(tiny_sam):
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    config = PromptNetworkConfig(method="vrp", backbone_input=64, dim=32, num_queries=4)
    torch.manual_seed(0)
    return PromptEncoderMethod(tiny_sam, backbone, PromptNetwork(config, backbone.mid_channels))


def test_parse_perturbation():
    assert parse_perturbation("annotation:noisy_box") == ("annotation", "noisy_box")
    assert parse_perturbation("prompt_noise:0.5") == ("prompt_noise", 0.5)
    for bad in ("annotation:lasso", "prompt_noise:-1", "prompt_noise:x", "noise:1"):
        with pytest.raises(InputError):
            parse_perturbation(bad)


def test_deterministic_references_agree_with_the_protocol_runner(tiny_sam, setting):
    predictor, episodes = setting
    method = build_method("persam", tiny_sam)
    report = evaluate_reference_robustness(
        method, predictor, episodes, ["annotation:mask", "annotation:point"], b=3, progress=False
    )
    mask = report["perturbations"]["annotation:mask"]
    assert mask["msf"] == pytest.approx(1.0) and mask["episodes"] == 3
    plain = evaluate_episodes(method, predictor, episodes, progress=False, distributed=False)
    assert mask["miou"] == pytest.approx(np.mean([r["iou"] for r in plain.records]))
    again = evaluate_reference_robustness(
        method, predictor, episodes, ["annotation:point"], b=3, progress=False
    )
    assert again["perturbations"]["annotation:point"] == report["perturbations"]["annotation:point"]
    assert "| annotation:mask |" in to_markdown(report)
    with pytest.raises(InputError, match="no prompt embeddings"):
        evaluate_reference_robustness(method, predictor, episodes, ["prompt_noise:1"], b=2)


def test_prompt_noise_zero_is_the_plain_prediction_and_large_noise_destabilises(vrp, setting):
    predictor, episodes = setting
    report = evaluate_reference_robustness(
        vrp,
        predictor,
        episodes,
        ["annotation:mask", "prompt_noise:0", "prompt_noise:50"],
        b=3,
        progress=False,
    )
    r = report["perturbations"]
    assert r["prompt_noise:0"]["miou"] == pytest.approx(r["annotation:mask"]["miou"])
    assert r["prompt_noise:0"]["msf"] == pytest.approx(1.0)
    assert r["prompt_noise:50"]["msf"] < 1.0


def test_cli_reference_robustness(tmp_path, capsys):
    import json

    from prosam.cli import main

    root = write_coco_fixture(tmp_path / "coco", images=6)
    data = ["--data", f"coco:{root}", "--fold", "0", "--folds", "2", "--classes", "all"]
    episodes = tmp_path / "eps.json"
    assert main(["episodes", "make", *data, "--n", "2", "--out", str(episodes)]) == 0
    out = tmp_path / "r.json"
    args = [
        "eval",
        "reference-robustness",
        *data,
        "--episodes",
        str(episodes),
        "--method",
        "persam",
        "--perturb",
        "annotation:mask,annotation:scribble",
        "--b",
        "2",
        "--json",
        str(out),
        "--md",
        str(tmp_path / "r.md"),
        "--model",
        "tiny",
        "--no-progress",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert set(report["perturbations"]) == {"annotation:mask", "annotation:scribble"}
    assert report["episodes"] == 2 and report["b"] == 2
    assert "| annotation:scribble |" in (tmp_path / "r.md").read_text()
    bad = [("annotation:lasso" if a == "annotation:mask,annotation:scribble" else a) for a in args]
    assert main(bad) != 0
    assert "annotation:lasso" in capsys.readouterr().err
