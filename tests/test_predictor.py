from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from prosam.errors import InputError
from prosam.sam import Predictor, decode_masks
from prosam.sam.transforms import (
    geometry_for,
    logits_at_input_resolution,
    postprocess_logits,
    transform_boxes,
    transform_coords,
)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (90, 140, 3), dtype=np.uint8)


def test_geometry_of_a_landscape_and_a_portrait_image():
    g = geometry_for((90, 140), 1024)
    assert g.input_size == (658, 1024)  # 90 * 1024 / 140 = 658.3 -> 658
    g = geometry_for((640, 427), 1024)
    assert g.input_size == (1024, 683)  # 427 * 1.6 = 683.2 -> 683


def test_coordinates_scale_to_the_model_input():
    g = geometry_for((100, 200), 1024)  # x2... scale 5.12 both ways
    coords = transform_coords(np.array([[10.0, 20.0], [200.0, 100.0]]), g)
    assert torch.allclose(coords, torch.tensor([[51.2, 102.4], [1024.0, 512.0]]))
    boxes = transform_boxes(np.array([0.0, 0.0, 200.0, 100.0]), g)
    assert torch.allclose(boxes, torch.tensor([[0.0, 0.0, 1024.0, 512.0]]))


def test_postprocessing_returns_the_original_size_and_undoes_padding():
    g = geometry_for((30, 70), 128)  # input 55 x 128, padded to 128 x 128
    low = torch.full((1, 1, 32, 32), -5.0)
    low[..., :14, :] = 5.0  # the unpadded image area is rows 0..13.75 of 32
    out = postprocess_logits(low, g)
    assert out.shape == (1, 1, 30, 70)
    assert (out > 0).float().mean() > 0.95  # the padding band never reaches the image
    at_input = logits_at_input_resolution(low, g, (16, 16))
    assert at_input.shape == (1, 1, 16, 16)


def test_predictions_match_segment_anything_predictor(tiny_sam, image):
    ours = Predictor(tiny_sam)
    embedded = ours.embed(image)
    theirs = SamPredictor(tiny_sam.sam)
    theirs.set_image(image)
    cases = [
        dict(points=[[30, 40]], point_labels=[1], multimask_output=True),
        dict(points=[[30, 40], [100, 20]], point_labels=[1, 0], multimask_output=False),
        dict(box=[10, 10, 120, 80], multimask_output=False),
        dict(points=[[60, 50]], point_labels=[1], box=[10, 10, 120, 80], multimask_output=True),
    ]
    for case in cases:
        pred = ours.predict(embedded, **case)
        kwargs = {
            "point_coords": np.array(case["points"]) if "points" in case else None,
            "point_labels": np.array(case["point_labels"]) if "points" in case else None,
            "box": np.array(case["box"]) if "box" in case else None,
            "multimask_output": case["multimask_output"],
        }
        masks, scores, low = theirs.predict(**kwargs)
        assert pred.masks.shape == (3 if case["multimask_output"] else 1, 90, 140)
        np.testing.assert_array_equal(pred.masks, masks)
        np.testing.assert_allclose(pred.scores, scores, atol=1e-6)
        np.testing.assert_allclose(pred.low_res_logits.numpy(), low, atol=1e-5)
        again = ours.predict(embedded, **case, mask_input=pred.low_res_logits[:1])
        masks2, _, _ = theirs.predict(**kwargs, mask_input=low[:1])
        np.testing.assert_array_equal(again.masks, masks2)


def test_best_mask_is_the_highest_scoring(tiny_sam, image):
    pred = Predictor(tiny_sam).predict_image(image, points=[[30, 40]])
    mask, score = pred.best()
    assert score == pred.scores.max()
    np.testing.assert_array_equal(mask, pred.masks[int(np.argmax(pred.scores))])


@pytest.mark.parametrize(
    ("prompts", "match"),
    [
        ({}, "at least one prompt"),
        ({"points": [[1, 2], [3, 4]], "point_labels": [1]}, "labels"),
        ({"points": [[1, 2]], "point_labels": [2]}, "0 .background. or 1"),
        ({"box": [10, 10, 5, 20]}, "x0<=x1"),
        ({"box": [1, 2, 3]}, "x0,y0,x1,y1"),
    ],
)
def test_bad_prompts_are_clear_errors(tiny_sam, image, prompts, match):
    predictor = Predictor(tiny_sam)
    with pytest.raises(InputError, match=match):
        predictor.predict(predictor.embed(image), **prompts)


@pytest.mark.parametrize("bad", [np.zeros((5, 5), np.uint8), np.zeros((5, 5, 3), np.float32)])
def test_bad_images_are_clear_errors(tiny_sam, bad):
    with pytest.raises(InputError):
        Predictor(tiny_sam).embed(bad)


def test_gradients_reach_a_learned_sparse_embedding_and_no_sam_parameter(tiny_sam, image):
    embedded = Predictor(tiny_sam).embed(image).embedding
    dim = tiny_sam.embed_dim
    sparse = torch.nn.Parameter(torch.randn(2, 5, dim) * 0.1)
    dense_delta = torch.nn.Parameter(torch.zeros(1, dim, 1, 1))
    dense = tiny_sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1) + dense_delta
    dense = dense.expand(2, -1, *embedded.shape[-2:])
    logits, iou = decode_masks(tiny_sam.sam, embedded, sparse, dense, multimask_output=False)
    assert logits.shape == (2, 1, 32, 32) and iou.shape == (2, 1)
    (logits.sigmoid().mean() + iou.sum()).backward()
    assert sparse.grad is not None and sparse.grad.abs().sum() > 0
    assert dense_delta.grad is not None and dense_delta.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in tiny_sam.sam.parameters())


def test_decoding_one_embedding_per_prompt_set_equals_decoding_each(tiny_sam, image):
    predictor = Predictor(tiny_sam)
    e1 = predictor.embed(image).embedding
    e2 = predictor.embed(np.ascontiguousarray(image[::-1])).embedding
    sparse = torch.randn(2, 3, tiny_sam.embed_dim)
    with torch.no_grad():
        both, _ = decode_masks(tiny_sam.sam, torch.cat([e1, e2]), sparse)
        first, _ = decode_masks(tiny_sam.sam, e1, sparse[:1])
        second, _ = decode_masks(tiny_sam.sam, e2, sparse[1:])
    torch.testing.assert_close(both, torch.cat([first, second]))
    with pytest.raises(ValueError, match="must be 1 or match"):
        decode_masks(tiny_sam.sam, torch.cat([e1, e2, e1]), sparse)
