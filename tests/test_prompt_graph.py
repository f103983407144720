"""SAM's prompt encoder + mask decoder as one plain-tensor graph: equal to SAM's own path,
and the same after ONNX export under ONNX Runtime and OpenVINO."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prosam.sam import Predictor
from prosam.sam.encoder_runtimes import RuntimeSettings
from prosam.sam.prompt_graph import INPUT_NAMES, OUTPUT_NAMES, PromptDecoderGraph
from prosam.sam.transforms import transform_boxes, transform_coords


def _inputs(tiny_sam, embedded, points, labels, box=None, mask=None):
    """The graph's inputs for one prompt set, as SAM's predictor would pad it."""
    coords = transform_coords(np.asarray(points, dtype=np.float64), embedded.geometry)
    lab = torch.as_tensor(labels, dtype=torch.float32)
    if box is None:  # SAM pads points without a box with one "not a point"
        coords = torch.cat([coords, torch.zeros(1, 2)])
        lab = torch.cat([lab, torch.tensor([-1.0])])
    else:
        coords = torch.cat(
            [coords, transform_boxes(np.asarray(box), embedded.geometry)[0].reshape(2, 2)]
        )
        lab = torch.cat([lab, torch.tensor([2.0, 3.0])])
    side = tiny_sam.sam.prompt_encoder.mask_input_size
    mask_input = torch.zeros(1, 1, *side) if mask is None else mask.reshape(1, 1, *side)
    has_mask = torch.tensor([0.0 if mask is None else 1.0])
    return embedded.embedding, coords[None], lab[None], mask_input, has_mask


@pytest.fixture
def embedded(tiny_sam):
    image = np.random.default_rng(5).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    return Predictor(tiny_sam).embed(image)


@pytest.mark.parametrize("with_box", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_graph_equals_sams_prompt_encoder_and_decoder(tiny_sam, embedded, with_box, with_mask):
    predictor = Predictor(tiny_sam)
    points, labels = np.array([[30.0, 40.0], [90.0, 10.0]]), np.array([1, 0])
    box = np.array([10.0, 5.0, 100.0, 80.0]) if with_box else None
    mask = torch.randn(1, *tiny_sam.sam.prompt_encoder.mask_input_size) if with_mask else None
    expected, expected_iou = predictor.predict_low_res(
        embedded,
        points=points,
        point_labels=labels,
        box=box,
        mask_input=mask,
        multimask_output=True,
    )
    graph = PromptDecoderGraph(tiny_sam.sam).eval()
    with torch.no_grad():
        low_res, iou = graph(*_inputs(tiny_sam, embedded, points, labels, box, mask))
    assert low_res.shape[:2] == (1, 4) and iou.shape == (1, 4)
    torch.testing.assert_close(low_res[0, 1:], expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou[0, 1:], expected_iou, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_graph_runs_the_same_on_an_onnx_runtime(tiny_sam, embedded, tmp_path, backend):
    pytest.importorskip(backend)
    pytest.importorskip("onnx")
    from prosam.sam.decoder_runtimes import OnnxRuntimePromptDecoder, OpenVinoPromptDecoder

    graph = PromptDecoderGraph(tiny_sam.sam).eval()
    example = _inputs(tiny_sam, embedded, [[30.0, 40.0]], [1])
    path = tmp_path / "prompt_decoder.onnx"
    with torch.no_grad():
        torch.onnx.export(
            graph,
            example,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=17,
            dynamo=False,
            dynamic_axes={
                "coords": {0: "sets", 1: "points"},
                "labels": {0: "sets", 1: "points"},
                "mask_input": {0: "sets"},
            },
        )
    runtime = (
        OnnxRuntimePromptDecoder(path, RuntimeSettings())
        if backend == "onnxruntime"
        else OpenVinoPromptDecoder(path, RuntimeSettings())
    )
    # a different number of points than the export's example: the axes are dynamic
    inputs = _inputs(tiny_sam, embedded, [[30.0, 40.0], [60.0, 70.0], [5.0, 5.0]], [1, 1, 0])
    with torch.no_grad():
        expected = graph(*inputs)
    got = runtime(*inputs)
    assert runtime.backend == backend
    for ours, theirs in zip(got, expected, strict=True):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("with_box", [False, True])
def test_graph_prompts_pad_points_and_turn_a_box_into_corners(tiny_sam, embedded, with_box):
    from prosam.sam.prompt_graph import graph_prompts

    points, labels = np.array([[30.0, 40.0], [90.0, 10.0]]), np.array([1, 0])
    box = np.array([10.0, 5.0, 100.0, 80.0]) if with_box else None
    side = tuple(tiny_sam.sam.prompt_encoder.mask_input_size)
    got = graph_prompts(
        transform_coords(points, embedded.geometry),
        torch.as_tensor(labels),
        None if box is None else transform_boxes(box, embedded.geometry)[0],
        None,
        side,
    )
    expected = _inputs(tiny_sam, embedded, points, labels, box)[1:]
    for ours, theirs in zip(got, expected, strict=True):
        torch.testing.assert_close(ours, theirs)
