from __future__ import annotations

import math

import pytest
import torch

from prosam.core.losses import bce_dice_loss
from prosam.methods.prompt_encoder.encoder import (
    EFFICIENTNET_LITE0_MID_CHANNELS,
    RESNET50_MID_CHANNELS,
    VRPEncoder,
)
from prosam.methods.prompt_encoder.variational import (
    BINARY_LOGIT,
    COMBINE_STRATEGIES,
    PromptDistribution,
    VariationalPromptEncoder,
    chi2_sample,
    combine_samples,
    effective_dimension,
    prosam_loss,
    sample_prompts,
    student_t_std_multiplier,
    uncertainty_map,
)

N = 200_000
Q, D = 2, 3


def _dist(seed: int = 0, q: int = Q, d: int = D) -> PromptDistribution:
    g = torch.Generator().manual_seed(seed)
    return PromptDistribution(
        mu=torch.randn(1, q, d, generator=g), log_sigma=0.3 * torch.randn(1, q, d, generator=g)
    )


def _standardised(dist: PromptDistribution, z: torch.Tensor) -> torch.Tensor:
    """``(N, Q * D)`` samples of ``(z - mu) / sigma``, in float64."""
    x = (z - dist.mu) / dist.sigma
    return x.reshape(x.shape[0], -1).double()


def _corr(x: torch.Tensor) -> torch.Tensor:
    return torch.corrcoef(x.T)


# ---------------------------------------------------------------- the encoder


def test_parameter_counts():
    small = VRPEncoder((6, 10), 16, 5, 4)
    vpe = VariationalPromptEncoder(small)
    assert vpe.count_parameters() == 5344 + 2 * (16 * 16 + 16)
    resnet = VariationalPromptEncoder(VRPEncoder(RESNET50_MID_CHANNELS))
    assert resnet.count_parameters() == 1_592_064 + 131_584 == 1_723_648  # paper: 1.73 M
    lite = VariationalPromptEncoder(VRPEncoder(EFFICIENTNET_LITE0_MID_CHANNELS))
    assert lite.count_parameters() == 1_237_760 + 131_584


def _small_inputs(batch: int = 2):
    g = torch.Generator().manual_seed(1)
    ann = torch.zeros(batch, 1, 32, 32)
    ann[:, :, 8:20, 4:16] = 1

    def mid():
        return (torch.randn(batch, 6, 4, 4, generator=g), torch.randn(batch, 10, 4, 4, generator=g))

    def high():
        return torch.rand(batch, 12, 4, 4, generator=g)

    return mid(), high(), ann, mid(), high()


def test_forward_shapes_and_initial_sigma():
    torch.manual_seed(0)
    vpe = VariationalPromptEncoder(VRPEncoder((6, 10), 16, 5, 4)).eval()
    dist = vpe(*_small_inputs())
    assert dist.mu.shape == dist.log_sigma.shape == (2, 5, 16)
    torch.testing.assert_close(dist.log_sigma, torch.full((2, 5, 16), -2.0))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    vpe = VariationalPromptEncoder(VRPEncoder((6, 10), 16, 5, 4)).train()
    args = _small_inputs()
    dist = vpe(*args)
    z = sample_prompts(dist, 3, generator=torch.Generator().manual_seed(2))
    image = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(3))
    logits = torch.einsum("kbqd,bdhw->kbhw", z, image)[:, :, None] / 5
    target = torch.zeros(2, 1, 4, 4)
    target[:, :, :2] = 1
    prosam_loss(logits, target).backward()
    for name, p in vpe.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # The log-sigma head starts with zero weights, yet its weights and bias learn at once.
    assert vpe.log_sigma_head.weight.grad.abs().sum() > 0
    assert vpe.log_sigma_head.bias.grad.abs().sum() > 0
    tensors = [*args[0], args[1], args[2], *args[3], args[4]]
    assert all(not t.requires_grad and t.grad is None for t in tensors)


def test_eval_is_deterministic():
    torch.manual_seed(0)
    vpe = VariationalPromptEncoder(VRPEncoder((6, 10), 16, 5, 4)).eval()
    args = _small_inputs()
    a, b = vpe(*args), vpe(*args)
    assert torch.equal(a.mu, b.mu) and torch.equal(a.log_sigma, b.log_sigma)


# ---------------------------------------------------------------- the sampler


def test_std_multipliers_of_the_paper_config():
    nu, q, d = 5.0, 50, 256
    got = {
        m: student_t_std_multiplier(nu, effective_dimension(m, q, d))
        for m in ("token", "all", "element")
    }
    assert got["token"] == pytest.approx(math.sqrt(5 / 259))
    assert got["all"] == pytest.approx(math.sqrt(5 / 12803))
    assert got["element"] == pytest.approx(math.sqrt(5 / 4))
    assert (round(got["token"], 4), round(got["all"], 4), round(got["element"], 4)) == (
        0.1389,
        0.0198,
        1.118,
    )


