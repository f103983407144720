"""CPC-SAM's bi-level schedule: which parameters each level updates, adapters, decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prosam.methods.cpc import (
    BilevelCalibrator,
    BilevelConfig,
    CausalPromptLearner,
    DecoderLoRA,
    TokenOffsets,
    build_adapter,
    decode_sets,
    draw_recipes,
    sam_prompt_sets,
    stack_prompt_sets,
    support_item,
)
from prosam.methods.cpc.prompt_sets import not_a_point_token
from prosam.sam import Predictor
from prosam.sam.decode import decode_masks


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def support(tiny_sam):
    """Two entities on two images, M = 4 sets in each half."""
    rng = np.random.default_rng(0)
    predictor = Predictor(tiny_sam)
    recipes = draw_recipes(4, 0)
    items, half_a, half_b = [], [], []
    for e, size in enumerate([(60, 90), (80, 64)]):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        mask = np.zeros(size, bool)
        mask[size[0] // 4 : size[0] // 2, size[1] // 3 : size[1] - 5] = True
        embedded = predictor.embed(image)
        items.append(support_item(embedded, mask, entity=e))
        for half, out in enumerate((half_a, half_b)):
            out.append(sam_prompt_sets(tiny_sam, mask, embedded.geometry, recipes, 10 * e + half))
    pad = not_a_point_token(tiny_sam)
    return items, stack_prompt_sets(half_a, pad), stack_prompt_sets(half_b, pad)


def _calibrator(sam, kind):
    torch.manual_seed(0)
    capl = CausalPromptLearner(sam.embed_dim, 16)
    adapter = build_adapter(kind, sam, lora_rank=2)
    return BilevelCalibrator(sam, capl, adapter, BilevelConfig(outer_steps=2))


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def test_support_item_crops_to_the_unpadded_region(support):
    items, _, _ = support
    assert items[0].target.shape == (1, 1, 21, 32)  # 60 x 90 -> 85 x 128 of 128 -> 21 x 32
    assert items[1].target.shape == (1, 1, 32, 26)
    assert items[0].crop(torch.zeros(5, 1, 32, 32)).shape == (5, 1, 21, 32)


@pytest.mark.parametrize("kind", ["tokens", "lora"])
def test_fresh_adapter_decodes_like_the_frozen_sam(tiny_sam, support, kind):
    items, (tokens, _), _ = support
    adapter = build_adapter(kind, tiny_sam, lora_rank=2)
    with torch.no_grad():
        got, iou = decode_sets(tiny_sam, items[0].embedding, tokens[0], adapter)
        ref, ref_iou = decode_masks(tiny_sam.sam, items[0].embedding, tokens[0])
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(iou, ref_iou[:, 0])


def test_adapters_hold_only_their_own_parameters(tiny_sam):
    tok = TokenOffsets(tiny_sam)
    assert sum(p.numel() for p in tok.parameters()) == 5 * tiny_sam.embed_dim
    lora = DecoderLoRA(tiny_sam, 2)
    sam_ids = {id(p) for p in tiny_sam.sam.parameters()}
    assert not sam_ids & {id(p) for p in lora.parameters()}
    assert len(lora.names) == 2 * 7  # q and v of 7 attentions (2 layers x 3 + final)
    assert all(".q_proj." in n or ".v_proj." in n for n in lora.names)


@pytest.mark.parametrize("kind", ["tokens", "lora"])
def test_each_level_sends_gradients_only_to_its_parameters(tiny_sam, support, kind):
    items, half_a, half_b = support
    cal = _calibrator(tiny_sam, kind)
    sam_before = _state(tiny_sam.sam)
    capl_before, adapter_before = _state(cal.capl), _state(cal.adapter)

    cal.lower_step(items, *half_a)
    assert all(p.grad is None for p in cal.capl.parameters())
    grads = [p.grad for p in cal.adapter.parameters()]
    assert all(g is not None for g in grads) and any(bool(g.abs().sum() > 0) for g in grads)
    assert not _changed(capl_before, cal.capl)
    assert _changed(adapter_before, cal.adapter)

    adapter_mid = _state(cal.adapter)
    cal.upper_step(items, *half_b)
    assert all(p.grad is None for p in cal.adapter.parameters())
    assert all(p.grad is not None for p in cal.capl.parameters())
    heads = [cal.capl.task_head.weight.grad, cal.capl.entity_head.weight.grad]
    assert all(bool(g.abs().sum() > 0) for g in heads)
    assert not _changed(adapter_mid, cal.adapter)
    assert _changed(capl_before, cal.capl)

    assert all(p.grad is None and not p.requires_grad for p in tiny_sam.sam.parameters())
    assert not _changed(sam_before, tiny_sam.sam)


def test_upper_level_is_first_order(tiny_sam, support):
    """The upper loss's graph reaches CaPL but not the adapter (no ∂θ'/∂φ term)."""
    items, _, half_b = support
    cal = _calibrator(tiny_sam, "tokens")
    terms = cal.losses(items, *half_b, level="upper")
    grads = torch.autograd.grad(
        terms.total, [*cal.capl.parameters(), *cal.adapter.parameters()], allow_unused=True
    )
    n_capl = len(list(cal.capl.parameters()))
    assert all(g is not None for g in grads[:n_capl])
    assert all(g is None for g in grads[n_capl:])
    lower = cal.losses(items, *half_b, level="lower")
    assert all(p.grad is None for p in cal.capl.parameters())
    assert lower.total.requires_grad


def test_run_alternates_and_lowers_the_support_loss(tiny_sam, support):
    items, half_a, half_b = support
    cal = _calibrator(tiny_sam, "tokens")
    cal.config = BilevelConfig(outer_steps=6, lower_steps=2, upper_steps=1, lr_lower=0.05)
    cal.opt_lower = torch.optim.Adam(cal.adapter.parameters(), lr=0.05)
    before = float(cal.losses(items, *half_a, level="eval").total)
    history = cal.run(items, half_a, half_b)
    assert len(history) == 6 and {"lower_total", "upper_total"} <= set(history[0])
    after = float(cal.losses(items, *half_a, level="eval").total)
    assert after < before
    assert all(p.grad is None for p in cal.capl.parameters())


def test_combine_modes(tiny_sam, support):
    from prosam.methods.cpc import calibrated_prompt, uniform_weights
    from prosam.methods.cpc.bilevel import decode_calibrated, decode_items

    items, (tokens, valid), _ = support
    g = torch.Generator().manual_seed(0)
    w = uniform_weights(2, 4)
    w.combined = torch.softmax(torch.randn(2, 4, generator=g), 1)
    pad = not_a_point_token(tiny_sam)
    with torch.no_grad():
        sets, cals = decode_items(tiny_sam, items, tokens, w, None, combine="logits")
        for n in range(2):
            expected = (w.combined[n][:, None, None, None] * sets[n]).sum(0, keepdim=True)
            torch.testing.assert_close(cals[n], expected)
        sets_m, cals_m = decode_items(
            tiny_sam, items, tokens, w, None, valid=valid, combine="masked_tokens", pad_token=pad
        )
        torch.testing.assert_close(sets_m[0], sets[0])
        prompt = calibrated_prompt(tokens, w.combined, valid, pad)
        direct, _ = decode_sets(tiny_sam, items[0].embedding, prompt[:1])
        torch.testing.assert_close(cals_m[0], items[0].crop(direct))
        logits, iou = decode_calibrated(
            tiny_sam, items[0].embedding, tokens, valid, w, None, combine="logits"
        )
        assert logits.shape == (2, 1, 32, 32) and iou.shape == (2,)
    with pytest.raises(Exception, match="combine"):
        decode_items(tiny_sam, items, tokens, w, None, combine="concat")
