from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prosam.errors import InputError
from prosam.methods.base import MethodOutput, Reference, ReferenceMethod, Target
from prosam.methods.geometric import GeometricPrompts
from prosam.methods.persam import PerSAM
from prosam.methods.similarity import (
    annotation_to_feature_grid,
    annotation_weights,
    cosine_similarity_map,
    feature_region,
    masked_mean_feature,
    prior_mask,
    region_map_to_image,
    region_size,
)
from prosam.sam import ImageEmbedding, Predictor
from prosam.sam.transforms import geometry_for

# The tiny SAM: 128-px input, 8x8x32 embeddings (16 input pixels per cell), 32x32 logits.
CELL = 16


def test_masked_mean_feature_by_hand():
    f = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [10.0, 0.0]]])
    w = torch.tensor([[1.0, 0.0], [0.5, 0.0]])
    mean = masked_mean_feature(f, w)
    torch.testing.assert_close(mean, torch.tensor([5 / 3, 10 / 3]))


def test_cosine_map_is_one_where_the_feature_is_the_vector():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(6, 3, 4, generator=g)
    v = f[:, 1, 2].clone()
    f[:, 0, 0] = 3 * v
    f[:, 2, 3] = -v
    sim = cosine_similarity_map(f, v)
    assert sim.shape == (3, 4)
    assert sim[1, 2] == pytest.approx(1.0, abs=1e-6)
    assert sim[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert sim[2, 3] == pytest.approx(-1.0, abs=1e-6)
    assert bool((sim <= 1 + 1e-6).all())


def test_prior_mask_on_a_2x2_case():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    diag = (e1 + e2) / math.sqrt(2)
    target = torch.stack([e1, e2, -e1, diag]).T.reshape(2, 2, 2)
    ref = torch.stack([e1, e2, e1, e1]).T.reshape(2, 2, 2)
    only_first = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    # similarities 1, 0, -1, 0.707 -> (x + 1) / 2
    expected = torch.tensor([[1.0, 0.5], [0.0, (1 + 1 / math.sqrt(2)) / 2]])
    torch.testing.assert_close(prior_mask(target, ref, only_first), expected, atol=1e-5, rtol=0)
    first_two = torch.tensor([[0.3, 1.0], [0.0, 0.0]])  # any positive weight counts
    expected = torch.tensor([[1.0, 1.0], [0.0, 1 / math.sqrt(2)]])
    torch.testing.assert_close(prior_mask(target, ref, first_two), expected, atol=1e-5, rtol=0)
    with pytest.raises(InputError):
        prior_mask(target, ref, torch.zeros(2, 2))


def test_annotation_lands_on_the_unpadded_cells_of_a_non_square_image():
    g = geometry_for((30, 70), 128)  # input 55 x 128: rows 0..3 of 8 see the image
    assert g.input_size == (55, 128)
    assert region_size(g, (8, 8)) == (4, 8)
    ann = np.zeros((30, 70), dtype=bool)
    ann[-3:, -5:] = True  # the bottom-right corner of the image
    for mode in ("max", "area"):
        grid = annotation_to_feature_grid(ann, g, (8, 8), mode)
        assert grid.shape == (8, 8)
        nz = torch.nonzero(grid).tolist()
        assert nz == [[3, 7]], (mode, nz)  # the last unpadded cell, not the padded (7, 7)
    area = annotation_to_feature_grid(ann, g, (8, 8), "area")
    # 3x5 of 30x70 pixels = about 5.5 x 9.1 input pixels of a 16 x 16 cell
    assert 0.1 < float(area[3, 7]) < 0.3
    full = annotation_to_feature_grid(np.ones((30, 70), bool), g, (8, 8), "area")
    assert float(full[:3].min()) == pytest.approx(1.0)
    assert float(full[3, 0]) == pytest.approx(7 / 16)  # rows 48..54 of the 4th cell
    assert float(full[4:].max()) == 0.0
    emb = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(1, 2, 8, 8)
    region = feature_region(emb, g)
    assert region.shape == (2, 4, 8)
    assert annotation_weights(ann, g, (8, 8)).shape == (4, 8)
    with pytest.raises(InputError):
        annotation_to_feature_grid(np.zeros((30, 71), bool), g, (8, 8))


def test_a_single_pixel_survives_when_the_image_is_larger_than_the_input():
    g = geometry_for((400, 300), 128)  # input 128 x 96
    ann = np.zeros((400, 300), dtype=bool)
    ann[201, 299] = True
    grid = annotation_to_feature_grid(ann, g, (8, 8), "max")
    assert torch.nonzero(grid).tolist() == [[4, 5]]  # x 299 -> input 95.7 -> cell 5 of 6


def test_region_maps_come_back_at_the_original_size():
    g = geometry_for((30, 70), 128)
    m = torch.zeros(4, 8)
    m[:, 4:] = 1.0
    img = region_map_to_image(m, g, (8, 8))
    assert img.shape == (30, 70)
    assert float(img[:, :30].max()) < 0.5 < float(img[:, 40:].min())
    assert float(img[-1].max()) == pytest.approx(1.0)  # no bleed from the padding below


def _embedded(emb: torch.Tensor, size: tuple[int, int]) -> ImageEmbedding:
    return ImageEmbedding(emb, geometry_for(size, 128))


def _cell_of(xy: torch.Tensor, size: tuple[int, int]) -> tuple[int, int]:
    g = geometry_for(size, 128)
    sy, sx = g.scale
    x, y = float(xy[0]), float(xy[1])
    return int((y + 0.5) * sy // CELL), int((x + 0.5) * sx // CELL)


def _hand_case(size=(40, 100)):
    """A reference whose features are all ``v`` and a target with ``v`` and ``-v`` cells."""
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(32, generator=gen)
    ref_emb = v.reshape(1, 32, 1, 1).repeat(1, 1, 8, 8)
    tgt_emb = torch.randn(1, 32, 8, 8, generator=gen)
    tgt_emb[0, :, 1, 2] = v
    tgt_emb[0, :, 2, 5] = -v
    image = np.zeros((*size, 3), np.uint8)
    ann = np.zeros(size, bool)
    ann[5:20, 10:40] = True
    ref = Reference(image, ann, _embedded(ref_emb, size))
    return ref, Target(image, _embedded(tgt_emb, size))


def test_persam_clicks_the_most_and_least_similar_cells(tiny_sam):
    size = (40, 100)  # input 51 x 128, rows 0..3 of 8 are image
    ref, target = _hand_case(size)
    method = PerSAM(tiny_sam)
    method.fit([ref])
    torch.testing.assert_close(
        torch.nn.functional.normalize(method.target_embedding, dim=0),
        torch.nn.functional.normalize(ref.embedded.embedding[0, :, 0, 0], dim=0),
    )
    out = method.predict(target)
    pts, labels = out.extras["points"], out.extras["point_labels"]
    assert labels.tolist() == [1, 0]
    assert _cell_of(pts[0], size) == (1, 2)
    assert _cell_of(pts[1], size) == (2, 5)
    sim = out.extras["similarity"]
    assert sim.shape == size
    x, y = int(pts[0, 0]), int(pts[0, 1])
    assert float(sim[y, x]) == pytest.approx(float(sim.max()))
    assert float(sim.max()) > 0.9 and float(sim.min()) < -0.9
    assert out.low_res_logits.shape == (1, 32, 32)


def test_geometric_pseudo_mask_covers_the_matching_cell(tiny_sam):
    size = (40, 100)
    ref, target = _hand_case(size)
    method = GeometricPrompts(tiny_sam, prompt="point", seed=1)
    method.fit([ref])
    out = method.predict(target)
    pseudo = out.extras["pseudo_mask"]
    assert pseudo.shape == size and pseudo.dtype == torch.bool and bool(pseudo.any())
    prior = out.extras["prior"]
    y, x = np.unravel_index(int(torch.argmax(prior)), size)
    assert _cell_of(torch.tensor([x, y]), size) == (1, 2)
    pts = out.extras["points"]
    assert pts.shape == (5, 2)
    assert all(bool(pseudo[int(p[1]), int(p[0])]) for p in pts)
    assert float(prior.max()) > 0.9  # the grid prior peaks at 1, bilinearly upsampled


def test_geometric_box_is_the_pseudo_mask_box(tiny_sam):
    ref, target = _hand_case()
    method = GeometricPrompts(tiny_sam, prompt="box")
    method.fit([ref])
    out = method.predict(target)
    ys, xs = np.nonzero(out.extras["pseudo_mask"].numpy())
    assert out.extras["box"].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert "points" not in out.extras


def test_geometric_accepts_a_custom_feature_callable(tiny_sam):
    ref, target = _hand_case()
    calls = []

    def features(image, embedded):
        calls.append(image.shape)
        return embedded.embedding[0, :, :3, :]  # any (C, h, w) grid spanning the image

    method = GeometricPrompts(tiny_sam, features=features)
    method.fit([ref])
    out = method.predict(target)
    assert out.extras["prior"].shape == (40, 100)
    assert out.low_res_logits.shape == (1, 32, 32)
    assert len(calls) == 2


@pytest.fixture(scope="module")
def episode(tiny_sam):
    rng = np.random.default_rng(0)
    predictor = Predictor(tiny_sam)
    refs = []
    for size in [(60, 90), (80, 64)]:
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        ann = np.zeros(size, bool)
        ann[size[0] // 4 : size[0] // 2, size[1] // 3 : size[1] - 5] = True
        refs.append(Reference(image, ann, predictor.embed(image)))
    image = rng.integers(0, 256, (50, 120, 3), dtype=np.uint8)
    return refs, Target(image, predictor.embed(image))


METHODS = [
    lambda sam: PerSAM(sam),
    lambda sam: PerSAM(sam, refinement_steps=0),
    lambda sam: PerSAM(sam, refinement_steps=1),
    lambda sam: GeometricPrompts(sam),
    lambda sam: GeometricPrompts(sam, prompt="point"),
    lambda sam: GeometricPrompts(sam, prompt="box", annotation_mode="max"),
]


@pytest.mark.parametrize("make", METHODS)
def test_methods_on_the_tiny_sam(tiny_sam, episode, make):
    refs, target = episode
    method = make(tiny_sam)
    assert isinstance(method, ReferenceMethod)
    for k in (1, 2):
        method.fit(refs[:k])
        out = method.predict(target)
        assert isinstance(out, MethodOutput)
        assert out.low_res_logits.shape == (1, 32, 32)
        assert math.isfinite(out.score)
        again = method.predict(target)
        torch.testing.assert_close(again.low_res_logits, out.low_res_logits, rtol=0, atol=0)
        assert again.score == out.score
        for key, value in out.extras.items():
            torch.testing.assert_close(again.extras[key], value, rtol=0, atol=0)
        first_map = "similarity" if method.name == "persam" else "pseudo_mask"
        assert out.extras[first_map].shape == (50, 120)


@pytest.mark.parametrize("make", [PerSAM, GeometricPrompts])
def test_an_empty_reference_annotation_is_an_input_error(tiny_sam, episode, make):
    refs, _ = episode
    empty = Reference(refs[0].image, np.zeros_like(refs[0].annotation), refs[0].embedded)
    method = make(tiny_sam)
    with pytest.raises(InputError, match="empty"):
        method.fit([refs[1], empty])
    with pytest.raises(InputError):
        method.fit([])
    wrong = Reference(refs[0].image, np.ones((5, 5), bool), refs[0].embedded)
    with pytest.raises(InputError):
        method.fit([wrong])


def test_predict_before_fit_is_an_error(tiny_sam, episode):
    _, target = episode
    for method in (PerSAM(tiny_sam), GeometricPrompts(tiny_sam)):
        with pytest.raises(RuntimeError):
            method.predict(target)


def test_options_are_checked(tiny_sam):
    with pytest.raises(ValueError):
        PerSAM(tiny_sam, refinement_steps=3)
    with pytest.raises(ValueError):
        GeometricPrompts(tiny_sam, prompt="mask")  # type: ignore[arg-type]


class _Spy:
    """Wraps a Predictor, records its calls, and can blank the masks of one call."""

    def __init__(self, predictor, empty_call=None):
        self.predictor = predictor
        self.calls = []
        self.empty_call = empty_call

    def predict(self, embedded, **kwargs):
        pred = self.predictor.predict(embedded, **kwargs)
        if len(self.calls) == self.empty_call:
            pred.masks[:] = False
        self.calls.append((kwargs, pred))
        return pred


def test_persam_cascade_feeds_logits_and_box_forward(tiny_sam, episode):
    refs, target = episode
    method = PerSAM(tiny_sam)
    method.fit(refs[:1])
    spy = _Spy(method.predictor)
    method.predictor = spy
    out = method.predict(target)
    assert [c[0]["multimask_output"] for c in spy.calls] == [False, True, True]
    (_, first), (kw1, step1), (kw2, step2) = spy.calls
    assert "mask_input" not in spy.calls[0][0]
    torch.testing.assert_close(kw1["mask_input"], first.low_res_logits[0:1])
    best1 = int(np.argmax(step1.scores))
    torch.testing.assert_close(kw2["mask_input"], step1.low_res_logits[best1 : best1 + 1])
    ys, xs = np.nonzero(step1.masks[best1])
    assert kw2["box"].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    best2 = int(np.argmax(step2.scores))
    torch.testing.assert_close(out.low_res_logits, step2.low_res_logits[best2 : best2 + 1])
    assert out.score == pytest.approx(float(step2.scores[best2]))


def test_persam_keeps_the_step_one_result_when_its_mask_is_empty(tiny_sam, episode):
    refs, target = episode
    method = PerSAM(tiny_sam)
    method.fit(refs[:1])
    spy = _Spy(method.predictor, empty_call=1)
    method.predictor = spy
    out = method.predict(target)
    assert len(spy.calls) == 2 and "box" not in out.extras
    step1 = spy.calls[1][1]
    best = int(np.argmax(step1.scores))
    torch.testing.assert_close(out.low_res_logits, step1.low_res_logits[best : best + 1])
    assert out.score == pytest.approx(float(step1.scores[best]))


def test_geometric_falls_back_to_the_best_point_without_a_pseudo_mask(tiny_sam, episode):
    refs, target = episode
    method = GeometricPrompts(tiny_sam, threshold=1.5)
    method.fit(refs)
    out = method.predict(target)
    assert not bool(out.extras["pseudo_mask"].any())
    assert "box" not in out.extras
    pts = out.extras["points"]
    prior = out.extras["prior"]
    assert pts.shape == (1, 2)
    assert float(prior[int(pts[0, 1]), int(pts[0, 0])]) == pytest.approx(float(prior.max()))
    assert out.low_res_logits.shape == (1, 32, 32)
