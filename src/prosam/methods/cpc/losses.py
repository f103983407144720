"""CPC-SAM's objective: the cumulative segmentation loss across reweighted prompts.

For entity instance ``n`` (an entity on one support image, ground truth ``y_n``), prompt set
``m`` decodes to logits ``z[n, m]`` and the calibrated prompt to ``ẑ[n]``. With
``L = BCE + Dice`` (:func:`prosam.core.losses.bce_dice_loss` per sample, VRP-SAM's loss),
``p = sigmoid``, the
combined weights ``w[n, m]`` and the task weights ``τ[m]`` of :mod:`.capl`::

    L[n, m]  = L(z[n, m], y_n)                    per-set loss
    L_entity = mean_n Σ_m w[n, m] L[n, m]           cumulative reweighted loss (optimality)
    L_task   = Σ_m τ[m] mean_n L[n, m]              shared weights must suit every entity
    L_cal    = mean_n L(ẑ[n], y_n)                  the calibrated prompt itself
    C        = mean_n Σ_m sg(w[n, m]) mean_px (p(z[n, m]) - p(ẑ[n]))²   consistency
    total    = λ_entity L_entity + λ_task L_task + λ_cal L_cal + λ_cons C

``sg`` is stop-gradient: the consistency term cannot be lowered by moving the weights (which
would collapse them onto one set); it pulls the calibrated prediction towards the weighted
consensus of the sets (through CaPL) and the sets towards each other (through the decoder
adapter). All λ default to 1. Pixels are those of the unpadded image region, at the
decoder's low resolution; ``ignore`` pixels count in neither term.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prosam.core.losses import bce_dice_loss
from prosam.errors import InputError
from prosam.methods.cpc.capl import PromptWeights


@dataclass
class LossWeights:
    """The λ of the objective (module docstring)."""

    entity: float = 1.0
    task: float = 1.0
    calibrated: float = 1.0
    consistency: float = 1.0


@dataclass
class LossTerms:
    """The objective and its parts; ``per_set (N, M)`` and ``per_calibrated (N,)`` detached."""

    total: Tensor
    entity: Tensor
    task: Tensor
    calibrated: Tensor
    consistency: Tensor
    per_set: Tensor
    per_calibrated: Tensor

    def as_floats(self) -> dict[str, float]:
        names = ("total", "entity", "task", "calibrated", "consistency")
        return {k: float(getattr(self, k).detach()) for k in names}


def consistency_to_calibrated(
    set_logits: Tensor, calibrated_logits: Tensor, ignore: Tensor | None = None
) -> Tensor:
    """``mean_px (p(z_m) - p(ẑ))²`` over valid pixels, per set: ``(M,)``."""
    diff = (torch.sigmoid(set_logits) - torch.sigmoid(calibrated_logits)) ** 2
    if ignore is None:
        return diff.flatten(1).mean(1)
    valid = (ignore == 0).to(diff.dtype).expand_as(diff)
    return (diff * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1.0)


def cumulative_loss(
    set_logits: Sequence[Tensor],
    calibrated_logits: Sequence[Tensor],
    targets: Sequence[Tensor],
    weights: PromptWeights,
    lambdas: LossWeights | None = None,
    ignores: Sequence[Tensor | None] | None = None,
) -> LossTerms:
    """The objective of the module docstring.

    Per entity instance n: ``set_logits[n] (M, 1, h, w)``, ``calibrated_logits[n]
    (1, 1, h, w)``, ``targets[n] (1, 1, h, w)`` (sizes may differ between instances).
    """
    lam = lambdas or LossWeights()
    n = len(set_logits)
    if not (n == len(calibrated_logits) == len(targets) == weights.combined.shape[0]):
        raise InputError("set_logits, calibrated_logits, targets and weights disagree on N")
    ign = list(ignores) if ignores is not None else [None] * n
    per_set, per_cal, cons = [], [], []
    for z, zc, y, ig in zip(set_logits, calibrated_logits, targets, ign, strict=True):
        per_set.append(bce_dice_loss(z, y, ig, reduction="none"))
        per_cal.append(bce_dice_loss(zc, y, ig, reduction="none")[0])
        cons.append(consistency_to_calibrated(z, zc, ig))
    losses = torch.stack(per_set)  # (N, M)
    cal = torch.stack(per_cal)  # (N,)
    w = weights.combined.to(losses)
    entity = (w * losses).sum(1).mean()
    task = (weights.task.to(losses) * losses.mean(0)).sum()
    calibrated = cal.mean()
    consistency = (w.detach() * torch.stack(cons)).sum(1).mean()
    total = (
        lam.entity * entity
        + lam.task * task
        + lam.calibrated * calibrated
        + lam.consistency * consistency
    )
    return LossTerms(total, entity, task, calibrated, consistency, losses.detach(), cal.detach())
