"""Several entities on one image: every pixel goes to at most one of them."""

from __future__ import annotations

import torch
from torch import Tensor

from prosam.errors import InputError

#: Logit given to pixels an entity loses in :func:`resolve_overlaps` (sigmoid ≈ 2e-9).
SUPPRESSED_LOGIT = -20.0


def resolve_overlaps(logits: Tensor, threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """Give each pixel to at most one entity: the one of highest sigmoid probability, if
    that probability is ``> threshold``.

    Args:
        logits: ``(E, ..., H, W)`` per-entity logits at any resolution.

    Returns:
        ``labels (..., H, W)`` (entity index, ``-1`` for none; ties go to the lower index)
        and the resolved logits: unchanged where the entity won, capped at
        :data:`SUPPRESSED_LOGIT` elsewhere, so no pixel is ``> threshold`` for two entities.
    """
    if logits.ndim < 3:
        raise InputError(f"logits must be (E, ..., H, W), got {tuple(logits.shape)}")
    prob = torch.sigmoid(logits.float())
    best = prob.argmax(dim=0)
    top = prob.gather(0, best[None])[0]
    labels = torch.where(top > threshold, best, torch.full_like(best, -1))
    ids = torch.arange(logits.shape[0], device=logits.device).reshape(-1, *[1] * (logits.ndim - 1))
    resolved = torch.where(labels[None] == ids, logits, logits.clamp(max=SUPPRESSED_LOGIT))
    return labels, resolved
