"""Stable-SAM robust training strategy on the tiny SAM and a synthetic COCO dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prosam.core.checkpoint import load_checkpoint
from prosam.data.specs import load_dataset_spec
from prosam.errors import InputError
from prosam.sam import Predictor
from prosam.stable import (
    StableSamPlugin,
    StableTrainSettings,
    dataset_objects,
    is_attached,
    load_stable_plugin,
    train_stable,
)
from prosam.stable.train import choose_kind
from tests.fixtures_coco import write_coco_fixture


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = write_coco_fixture(tmp_path_factory.mktemp("coco"), images=3)
    return load_dataset_spec(f"coco:{root}")


def test_choose_kind_mixes_families():
    settings = StableTrainSettings()
    rng = np.random.default_rng(0)
    kinds = {choose_kind(settings, rng) for _ in range(200)}
    assert kinds == {"gt_box", "noisy_box", "points_1", "points_3", "points_10"}
    with pytest.raises(InputError):
        StableTrainSettings(prompt_kinds=("boxes",))


def test_train_stable_updates_only_the_plugin(tiny_sam, dataset, tmp_path):
    sam_state = {k: v.clone() for k, v in tiny_sam.sam.state_dict().items()}
    plugin = StableSamPlugin.for_sam(tiny_sam, blocks=(0, 1))
    before = {k: v.clone() for k, v in plugin.state_dict().items()}
    settings = StableTrainSettings(
        epochs=2,
        batch_size=3,
        occlusion=True,
        occlusion_prob=0.5,
        max_objects_per_epoch=6,
        seed=1,
    )
    val = list(dataset_objects(dataset, max_objects=2))
    logs: list[str] = []
    summary = train_stable(
        plugin,
        Predictor(tiny_sam),
        dataset,
        settings,
        tmp_path / "run",
        val_items=val,
        val_b=2,
        progress=False,
        log=logs.append,
    )
    assert not is_attached(tiny_sam)  # detached again: SAM is as found
    assert len(summary["history"]) == 3 and len(logs) == 3  # plain SAM, then one per epoch
    assert summary["objects_seen"] == sum(r["objects"] for r in summary["history"]) > 0
    start, *epochs = summary["history"]
    assert start["objects_seen"] == 0 and np.isnan(start["loss"]) and "val_miou" in start
    assert all(np.isfinite(r["loss"]) and r["objects"] > 0 for r in epochs)
    assert "val_miou" in summary["history"][0]
    assert summary["parameters"] == plugin.count_parameters()
    changed = [k for k, v in plugin.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("offset.out.weight") for k in changed)
    after = tiny_sam.sam.state_dict()
    assert all(torch.equal(after[k], v) for k, v in sam_state.items())
    loaded = load_stable_plugin(tmp_path / "run" / "last", tiny_sam)
    for k, v in plugin.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert (tmp_path / "run" / "best.json").is_file()


def _run(tiny_sam, dataset, out, epochs: int, *, resume: bool = False, stop_after: int = 0):
    """Train a fresh plugin (blocks 0, 1; seed 2); ``stop_after`` > 0 interrupts the run
    right after that many validation points were logged (their checkpoints written)."""
    torch.manual_seed(0)
    plugin = StableSamPlugin.for_sam(tiny_sam, blocks=(0, 1))
    settings = StableTrainSettings(epochs=epochs, batch_size=2, seed=2, occlusion=True)
    logs: list[str] = []

    def log(line: str) -> None:
        logs.append(line)
        if stop_after and sum("objects_seen" in x for x in logs) >= stop_after:
            raise KeyboardInterrupt

    val = list(dataset_objects(dataset, max_objects=2))
    summary = train_stable(
        plugin,
        Predictor(tiny_sam),
        dataset,
        settings,
        out,
        val_items=val,
        val_b=1,
        val_every=3,
        resume=resume,
        progress=False,
        log=log,
    )
    return plugin, summary, logs


def test_resume_reproduces_an_uninterrupted_run(tiny_sam, dataset, tmp_path):
    whole, summary, _ = _run(tiny_sam, dataset, tmp_path / "whole", epochs=2)
    n_objects = sum(len(s.classes) for s in dataset)
    assert summary["objects_seen"] == 2 * n_objects
    curve = [r["objects_seen"] for r in summary["history"]]
    assert curve == sorted(curve) and curve[-1] == 2 * n_objects and len(curve) >= 4
    # stopped mid-epoch (after the second validation point), then at an epoch's end
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_sam, dataset, tmp_path / "cut", epochs=2, stop_after=2)
    assert load_checkpoint(tmp_path / "cut" / "last").extra["position"]["batch"] > 0
    _run(tiny_sam, dataset, tmp_path / "cut", epochs=1, resume=True)
    resumed, summary2, logs = _run(tiny_sam, dataset, tmp_path / "cut", epochs=2, resume=True)
    assert logs[0].startswith("resumed from")
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=1e-6)
    assert [r["objects_seen"] for r in summary2["history"]] == curve
    for a, b in zip(summary["history"], summary2["history"], strict=True):
        assert a["val"] == pytest.approx(b["val"], abs=1e-6)
    best = load_checkpoint(tmp_path / "whole" / "best").extra
    assert best["best"] == max(r["val_miou"] for r in summary["history"])


def test_resume_refuses_other_settings_or_data(tiny_sam, dataset, tmp_path):
    _run(tiny_sam, dataset, tmp_path / "run", epochs=1)
    plugin = StableSamPlugin.for_sam(tiny_sam, blocks=(0, 1))
    with pytest.raises(InputError, match="batch_size"):
        train_stable(
            plugin,
            Predictor(tiny_sam),
            dataset,
            StableTrainSettings(epochs=2, batch_size=3, seed=2, occlusion=True),
            tmp_path / "run",
            resume=True,
            progress=False,
            log=lambda _: None,
        )
    fewer = list(dataset_objects(dataset, max_objects=3))
    with pytest.raises(InputError, match="same data"):
        train_stable(
            plugin,
            Predictor(tiny_sam),
            fewer,
            StableTrainSettings(epochs=2, batch_size=2, seed=2, occlusion=True),
            tmp_path / "run",
            resume=True,
            progress=False,
            log=lambda _: None,
        )
    assert not is_attached(tiny_sam)  # a refused resume leaves SAM as found
