"""ProSAM's verification study (section 5.3): point prompts versus a prompt distribution.

For one image and mask, against the frozen SAM decoder and with no prompt encoder at all:

- (a) ``starts`` single prompt embeddings ``z`` (``tokens x D``), each fitted by gradient
  descent from its own random start ``N(0, init_std^2)`` with VRP-SAM's loss (BCE + Dice),
  which is what a deterministic prompt encoder optimises;
- (b) one prompt distribution (``mu``, ``log_sigma``), fitted with ProSAM's loss: the mean
  BCE + Dice of ``samples`` reparameterised draws (eq. 5-7, 10), started like (a).

Both stop when the loss has not improved by more than ``min_delta`` for ``patience``
steps (the paper: 3e-4 over 100), or after ``max_steps``. The study then reports each
solution's IoU and BCE, the IoU and BCE of draws from the fitted distribution, and the mean
IoU of every solution under random perturbations ``z + s * eps`` (``eps ~ N(0, I)``) of
increasing absolute size ``s``: a prompt near the centre of the region of good prompts
keeps its IoU longer than one near the region's edge, the paper's claim for (b).

IoU and BCE are measured on the decoder's low-resolution logits over the unpadded image
area, against the mask resampled to that grid (nearest), the same target training uses.

Choices where the paper is silent (all settings of :class:`VerificationSettings`): Adam
with ``lr`` 0.1; ``log_sigma`` starts at 0; the perturbation is absolute, not relative to
the embedding's norm, so every solution meets the same noise. The paper's 200 starts cost
about 200 x steps decoder passes; the default of 20 keeps a CPU run in minutes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from prosam.core.losses import bce_dice_loss
from prosam.errors import InputError
from prosam.methods.prompt_encoder.network import decode_prompt_logits
from prosam.methods.prompt_encoder.variational import (
    PromptDistribution,
    prosam_loss,
    sample_prompts,
)
from prosam.methods.prompt_encoder.verification_settings import VerificationSettings
from prosam.metrics import mask_iou
from prosam.sam.model import FrozenSam
from prosam.sam.predictor import ImageEmbedding
from prosam.sam.transforms import mask_to_low_res

__all__ = ["VerificationSettings", "plot_verification", "run_verification"]


@dataclass
class _Target:
    embedding: Tensor  # (1, C, h, w)
    mask: Tensor  # (1, 1, h', w')
    size: tuple[int, int]


def _logits(sam: FrozenSam, target: _Target, prompts: Tensor) -> Tensor:
    """``(N, 1, h', w')`` cropped low-res logits of ``(N, Q, D)`` prompt sets."""
    low, _ = decode_prompt_logits(sam, target.embedding, prompts[:, None])
    h, w = target.size
    return low[:, 0, :, :h, :w]


@torch.no_grad()
def _score(sam: FrozenSam, target: _Target, prompts: Tensor) -> tuple[list[float], list[float]]:
    """IoU (``logit > 0``) and mean BCE of each of ``(N, Q, D)`` prompt sets."""
    ious, bces = [], []
    for z in prompts:
        logits = _logits(sam, target, z[None])
        ious.append(mask_iou(logits > 0, target.mask > 0.5))
        bces.append(F.binary_cross_entropy_with_logits(logits, target.mask).item())
    return ious, bces


def _fit(
    params: list[Tensor],
    loss_fn: Callable[[], Tensor],
    s: VerificationSettings,
) -> tuple[int, float]:
    """Adam on ``params`` until the early-stopping rule fires; ``(steps, last loss)``."""
    opt = torch.optim.Adam(params, lr=s.lr)
    best, since, loss_value = math.inf, 0, math.inf
    steps = 0
    while steps < s.max_steps:
        steps += 1
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
        if loss_value < best - s.min_delta:
            best, since = loss_value, 0
        else:
            since += 1
            if since >= s.patience:
                break
    return steps, loss_value


def _perturbed_iou(
    sam: FrozenSam,
    target: _Target,
    z: Tensor,
    s: VerificationSettings,
    generator: torch.Generator,
) -> list[float]:
    """Mean IoU of ``z`` (``(Q, D)``) under ``draws`` perturbations at each scale."""
    out = []
    for scale in s.perturbation_scales:
        draws = 1 if scale == 0 else s.perturbation_draws
        eps = torch.randn((draws, *z.shape), generator=generator)
        ious, _ = _score(sam, target, z[None] + scale * eps)
        out.append(float(np.mean(ious)))
    return out


def run_verification(
    sam: FrozenSam,
    embedded: ImageEmbedding,
    mask: np.ndarray,
    settings: VerificationSettings | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fit single prompt embeddings and one prompt distribution to ``mask``; see the module.

    Returns a JSON-ready dict: ``singles`` (per start: ``iou``, ``bce``, ``steps``, ``loss``),
    ``distribution`` (``mean`` and ``samples`` scores, ``steps``, ``loss``, ``sigma``),
    ``perturbation`` (``scales``, per-start ``singles`` curves, the ``mean`` prompt's
    curve), ``mean_beats_fraction`` (share of single embeddings whose IoU the mean prompt
    reaches or beats) and ``settings``.
    """
    s = settings or VerificationSettings()
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise InputError("the verification study needs a non-empty mask")
    if mask.shape != embedded.geometry.original_size:
        raise InputError(
            f"mask {mask.shape} does not match the image {embedded.geometry.original_size}"
        )
    log = progress or (lambda _msg: None)
    for p in sam.sam.parameters():
        p.requires_grad_(False)
    low = sam.sam.prompt_encoder.mask_input_size[0]
    truth, size = mask_to_low_res(mask, embedded.geometry, low)
    target = _Target(embedded.embedding.detach(), truth.to(embedded.embedding.device), size)
    gen = torch.Generator().manual_seed(s.seed)
    dim = sam.embed_dim
    shape = (s.tokens, dim)

    singles: list[dict[str, Any]] = []
    single_prompts = []
    for i in range(s.starts):
        z = (s.init_std * torch.randn(shape, generator=gen)).requires_grad_(True)
        steps, loss = _fit(
            [z], lambda z=z: bce_dice_loss(_logits(sam, target, z[None]), target.mask), s
        )
        (iou,), (bce,) = _score(sam, target, z.detach()[None])
        singles.append({"iou": iou, "bce": bce, "steps": steps, "loss": loss})
        single_prompts.append(z.detach())
        log(f"single {i + 1}/{s.starts}: IoU {iou:.3f} BCE {bce:.4f} after {steps} steps")

    mu = (s.init_std * torch.randn((1, *shape), generator=gen)).requires_grad_(True)
    log_sigma = torch.full((1, *shape), s.init_log_sigma).requires_grad_(True)
    dist = PromptDistribution(mu, log_sigma)

    def draw(d: PromptDistribution, k: int) -> Tensor:
        """``k`` samples ``(k, 1, Q, D)`` of ``d`` with the study's family, nu and n."""
        return sample_prompts(d, k, family=s.family, nu=s.nu, n_mode=s.n_mode, generator=gen)  # type: ignore[arg-type]

    def dist_loss() -> Tensor:
        draws = draw(dist, s.samples)
        logits = torch.stack([_logits(sam, target, d) for d in draws])  # (K, 1, 1, h, w)
        return prosam_loss(logits, target.mask)

    steps, loss = _fit([mu, log_sigma], dist_loss, s)
    fitted = PromptDistribution(mu.detach(), log_sigma.detach())
    (mean_iou,), (mean_bce,) = _score(sam, target, fitted.mu)
    with torch.no_grad():
        draws = draw(fitted, s.eval_samples)[:, 0]
    sample_iou, sample_bce = _score(sam, target, draws)
    log(f"distribution: mean prompt IoU {mean_iou:.3f} BCE {mean_bce:.4f} after {steps} steps")

    curves = [_perturbed_iou(sam, target, z, s, gen) for z in single_prompts]
    mean_curve = _perturbed_iou(sam, target, fitted.mu[0], s, gen)
    return {
        "singles": singles,
        "distribution": {
            "mean": {"iou": mean_iou, "bce": mean_bce},
            "samples": [{"iou": i, "bce": b} for i, b in zip(sample_iou, sample_bce, strict=True)],
            "steps": steps,
            "loss": loss,
            "sigma": float(fitted.sigma.mean()),
        },
        "perturbation": {
            "scales": list(s.perturbation_scales),
            "singles": curves,
            "mean": mean_curve,
        },
        "mean_beats_fraction": float(np.mean([mean_iou >= r["iou"] for r in singles])),
        "projection": _projection(single_prompts, fitted.mu[0], draws),
        "settings": asdict(s),
    }


