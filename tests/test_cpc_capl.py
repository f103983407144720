"""CPC-SAM's CaPL weights, calibrated prompt and cumulative loss."""

from __future__ import annotations

import pytest
import torch

from prosam.core.losses import bce_dice_loss
from prosam.methods.cpc import (
    CausalPromptLearner,
    LossWeights,
    PromptWeights,
    calibrated_prompt,
    combine_weights,
    cumulative_loss,
    one_hot_weights,
    uniform_weights,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _inputs(n=3, m=5, t=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, m, t, d, generator=g)
    valid = torch.rand(n, m, t, generator=g) > 0.3
    valid[..., 0] = True
    return tokens, valid


def _trained_capl(**kw):
    torch.manual_seed(0)
    capl = CausalPromptLearner(8, 16, **kw)
    with torch.no_grad():  # move the zero-initialised heads so the weights are not uniform
        for p in capl.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return capl


def test_fresh_capl_gives_uniform_weights_and_the_mean_prompt():
    tokens, valid = _inputs()
    w = CausalPromptLearner(8, 16)(tokens, valid)
    torch.testing.assert_close(w.combined, torch.full((3, 5), 0.2))
    torch.testing.assert_close(w.task, torch.full((5,), 0.2))
    u = uniform_weights(3, 5)
    torch.testing.assert_close(w.combined, u.combined)
    torch.testing.assert_close(calibrated_prompt(tokens, w.combined), tokens.mean(1))


def test_weights_sum_to_one_and_are_the_normalised_product():
    tokens, valid = _inputs()
    capl = _trained_capl()
    w = capl(tokens, valid)
    torch.testing.assert_close(w.combined.sum(1), torch.ones(3))
    torch.testing.assert_close(w.task.sum(), torch.tensor(1.0))
    torch.testing.assert_close(w.entity.sum(1), torch.ones(3))
    prod = w.task[None] * w.entity
    torch.testing.assert_close(w.combined, prod / prod.sum(1, keepdim=True))
    # ... which is the softmax of the summed logits
    s = capl.summaries(tokens, valid)
    a = capl.entity_head(s)[..., 0]
    b = capl.task_head(s.mean(0))[:, 0]
    torch.testing.assert_close(w.combined, torch.softmax(a + b[None], dim=1))
    assert not torch.allclose(w.combined, torch.full_like(w.combined, 0.2))


def test_task_weights_are_shared_and_pooled_across_entities():
    tokens, valid = _inputs()
    capl = _trained_capl(entity_level=False)
    w = capl(tokens, valid)
    torch.testing.assert_close(w.combined, w.task[None].expand(3, -1))
    # changing one entity's tokens moves the shared task weights
    other = tokens.clone()
    other[0] = torch.randn(other[0].shape, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(capl(other, valid).task, w.task)
    only_entity = _trained_capl(task_level=False)(tokens, valid)
    torch.testing.assert_close(only_entity.task, torch.full((5,), 0.2))
    torch.testing.assert_close(only_entity.combined, only_entity.entity)


def test_invalid_tokens_do_not_change_the_weights():
    tokens, valid = _inputs()
    capl = _trained_capl()
    noisy = tokens.clone()
    noisy[~valid] = 100.0
    torch.testing.assert_close(capl(noisy, valid).combined, capl(tokens, valid).combined)


def test_calibrated_prompt_and_baseline_weights():
    tokens, _ = _inputs()
    w = torch.softmax(torch.randn(3, 5), 1)
    expected = (w[:, :, None, None] * tokens).sum(1)
    torch.testing.assert_close(calibrated_prompt(tokens, w), expected)
    hot = one_hot_weights(torch.tensor([4, 0, 2]), 5)
    torch.testing.assert_close(
        calibrated_prompt(tokens, hot.combined), tokens[[0, 1, 2], [4, 0, 2]]
    )
    torch.testing.assert_close(combine_weights(torch.ones(5) / 5, w), w)


def test_per_sample_loss_matches_vrp_loss():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 1, 6, 7, generator=g)
    target = (torch.rand(1, 1, 6, 7, generator=g) > 0.5).float()
    ignore = torch.rand(1, 1, 6, 7, generator=g) > 0.8
    out = bce_dice_loss(logits, target, ignore, reduction="none")
    for i in range(4):
        torch.testing.assert_close(out[i], bce_dice_loss(logits[i : i + 1], target, ignore))


def test_cumulative_loss_by_hand():
    g = torch.Generator().manual_seed(2)
    n, m = 2, 3
    sets = [torch.randn(m, 1, 5, 5, generator=g), torch.randn(m, 1, 4, 6, generator=g)]
    cals = [torch.randn(1, 1, 5, 5, generator=g), torch.randn(1, 1, 4, 6, generator=g)]
    targets = [(torch.rand(1, 1, 5, 5, generator=g) > 0.5).float()]
    targets.append((torch.rand(1, 1, 4, 6, generator=g) > 0.5).float())
    task = torch.tensor([0.2, 0.3, 0.5])
    entity = torch.softmax(torch.randn(n, m, generator=g), 1)
    w = PromptWeights(task, entity, combine_weights(task, entity))
    lam = LossWeights(entity=0.5, task=2.0, calibrated=3.0, consistency=4.0)
    terms = cumulative_loss(sets, cals, targets, w, lam)
    per_set = torch.stack(
        [bce_dice_loss(s, y, reduction="none") for s, y in zip(sets, targets, strict=True)]
    )
    cal = torch.stack(
        [bce_dice_loss(c, y, reduction="none")[0] for c, y in zip(cals, targets, strict=True)]
    )
    cons = torch.stack(
        [
            ((s.sigmoid() - c.sigmoid()) ** 2).flatten(1).mean(1)
            for s, c in zip(sets, cals, strict=True)
        ]
    )
    l_ent = (w.combined * per_set).sum(1).mean()
    l_task = (task * per_set.mean(0)).sum()
    l_cons = (w.combined * cons).sum(1).mean()
    torch.testing.assert_close(terms.per_set, per_set)
    torch.testing.assert_close(terms.entity, l_ent)
    torch.testing.assert_close(terms.task, l_task)
    torch.testing.assert_close(terms.calibrated, cal.mean())
    torch.testing.assert_close(terms.consistency, l_cons)
    total = 0.5 * l_ent + 2.0 * l_task + 3.0 * cal.mean() + 4.0 * l_cons
    torch.testing.assert_close(terms.total, total)


def test_consistency_term_gives_no_gradient_to_the_weights():
    sets = [torch.randn(3, 1, 4, 4)]
    cals = [torch.randn(1, 1, 4, 4)]
    targets = [torch.ones(1, 1, 4, 4)]
    logits = torch.zeros(1, 3, requires_grad=True)
    w = torch.softmax(logits, 1)
    pw = PromptWeights(torch.full((3,), 1 / 3), w, w)
    lam = LossWeights(entity=0.0, task=0.0, calibrated=0.0, consistency=1.0)
    terms = cumulative_loss(sets, cals, targets, pw, lam)
    assert terms.consistency > 0
    (grad,) = torch.autograd.grad(terms.total, logits)
    assert bool((grad == 0).all())


def test_masked_calibrated_prompt_by_hand():
    tokens = torch.tensor([[[[1.0], [10.0]], [[3.0], [20.0]], [[5.0], [30.0]]]])  # (1, 3, 2, 1)
    valid = torch.tensor([[[True, False], [True, True], [False, False]]])
    w = torch.tensor([[0.5, 0.25, 0.25]])
    out = calibrated_prompt(tokens, w, valid, torch.tensor([-1.0]))
    # token 0: sets 0 and 1 valid -> (0.5 * 1 + 0.25 * 3) / 0.75; token 1: only set 1 -> 20
    torch.testing.assert_close(out, torch.tensor([[[(0.5 + 0.75) / 0.75], [20.0]]]))
    none_valid = torch.zeros_like(valid)
    torch.testing.assert_close(
        calibrated_prompt(tokens, w, none_valid, torch.tensor([-1.0])), torch.full((1, 2, 1), -1.0)
    )
    torch.testing.assert_close(
        calibrated_prompt(tokens, w, torch.ones_like(valid)), calibrated_prompt(tokens, w)
    )
