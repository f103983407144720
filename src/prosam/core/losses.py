"""The segmentation loss every prosam trainer uses: VRP-SAM's BCE + Dice."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from prosam.errors import InputError


def _broadcast(name: str, x: Tensor, logits: Tensor) -> Tensor:
    if x.ndim != 4 or x.shape[1:] != logits.shape[1:] or x.shape[0] not in (1, logits.shape[0]):
        raise InputError(f"{name} {tuple(x.shape)} does not fit logits {tuple(logits.shape)}")
    return x.expand_as(logits)


def bce_dice_loss(
    logits: Tensor,
    target: Tensor,
    ignore: Tensor | None = None,
    *,
    smooth: float = 1.0,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """BCE + Dice of ``(B, 1, H, W)`` logits, as VRP-SAM's code computes them.

    Dice is ``1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)`` per image with
    ``p = sigmoid(logits)`` over non-ignored pixels (the paper's eq. 6 writes squared sums
    and no smoothing). ``reduction="mean"`` returns a scalar: BCE averaged over every valid
    pixel of the batch plus the batch-mean Dice. ``"none"`` returns ``(B,)``: each image's
    BCE averaged over its own valid pixels plus its Dice (so a batch of one gives the same
    value either way).

    Args:
        target: ``(B or 1, 1, H, W)`` in ``[0, 1]``.
        ignore: like ``target``; non-zero pixels are excluded from both terms.
    """
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise InputError(f"logits must be (B, 1, H, W), got {tuple(logits.shape)}")
    if reduction not in ("mean", "none"):
        raise InputError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    target = _broadcast("target", target.to(logits.dtype), logits)
    if ignore is None:
        valid = torch.ones_like(logits)
    else:
        valid = _broadcast("ignore", (ignore == 0).to(logits.dtype), logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce_sums = (bce * valid).flatten(1).sum(1)
    counts = valid.flatten(1).sum(1)
    p = torch.sigmoid(logits) * valid
    t = target * valid
    inter = (p * t).flatten(1).sum(1)
    denom = p.flatten(1).sum(1) + t.flatten(1).sum(1)
    dice = 1 - (2 * inter + smooth) / (denom + smooth)
    if reduction == "none":
        return bce_sums / counts.clamp_min(1.0) + dice
    return bce_sums.sum() / counts.sum().clamp_min(1.0) + dice.mean()
