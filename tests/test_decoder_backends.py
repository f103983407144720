"""Prompt encoder + mask decoder backends: the ONNX export checked against PyTorch and
cached, the Predictor using it only while nothing modifies the decoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prosam.errors import InputError, WeightsError
from prosam.sam import Predictor, decoder_export, load_sam
from prosam.sam.decoder_export import DecoderCheck
from prosam.stable.plugin import StableSamPlugin, attach_stable_plugin

pytest.importorskip("onnxruntime")

PROMPTS = [
    {"points": np.array([[30.0, 40.0]])},
    {"points": np.array([[30.0, 40.0], [90.0, 10.0]]), "point_labels": np.array([1, 0])},
    {"box": np.array([10.0, 5.0, 100.0, 80.0]), "multimask_output": False},
    {"points": np.array([[50.0, 50.0]]), "box": np.array([10.0, 5.0, 100.0, 80.0])},
]


@pytest.fixture(scope="module")
def embedded():
    image = np.random.default_rng(7).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    return Predictor(load_sam("tiny")).embed(image)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_decoder_runtime_reproduces_pytorch_and_its_export_is_cached(
    tmp_path, embedded, backend
):
    pytest.importorskip(backend)
    plain = load_sam("tiny")
    model = load_sam("tiny").use_decoder_backend(backend, cache_root=tmp_path)
    assert model.decoder_backend == backend and model.decoder_runtime() is not None
    check = model.decoder_check
    assert check is not None and check.max_abs < 1e-3 and check.mask_iou > 0.99
    mask = torch.randn(1, *plain.sam.prompt_encoder.mask_input_size)
    for prompt in [*PROMPTS, {**PROMPTS[0], "mask_input": mask}]:
        got, got_iou = Predictor(model).predict_low_res(embedded, **prompt)
        expected, expected_iou = Predictor(plain).predict_low_res(embedded, **prompt)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(got_iou, expected_iou, atol=1e-4, rtol=1e-4)
    (directory,) = (tmp_path / "weights" / "onnx").glob("*-prompt-decoder-onnx-v1")
    record = json.loads((directory / "export.json").read_text())
    assert record["export_version"] == decoder_export.DECODER_EXPORT_VERSION
    assert any(key.startswith(f"{backend}-fp32@") for key in record["checks"])
    graph = directory / "prompt_decoder.onnx"
    stamp = graph.stat().st_mtime_ns
    load_sam("tiny").use_decoder_backend(backend, cache_root=tmp_path)  # reuses the export
    assert graph.stat().st_mtime_ns == stamp


def test_a_modified_decoder_is_decoded_by_pytorch(tmp_path, embedded):
    model = load_sam("tiny").use_decoder_backend("onnxruntime", cache_root=tmp_path)
    predictor = Predictor(model)
    calls = []

    def spy(module, args, output):
        calls.append(1)

    handle = model.sam.mask_decoder.register_forward_hook(spy)
    try:
        assert model.decoder_runtime() is None
        predictor.predict_low_res(embedded, **PROMPTS[0])
        assert calls == [1]  # PyTorch's decoder ran, with its hook
    finally:
        handle.remove()
    assert model.decoder_runtime() is not None
    predictor.predict_low_res(embedded, **PROMPTS[0])
    assert calls == [1]  # the runtime ran: the decoder module did not
    with attach_stable_plugin(model, StableSamPlugin.for_sam(model)):
        assert model.decoder_runtime() is None  # a swapped module: PyTorch decodes
    assert model.decoder_runtime() is not None


def test_mask_only_prompts_stay_on_pytorch(tmp_path, embedded):
    model = load_sam("tiny").use_decoder_backend("onnxruntime", cache_root=tmp_path)
    plain = load_sam("tiny")
    mask = torch.randn(1, *plain.sam.prompt_encoder.mask_input_size)
    got, _ = Predictor(model).predict_low_res(embedded, mask_input=mask)
    expected, _ = Predictor(plain).predict_low_res(embedded, mask_input=mask)
    torch.testing.assert_close(got, expected)


def test_a_decoder_export_that_disagrees_is_not_cached(tmp_path, monkeypatch):
    bad = DecoderCheck(max_abs=3.0, mask_iou=0.5, seconds=0.0)
    monkeypatch.setattr(decoder_export, "check_decoder", lambda *a, **k: bad)
    with pytest.raises(WeightsError, match="disagrees with PyTorch"):
        load_sam("tiny").use_decoder_backend("onnxruntime", cache_root=tmp_path)
    onnx_dir = tmp_path / "weights" / "onnx"
    assert not [p for p in onnx_dir.iterdir() if p.suffix != ".lock"]


def test_auto_keeps_pytorch_for_the_random_test_model(tmp_path):
    model = load_sam("tiny").use_decoder_backend("auto", cache_root=tmp_path)
    assert model.decoder_backend == "torch" and model.decoder_runtime() is None


@pytest.mark.parametrize("backend", [None, "onnxruntime"])
@pytest.mark.parametrize("multimask", [True, False])
def test_point_sets_decoded_together_equal_each_set_decoded_alone(
    tmp_path, embedded, backend, multimask
):
    model = load_sam("tiny")
    if backend is not None:
        model = model.use_decoder_backend(backend, cache_root=tmp_path)
    predictor = Predictor(model)
    sets = np.array([[[30.0, 40.0], [90.0, 10.0]], [[5.0, 80.0], [60.0, 60.0]], [[110, 2], [1, 1]]])
    labels = np.array([[1, 0], [1, 1], [0, 1]])
    got, got_iou = predictor.predict_low_res_sets(
        embedded, sets, labels, multimask_output=multimask
    )
    assert got.shape[:2] == got_iou.shape == (3, 3 if multimask else 1)
    for s in range(3):
        alone, alone_iou = predictor.predict_low_res(
            embedded, points=sets[s], point_labels=labels[s], multimask_output=multimask
        )
        torch.testing.assert_close(got[s], alone, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got_iou[s], alone_iou, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("points", "labels", "message"),
    [
        (np.zeros((2, 2)), None, "point sets must be"),
        (np.zeros((0, 1, 2)), None, "points is empty"),
        (np.full((1, 1, 2), np.nan), None, "finite"),
        (np.zeros((2, 1, 2)), np.array([1]), "2 points but 1 labels"),
        (np.zeros((2, 1, 2)), np.array([[1], [2]]), "point labels must be"),
    ],
)
def test_point_sets_refuse_bad_input_in_one_line(embedded, points, labels, message):
    with pytest.raises(InputError, match=message):
        Predictor(load_sam("tiny")).predict_low_res_sets(embedded, points, labels)