@pytest.mark.parametrize("df", [1.5, 6.0, 261.0])
def test_chi2_sample_moments_and_reproducibility(df: float):
    x = chi2_sample(df, (N,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert x.min() > 0
    assert x.mean().item() == pytest.approx(df, rel=0.01)
    assert x.var().item() == pytest.approx(2 * df, rel=0.03)
    y = chi2_sample(df, (N,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(x, y)


@pytest.mark.parametrize("n_mode", ["token", "all", "element"])
def test_student_t_mean_and_covariance(n_mode: str):
    nu = 5.0
    dist = _dist()
    z = sample_prompts(
        dist,
        N,
        nu=nu,
        n_mode=n_mode,
        generator=torch.Generator().manual_seed(1),  # type: ignore[arg-type]
    )
    assert z.shape == (N, 1, Q, D)
    x = _standardised(dist, z)
    n = effective_dimension(n_mode, Q, D)  # type: ignore[arg-type]
    var = nu / (nu + n - 2)  # (1 / (1 + n / nu)) * (nu + n) / (nu + n - 2)
    std = math.sqrt(var)
    assert x.mean(0).abs().max() < 0.02 * std
    torch.testing.assert_close(
        x.var(0), torch.full((Q * D,), var, dtype=torch.float64), rtol=0.03, atol=0
    )
    corr = _corr(x)
    off = corr - torch.eye(Q * D, dtype=torch.float64)
    # Uncorrelated within a token (0, 1) and across tokens (0, D), as the diagonal scale says.
    assert off.abs().max() < 0.015
    assert corr[0, 1].abs() < 0.015 and corr[0, D].abs() < 0.015


@pytest.mark.parametrize("n_mode", ["token", "all", "element"])
def test_student_t_shares_delta_within_its_group(n_mode: str):
    """Squared deviations sharing one delta correlate by ``1 / (nu + n - 1)``; independent
    ones do not. (nu = 30 keeps the fourth moments' estimates tame.)"""
    nu = 30.0
    dist = _dist(seed=2)
    z = sample_prompts(
        dist,
        N,
        nu=nu,
        n_mode=n_mode,
        generator=torch.Generator().manual_seed(3),  # type: ignore[arg-type]
    )
    sq = _standardised(dist, z) ** 2
    corr = _corr(sq)
    n = effective_dimension(n_mode, Q, D)  # type: ignore[arg-type]
    shared = 1 / (nu + n - 1)
    within = corr.reshape(Q, D, Q, D)[torch.arange(Q), :, torch.arange(Q), :]  # (Q, D, D)
    within = within[:, ~torch.eye(D, dtype=torch.bool)].mean()
    across = corr.reshape(Q, D, Q, D)[0, :, 1, :].mean()
    expected_within = 0.0 if n_mode == "element" else shared
    expected_across = shared if n_mode == "all" else 0.0
    assert within.item() == pytest.approx(expected_within, abs=0.006)
    assert across.item() == pytest.approx(expected_across, abs=0.006)


def test_gaussian_mean_and_variance():
    dist = _dist()
    z = sample_prompts(dist, N, family="gaussian", generator=torch.Generator().manual_seed(4))
    x = _standardised(dist, z)
    assert x.mean(0).abs().max() < 0.01
    torch.testing.assert_close(x.var(0), torch.ones(Q * D, dtype=torch.float64), rtol=0.02, atol=0)
    off = _corr(x) - torch.eye(Q * D, dtype=torch.float64)
    assert off.abs().max() < 0.015


@pytest.mark.parametrize("family", ["student_t", "gaussian"])
def test_samples_are_differentiable(family: str):
    dist = _dist()
    mu = dist.mu.clone().requires_grad_()
    log_sigma = dist.log_sigma.clone().requires_grad_()
    g = torch.Generator().manual_seed(5)
    z = sample_prompts(PromptDistribution(mu, log_sigma), 4, family=family, generator=g)  # type: ignore[arg-type]
    z.sum().backward()
    torch.testing.assert_close(mu.grad, torch.full_like(mu, 4.0))
    # d z / d log_sigma = z - mu, so the gradient of sum(z) is sum_k (z_k - mu).
    torch.testing.assert_close(log_sigma.grad, (z - mu).sum(0).detach())
    assert log_sigma.grad.abs().sum() > 0


def test_sampling_is_reproducible_with_a_generator():
    dist = _dist()
    a = sample_prompts(dist, 3, generator=torch.Generator().manual_seed(6))
    b = sample_prompts(dist, 3, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)


def test_sampler_rejects_bad_arguments():
    dist = _dist()
    with pytest.raises(ValueError):
        sample_prompts(dist, 0)
    with pytest.raises(ValueError):
        sample_prompts(dist, 2, n_mode="tokens")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sample_prompts(dist, 2, family="cauchy")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sample_prompts(PromptDistribution(dist.mu, dist.log_sigma[:, :1]), 2)


# ---------------------------------------------------------------- combining samples


def _three_samples() -> torch.Tensor:
    # pixel 0: [2, -3, 1.5] (2 of 3 say object), pixel 1: [-1, 0.5, -2] (1 of 3)
    return torch.tensor([[2.0, -1.0], [-3.0, 0.5], [1.5, -2.0]]).reshape(3, 1, 1, 1, 2)


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("max_logit", [2.0, 0.5]),
        ("mean_logit", [0.5 / 3, -2.5 / 3]),
        ("max_binary", [BINARY_LOGIT, BINARY_LOGIT]),
        ("mean_binary", [BINARY_LOGIT, -BINARY_LOGIT]),
        ("vote", [BINARY_LOGIT, -BINARY_LOGIT]),
    ],
)
def test_combine_samples_by_hand(strategy: str, expected: list[float]):
    out = combine_samples(_three_samples(), strategy)  # type: ignore[arg-type]
    assert out.shape == (1, 1, 1, 2)
    torch.testing.assert_close(out.flatten(), torch.tensor(expected))


def test_binary_strategies_on_a_tie():
    tie = torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1, 1)
    assert combine_samples(tie, "mean_binary").item() == BINARY_LOGIT
    assert combine_samples(tie, "vote").item() == -BINARY_LOGIT
    assert set(COMBINE_STRATEGIES) == {
        "max_logit",
        "mean_logit",
        "max_binary",
        "mean_binary",
        "vote",
    }
    with pytest.raises(ValueError):
        combine_samples(tie, "median")  # type: ignore[arg-type]


def test_uncertainty_zero_when_unanimous_and_max_on_even_split():
    # pixel 0: all object, pixel 1: all background, pixel 2: split 2-2
    logits = torch.tensor(
        [[5.0, -5.0, 5.0], [3.0, -1.0, -5.0], [1.0, -2.0, 5.0], [4.0, -3.0, -5.0]]
    ).reshape(4, 1, 1, 1, 3)
    for kind in ("vote_entropy", "disagreement"):
        u = uncertainty_map(logits, kind).flatten()  # type: ignore[arg-type]
        torch.testing.assert_close(u, torch.tensor([0.0, 0.0, 1.0]))
    # 3 of 4: entropy of 0.75 in bits, disagreement 2 * 0.25
    three = torch.tensor([1.0, 2.0, 3.0, -1.0]).reshape(4, 1, 1, 1, 1)
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert uncertainty_map(three).item() == pytest.approx(h)
    assert uncertainty_map(three, "disagreement").item() == pytest.approx(0.5)
    saturated = torch.tensor([[100.0, 5.0], [100.0, -5.0]]).reshape(2, 1, 1, 1, 2)
    p = uncertainty_map(saturated, "probability_entropy").flatten()
    assert p[0].item() == pytest.approx(0.0, abs=1e-6)
    assert p[1].item() == pytest.approx(1.0)


# ---------------------------------------------------------------- losses


def _bce(x: float, t: float) -> float:
    p = 1 / (1 + math.exp(-x))
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_bce_dice_loss_by_hand():
    logits = torch.tensor([[[[2.0, -1.0]]], [[[0.5, 0.0]]]])  # (2, 1, 1, 2)
    target = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]]])
    bce = (_bce(2, 1) + _bce(-1, 0) + _bce(0.5, 0) + _bce(0, 1)) / 4
    d0 = 1 - (2 * _sig(2) + 1) / (_sig(2) + _sig(-1) + 1 + 1)
    d1 = 1 - (2 * _sig(0) + 1) / (_sig(0.5) + _sig(0) + 1 + 1)
    expected = bce + (d0 + d1) / 2
    assert bce_dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_bce_dice_loss_ignores_ignored_pixels():
    logits = torch.tensor([[[[2.0, -1.0, 7.0]]]])
    target = torch.tensor([[[[1.0, 0.0, 0.0]]]])
    ignore = torch.tensor([[[[False, False, True]]]])
    bce = (_bce(2, 1) + _bce(-1, 0)) / 2
    dice = 1 - (2 * _sig(2) + 1) / (_sig(2) + _sig(-1) + 1 + 1)
    got = bce_dice_loss(logits, target, ignore)
    assert got.item() == pytest.approx(bce + dice, rel=1e-6)
    # Whatever the ignored pixel holds, the loss and its gradient there do not change.
    moved = logits.clone()
    moved[..., 2] = -30.0
    moved.requires_grad_()
    again = bce_dice_loss(moved, target, ignore)
    assert again.item() == pytest.approx(got.item(), rel=1e-6)
    again.backward()
    assert moved.grad[..., 2].item() == 0.0
    # Everything ignored: zero, not NaN.
    assert bce_dice_loss(logits, target, torch.ones_like(ignore)).item() == 0.0


def test_prosam_loss_is_the_mean_of_per_sample_losses():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 2, 1, 4, 4, generator=g) * 3
    target = (torch.rand(2, 1, 4, 4, generator=g) > 0.5).float()
    ignore = torch.rand(2, 1, 4, 4, generator=g) > 0.8
    expected = torch.stack([bce_dice_loss(lg, target, ignore) for lg in logits]).mean()
    torch.testing.assert_close(prosam_loss(logits, target, ignore), expected)
    by_hand_one = bce_dice_loss(logits[:1, :1].flatten(0, 1), target[:1])
    torch.testing.assert_close(prosam_loss(logits[:1, :1], target[:1]), by_hand_one)
