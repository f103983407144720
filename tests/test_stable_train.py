"""Stable-SAM robust training strategy on the tiny SAM and a synthetic COCO dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
        split_components=True,
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
    assert len(summary["history"]) == 2 and len(logs) == 2
    assert all(np.isfinite(r["loss"]) and r["objects"] > 0 for r in summary["history"])
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
