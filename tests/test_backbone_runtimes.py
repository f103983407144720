"""The matching backbones on ONNX Runtime / OpenVINO: one exported graph for every image
size, checked against PyTorch, cached, refused when wrong."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prosam.backbones import build_backbone
from prosam.backbones.efficientnet_lite import SameConv2d
from prosam.errors import InputError, WeightsError

pytest.importorskip("onnxscript")


@pytest.mark.parametrize("size", range(29, 41))
@pytest.mark.parametrize("kernel", [3, 5])
def test_same_padding_follows_tensorflows_formula(size, kernel):
    torch.manual_seed(0)
    conv = SameConv2d(2, 3, kernel, stride=2)
    x = torch.randn(1, 2, size, size + 1)
    pads = []
    for n in (size + 1, size):  # width first, as F.pad wants
        total = max((math.ceil(n / 2) - 1) * 2 + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    expected = F.conv2d(F.pad(x, pads), conv.weight, stride=2)
    assert torch.equal(conv(x), expected)
    assert conv(x).shape[-2:] == (math.ceil(size / 2), math.ceil((size + 1) / 2))


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def export_root(tmp_path_factory):
    """One cache root for the module: the backbone is exported once, whatever runs it."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_one_exported_graph_serves_every_image_size_and_is_cached(
    backend, lite0, export_root, monkeypatch
):
    pytest.importorskip(backend)
    from prosam.backbones import runtimes

    root = export_root
    runner = runtimes.open_backbone(lite0, backend, cache_root=root)
    assert runner.backend == backend
    torch.manual_seed(1)
    for shape in [(1, 3, 77, 130), (2, 3, 161, 97)]:  # sizes the check did not use
        x = torch.rand(shape)
        with torch.inference_mode():
            expected = lite0(x)
        got = runner(x)
        for g, e in zip((*got.mid, got.high), (*expected.mid, expected.high), strict=True):
            assert g.shape == e.shape
            assert float((g - e).abs().max()) <= 1e-3 * float(e.abs().max())
    record = (runtimes.backbone_export_dir(lite0, root) / "export.json").read_text()
    assert f"{backend}-fp32@" in record  # this runtime's check is kept

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(runtimes, "export_backbone", no_export)
    assert runtimes.open_backbone(lite0, backend, cache_root=root).backend == backend


def test_a_graph_that_disagrees_is_not_cached_and_auto_keeps_pytorch(lite0, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from prosam.backbones import runtimes

    def wrong(backbone, runtime):
        return runtimes.BackboneCheck(max_rel=0.5, seconds=0.0)

    monkeypatch.setattr(runtimes, "export_backbone", lambda backbone, path: path.write_bytes(b"-"))
    monkeypatch.setattr(runtimes, "open_graph", lambda *args: None)
    monkeypatch.setattr(runtimes, "check_backbone_runtime", wrong)
    with pytest.raises(WeightsError, match="disagrees"):
        runtimes.ensure_backbone_export(lite0, tmp_path)
    assert not runtimes.backbone_export_dir(lite0, tmp_path).exists()
    with pytest.warns(UserWarning, match="unavailable"):
        assert runtimes.open_backbone(lite0, "auto", cache_root=tmp_path) is lite0


def test_unknown_backends_are_one_line_errors(lite0, tiny_sam):
    from prosam.backbones.runtimes import open_backbone
    from prosam.methods import build_method

    with pytest.raises(InputError, match="unknown backend"):
        open_backbone(lite0, "tensorrt")
    with pytest.raises(InputError, match="feature_backend"):
        build_method("matcher_fast", tiny_sam, feature_backend="tensorrt")


def test_matcher_features_follow_the_image_encoders_backend(tiny_sam):
    from prosam.methods import build_method

    method = build_method("matcher_fast", tiny_sam)
    assert tiny_sam.backend == "torch" and method.features.backend == "torch"
    chosen = build_method("matcher_fast", tiny_sam, feature_backend="onnxruntime")
    assert chosen.features.backend == "onnxruntime"


def test_semantic_features_agree_across_backends(lite0, export_root, monkeypatch):
    pytest.importorskip("onnxruntime")
    from prosam.methods.matching.features import SemanticFeatures

    monkeypatch.setenv("PROSAM_CACHE", str(export_root))
    image = np.random.default_rng(0).integers(0, 256, (150, 210, 3), dtype=np.uint8)
    maps = [
        SemanticFeatures(lite0, extra_sizes=(96,), flip=True, backend=b).backbone_grid(image)
        for b in ("torch", "onnxruntime")
    ]
    assert maps[0].shape == maps[1].shape
    assert float((maps[0] - maps[1]).abs().max()) < 1e-3