def _projection(singles: Sequence[Tensor], mean: Tensor, draws: Tensor) -> dict[str, Any]:
    """2-D PCA coordinates of the single embeddings, the mean prompt and the draws (the
    paper shows t-SNE; PCA keeps distances comparable and needs no extra dependency)."""
    rows = torch.cat([torch.stack(list(singles)), mean[None], draws]).flatten(1).double()
    centred = rows - rows.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    xy = (centred @ v[:2].T).tolist()
    n = len(singles)
    return {"singles": xy[:n], "mean": xy[n], "samples": xy[n + 1 :]}


def plot_verification(result: dict[str, Any], path: str) -> None:
    """Save the study's three panels (scores, perturbation curves, projection) as an image.

    Needs matplotlib (the ``plot`` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # optional dependency
        raise InputError("plotting needs matplotlib: pip install 'prosam[plot]'") from exc
    from prosam.io import atomic_path

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    singles, dist = result["singles"], result["distribution"]
    ax.scatter(
        [r["bce"] for r in singles],
        [r["iou"] for r in singles],
        c="grey",
        label="single embeddings (VRP-SAM's principle)",
    )
    ax.scatter(
        [r["bce"] for r in dist["samples"]],
        [r["iou"] for r in dist["samples"]],
        c="tab:blue",
        alpha=0.6,
        label="draws from the distribution",
    )
    ax.scatter(
        [dist["mean"]["bce"]],
        [dist["mean"]["iou"]],
        c="tab:red",
        marker="*",
        s=200,
        label="mean prompt (ProSAM's principle)",
    )
    ax.set_xlabel("BCE")
    ax.set_ylabel("IoU")
    ax.legend(fontsize=8)
    ax.set_title("fitted prompts")
    ax = axes[1]
    pert = result["perturbation"]
    scales = np.asarray(pert["scales"])
    curves = np.asarray(pert["singles"])
    ax.fill_between(
        scales,
        np.percentile(curves, 25, 0),
        np.percentile(curves, 75, 0),
        color="grey",
        alpha=0.3,
        label="single embeddings, 25-75 %",
    )
    ax.plot(scales, np.median(curves, 0), c="grey", label="single embeddings, median")
    ax.plot(scales, pert["mean"], c="tab:red", marker="o", label="mean prompt")
    ax.set_xlabel("perturbation std (absolute)")
    ax.set_ylabel("mean IoU")
    ax.legend(fontsize=8)
    ax.set_title("robustness to perturbation")
    ax = axes[2]
    proj = result["projection"]
    ax.scatter(*np.asarray(proj["singles"]).T, c="grey", label="single embeddings")
    ax.scatter(*np.asarray(proj["samples"]).T, c="tab:blue", alpha=0.6, label="draws")
    ax.scatter(*proj["mean"], c="tab:red", marker="*", s=200, label="mean prompt")
    ax.set_title("PCA of the prompt embeddings")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=str(path).rsplit(".", 1)[-1])
    plt.close(fig)
