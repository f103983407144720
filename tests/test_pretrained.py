from __future__ import annotations

import pytest
import torch

import prosam.pretrained as pretrained
from prosam.backbones import build_backbone
from prosam.cli import main
from prosam.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from prosam.errors import InputError, WeightsError
from prosam.methods.prompt_encoder.loading import load_prompt_network
from prosam.methods.prompt_encoder.network import PromptNetwork, PromptNetworkConfig
from prosam.stable import StableSamPlugin, attach_stable_plugin, load_stable_plugin
from prosam.stable.checkpoint import save_stable_plugin
from prosam.stable.plugin import attached_plugin_digest


@pytest.fixture()
def bundle(tmp_path, monkeypatch):
    """Point the bundled-checkpoint folder at an empty temporary one."""
    folder = tmp_path / "bundled"
    folder.mkdir()
    monkeypatch.setattr(pretrained, "bundled_stem", lambda name: folder / name)
    return folder


def _train_checkpoint(path):
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    config = PromptNetworkConfig(method="prosam", backbone_input=64, dim=32, num_queries=4)
    torch.manual_seed(0)
    model = PromptNetwork(config, backbone.mid_channels)
    opt = torch.optim.AdamW(model.parameters())
    model(*_inputs(backbone)).mu.sum().backward()  # a step, so the optimizer has state
    opt.step()
    doc = {"model": config.to_dict(), "backbone_mid_channels": list(backbone.mid_channels)}
    save_checkpoint(path, Checkpoint(model.state_dict(), doc, opt.state_dict(), {"epoch": 3}))
    return model, backbone


def _inputs(backbone):
    torch.manual_seed(1)
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        feats = backbone(image)
    ann = torch.zeros(1, 1, 64, 64)
    ann[..., 10:40, 20:50] = 1
    return feats, ann, feats


def test_published_checkpoint_loads_by_name_in_float32(tmp_path, bundle):
    model, backbone = _train_checkpoint(tmp_path / "run" / "best")
    pretrained.publish_checkpoint(
        tmp_path / "run" / "best", bundle / "prosam-coco-minisam", note={"command": "x"}
    )
    published = load_checkpoint(bundle / "prosam-coco-minisam")
    assert published.optimizer is None
    assert published.extra["command"] == "x" and published.extra["epoch"] == 3
    assert {v.dtype for v in published.model.values() if v.is_floating_point()} == {torch.float16}
    loaded, _ = load_prompt_network("prosam-coco-minisam", expected_method="prosam")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    model.eval()
    with torch.no_grad():
        want = model(*_inputs(backbone)).mu
        got = loaded(*_inputs(backbone)).mu
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)  # float16 rounding only
    assert pretrained.default_checkpoint("prosam", "minisam") == bundle / "prosam-coco-minisam"
    assert pretrained.default_checkpoint("prosam", "sam_vit_h") is None
    assert pretrained.default_checkpoint("vrp", "minisam") is None  # not bundled here


def test_resolution_errors(tmp_path, bundle):
    _train_checkpoint(tmp_path / "mine")
    for spec in (tmp_path / "mine", tmp_path / "mine.json", tmp_path / "mine.safetensors"):
        assert pretrained.resolve_checkpoint(spec) == tmp_path / "mine"
    with pytest.raises(InputError, match="prosam-coco-minisam"):
        pretrained.resolve_checkpoint("no-such-name")
    with pytest.raises(InputError, match="not 'vrp'"):
        pretrained.resolve_checkpoint("prosam-coco-minisam", method="vrp")
    with pytest.raises(WeightsError, match="not bundled"):
        pretrained.resolve_checkpoint("stable-minisam", method="stable")
    with pytest.raises(WeightsError, match="'prosam' model, not 'vrp'"):
        load_prompt_network(tmp_path / "mine", expected_method="vrp")  # it holds a prosam model


def test_stable_default_and_digest(tiny_sam, tmp_path, bundle, monkeypatch):
    monkeypatch.setitem(
        pretrained.PRETRAINED,
        "stable-minisam",
        pretrained.PretrainedCheckpoint("stable-minisam", "stable", tiny_sam.name, "test"),
    )
    with pytest.raises(InputError, match="no Stable-SAM plugin is bundled"):
        pretrained.stable_checkpoint("default", tiny_sam)
    torch.manual_seed(0)
    plugin = StableSamPlugin(tiny_sam.sam.mask_decoder.transformer_dim)
    save_stable_plugin(tmp_path / "plug", plugin, tiny_sam)
    pretrained.publish_checkpoint(tmp_path / "plug", bundle / "stable-minisam")
    path = pretrained.stable_checkpoint("default", tiny_sam)
    assert pretrained.stable_checkpoint("elsewhere", tiny_sam) == "elsewhere"
    loaded = load_stable_plugin(path, tiny_sam)
    assert attached_plugin_digest(tiny_sam) is None
    with attach_stable_plugin(tiny_sam, loaded):
        first = attached_plugin_digest(tiny_sam)
    with torch.no_grad():
        next(loaded.parameters()).add_(1.0)
    with attach_stable_plugin(tiny_sam, loaded):
        second = attached_plugin_digest(tiny_sam)
    assert first and second and first != second
    assert attached_plugin_digest(tiny_sam) is None


def test_segment_without_a_bundled_checkpoint_names_the_choices(tmp_path, bundle, capsys):
    from PIL import Image

    img = tmp_path / "a.png"
    Image.new("RGB", (40, 30)).save(img)
    args = [
        "segment",
        "--ref",
        str(img),
        "--ref-box",
        "2,2,20,20",
        str(img),
        "--out",
        str(tmp_path / "o"),
        "--method",
        "vrp",
        "--model",
        "tiny",
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    assert main(args) != 0
    assert "vrp-coco-fold0-minisam" in capsys.readouterr().err


def test_segment_and_label_decode_through_a_plugin(tiny_sam, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    img = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), np.uint8)).save(img)
    torch.manual_seed(0)
    plugin = StableSamPlugin(tiny_sam.sam.mask_decoder.transformer_dim)
    save_stable_plugin(tmp_path / "plug", plugin, tiny_sam)
    common = [
        "--ref",
        str(img),
        "--ref-box",
        "2,2,20,20",
        str(img),
        "--model",
        "tiny",
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    assert (
        main(["segment", *common, "--out", str(tmp_path / "s"), "--stable", str(tmp_path / "plug")])
        == 0
    )
    assert (tmp_path / "s" / "a.png").is_file()
    assert (
        main(
            [
                "label",
                *common,
                "--out",
                str(tmp_path / "l"),
                "--stable",
                str(tmp_path / "plug"),
                "--no-progress",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    job = (tmp_path / "l" / "job.json").read_text()
    assert attached_plugin_digest(tiny_sam) is None  # the CLI loaded its own SAM
    assert '"stable_plugin": "' in job
    assert (
        main(
            [
                "segment",
                *common,
                "--out",
                str(tmp_path / "x"),
                "--stable",
                str(tmp_path / "missing"),
            ]
        )
        != 0
    )
    assert "missing" in capsys.readouterr().err
