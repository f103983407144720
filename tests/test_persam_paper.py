"""PerSAM's decoder guidance (attention hook, semantic prompt) and PerSAM-F's two weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prosam.errors import InputError
from prosam.methods.base import Reference, Target
from prosam.methods.persam import PerSAM, build_persam_lite
from prosam.methods.persam_f import (
    MaskScaleWeights,
    PerSAMF,
    dice_loss,
    fit_scale_weights,
    fit_size,
)
from prosam.sam import Predictor
from prosam.sam.decode import decode_masks
from prosam.sam.guidance import attention_guide, guided_attention, guided_decoding


def _decoder_inputs(sam, seed=0):
    gen = torch.Generator().manual_seed(seed)
    size = sam.prompt_encoder.image_embedding_size
    emb = torch.randn(1, sam.prompt_encoder.embed_dim, *size, generator=gen)
    points = torch.rand(1, 2, 2, generator=gen) * sam.image_encoder.img_size
    labels = torch.tensor([[1, 0]])
    sparse, dense = sam.prompt_encoder(points=(points, labels), boxes=None, masks=None)
    return emb, sparse, dense


def _decode(sam, inputs):
    emb, sparse, dense = inputs
    with torch.no_grad():
        return decode_masks(sam, emb, sparse, dense, multimask_output=True)


def _n_tokens(sam) -> int:
    h, w = sam.prompt_encoder.image_embedding_size
    return h * w


def test_a_guide_peaked_on_one_key_makes_every_query_read_that_key(tiny_sam):
    attention = tiny_sam.sam.mask_decoder.transformer.layers[0].cross_attn_token_to_image
    gen = torch.Generator().manual_seed(1)
    dim = attention.embedding_dim
    q, k = torch.randn(1, 3, dim, generator=gen), torch.randn(1, 10, dim, generator=gen)
    v = torch.randn(1, 10, dim, generator=gen)
    guide = torch.zeros(10)
    guide[7] = 60.0  # after the first softmax every probability is <= 1: 60 dominates
    with torch.no_grad():
        out = guided_attention(attention, q, k, v, guide)
        expected = attention.out_proj(attention.v_proj(v[:, 7:8])).expand(1, 3, dim)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_guidance_changes_the_output_only_inside_the_block_and_never_the_weights(tiny_sam):
    sam = tiny_sam.sam
    inputs = _decoder_inputs(sam)
    weights_before = {k: v.clone() for k, v in sam.state_dict().items()}
    plain = _decode(sam, inputs)
    n = _n_tokens(sam)
    guide_a = torch.sigmoid(torch.linspace(-3, 3, n))
    guide_b = torch.sigmoid(torch.linspace(3, -3, n))
    with guided_decoding(sam, attention=guide_a):
        a = _decode(sam, inputs)
        a_again = _decode(sam, inputs)
    with guided_decoding(sam, attention=guide_b):
        b = _decode(sam, inputs)
    after = _decode(sam, inputs)
    assert not torch.allclose(a[0], plain[0])
    assert not torch.allclose(a[0], b[0])  # the map is what steers it
    torch.testing.assert_close(a_again[0], a[0], rtol=0, atol=0)
    torch.testing.assert_close(after[0], plain[0], rtol=0, atol=0)
    torch.testing.assert_close(after[1], plain[1], rtol=0, atol=0)
    for key, value in sam.state_dict().items():
        assert torch.equal(value, weights_before[key]), key


def test_the_hooks_are_removed_when_decoding_fails(tiny_sam):
    sam = tiny_sam.sam
    inputs = _decoder_inputs(sam)
    plain = _decode(sam, inputs)
    with pytest.raises(InputError, match="cells"), guided_decoding(sam, attention=torch.ones(5)):
        _decode(sam, inputs)
    torch.testing.assert_close(_decode(sam, inputs)[0], plain[0], rtol=0, atol=0)


def test_the_semantic_prompt_is_added_to_the_tokens(tiny_sam):
    sam = tiny_sam.sam
    inputs = _decoder_inputs(sam, seed=2)
    plain = _decode(sam, inputs)
    dim = sam.prompt_encoder.embed_dim
    with guided_decoding(sam, token_bias=torch.zeros(dim)):
        zero = _decode(sam, inputs)
    with guided_decoding(sam, token_bias=torch.full((dim,), 0.5)):
        biased = _decode(sam, inputs)
    torch.testing.assert_close(zero[0], plain[0], rtol=0, atol=0)
    assert not torch.allclose(biased[0], plain[0])
    # the same bias added by hand to the prompt tokens before block one only is not the same
    # thing: the hook adds it before every block and to the final attention's queries
    emb, sparse, dense = inputs
    with torch.no_grad():
        by_hand = decode_masks(sam, emb, sparse + 0.5, dense, multimask_output=True)
    assert not torch.allclose(by_hand[0], biased[0])


def test_attention_guide_standardises_the_image_cells_and_zeroes_the_padding():
    sim = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    guide = attention_guide(sim, (2, 3)).reshape(3, 4)
    region = sim[:2, :3]
    expected = torch.sigmoid((region - region.mean()) / region.std())
    torch.testing.assert_close(guide[:2, :3], expected)
    assert float(guide[2].abs().sum()) == 0 and float(guide[:, 3].abs().sum()) == 0
    flat = attention_guide(torch.ones(2, 2), (2, 2))
    torch.testing.assert_close(flat, torch.full((4,), 0.5))  # a constant map: no preference
    with pytest.raises(InputError):
        attention_guide(sim, (4, 1))
    with pytest.raises(InputError):
        attention_guide(sim[None], (1, 1))


@pytest.fixture(scope="module")
def episode(tiny_sam):
    rng = np.random.default_rng(0)
    predictor = Predictor(tiny_sam)
    size = (60, 90)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    ann = np.zeros(size, bool)
    ann[15:40, 30:80] = True
    ref = Reference(image, ann, predictor.embed(image))
    target_image = rng.integers(0, 256, (50, 120, 3), dtype=np.uint8)
    return ref, Target(target_image, predictor.embed(target_image))


def test_persam_and_persam_lite_differ_only_by_the_guided_first_step(tiny_sam, episode):
    ref, target = episode
    paper, lite = (
        PerSAM(tiny_sam, refinement_steps=0),
        build_persam_lite(tiny_sam, refinement_steps=0),
    )
    assert lite.name == "persam_lite" and not lite.guided_attention and not lite.semantic_prompt
    paper.fit([ref])
    lite.fit([ref])
    a, b = paper.predict(target), lite.predict(target)
    torch.testing.assert_close(a.extras["points"], b.extras["points"], rtol=0, atol=0)
    assert not torch.allclose(a.low_res_logits, b.low_res_logits)
    stock = PerSAM(tiny_sam, refinement_steps=0, guided_attention=False, semantic_prompt=False)
    stock.fit([ref])
    torch.testing.assert_close(
        stock.predict(target).low_res_logits, b.low_res_logits, rtol=0, atol=0
    )


def test_persam_f_gradients_reach_exactly_its_two_weights(tiny_sam):
    sam = tiny_sam.sam
    emb, sparse, dense = _decoder_inputs(sam, seed=3)
    weights = MaskScaleWeights()
    logits, _ = decode_masks(sam, emb, sparse, dense, multimask_output=True)
    target = (torch.rand(1, 1, *logits.shape[-2:]) > 0.5).float()
    loss = dice_loss(weights(logits), target)
    loss.backward()
    assert weights.weights.grad is not None and weights.weights.grad.shape == (2,)
    assert bool((weights.weights.grad != 0).all())
    assert all(p.grad is None and not p.requires_grad for p in sam.parameters())
    assert [n for n, p in weights.named_parameters()] == ["weights"]


def test_scale_weights_sum_to_one_and_mix_the_scales():
    weights = MaskScaleWeights()
    torch.testing.assert_close(weights.scale_weights(), torch.full((3,), 1 / 3))
    with torch.no_grad():
        weights.weights.copy_(torch.tensor([0.5, 0.25]))
    logits = torch.stack([torch.full((2, 2), v) for v in (4.0, 8.0, -4.0)])
    torch.testing.assert_close(
        weights(logits), torch.full((1, 2, 2), 0.25 * 4 + 0.5 * 8 - 0.25 * 4)
    )
    with pytest.raises(InputError):
        weights(torch.zeros(2, 4, 4))


def test_fitting_finds_the_scale_that_matches_the_reference():
    gen = torch.Generator().manual_seed(0)
    target = torch.zeros(16, 16)
    target[4:12, 3:10] = 1
    good = (target * 2 - 1) * 6
    logits = torch.stack([torch.randn(16, 16, generator=gen) * 3, good, -good])
    fitted = fit_scale_weights([logits], [target], steps=300, lr=1e-2).scale_weights().detach()
    assert int(torch.argmax(fitted)) == 1
    assert float(fitted.sum()) == pytest.approx(1.0)
    untouched = fit_scale_weights([logits], [target], steps=0).scale_weights()
    torch.testing.assert_close(untouched, torch.full((3,), 1 / 3))
    with pytest.raises(InputError):
        fit_scale_weights([logits], [])


def test_fit_size_caps_the_longest_side():
    assert fit_size((500, 375), 1024) == (500, 375)
    assert fit_size((3000, 4000), 1024) == (768, 1024)
    assert fit_size((200, 300)) == (171, 256)


def test_persam_f_on_the_tiny_sam(tiny_sam, episode):
    ref, target = episode
    method = PerSAMF(tiny_sam, steps=20)
    with pytest.raises(RuntimeError):
        method.predict(target)
    method.fit([ref])
    assert method.scale_weights is not None and method.scale_weights.shape == (3,)
    assert float(method.scale_weights.sum()) == pytest.approx(1.0, abs=1e-5)
    out = method.predict(target)
    assert out.low_res_logits.shape == (1, 32, 32)
    assert out.extras["point_labels"].tolist() == [1]  # PerSAM-F: no negative click
    again = method.predict(target)
    torch.testing.assert_close(again.low_res_logits, out.low_res_logits, rtol=0, atol=0)
    with pytest.raises(InputError):
        PerSAMF(tiny_sam, refinement_steps=4)
    with pytest.raises(InputError, match="empty"):
        method.fit([Reference(ref.image, np.zeros_like(ref.annotation), ref.embedded)])
