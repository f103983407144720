"""Per-mask quality signals: numbers a finished prediction gives about its own mask.

Three kinds, all "free" (no extra SAM call):

- the method's scalars: its ``score`` and every 0-d tensor in ``extras`` (``matcher``:
  ``presence_*``, ``mask_purity``, ``mask_match``, ``sam_iou``, ...);
- the mask's shape at the image's size (:func:`shape_signals`): how much of the image it
  covers, how much of the image border it touches, in how many pieces;
- the stability of SAM's logits (:func:`stability_score`): the IoU of the mask thresholded
  a little above and a little below 0, SAM's own stability score (Stable-SAM's idea of
  stability, applied to one's own output).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from prosam.methods.base import MethodOutput

STABILITY_OFFSET = 1.0
"""The logit offset of :func:`stability_score` (segment-anything's default)."""


def stability_score(low_res_logits: torch.Tensor, offset: float = STABILITY_OFFSET) -> float:
    """IoU of ``logits > offset`` with ``logits > -offset`` (1 when both are empty)."""
    logits = low_res_logits.detach().float()
    inner = int((logits > offset).sum())
    outer = int((logits > -offset).sum())
    return 1.0 if outer == 0 else inner / outer


def shape_signals(mask: np.ndarray) -> dict[str, float]:
    """Shape of a bool ``(H, W)`` mask: ``area_fraction`` (and ``log_area_fraction``,
    log10, floored at 1e-6), ``border_fraction`` (share of the image's border pixels
    inside the mask), ``components`` (8-connected pieces), ``largest_component`` (the
    biggest piece's share of the mask) and ``fill`` (mask area over its bounding box's)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"expected a non-empty (H, W) mask, got shape {mask.shape}")
    area = int(mask.sum())
    fraction = area / mask.size
    border = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    signals = {
        "area_fraction": fraction,
        "log_area_fraction": math.log10(max(fraction, 1e-6)),
        "border_fraction": float(border.mean()),
        "components": 0.0,
        "largest_component": 0.0,
        "fill": 0.0,
    }
    if area == 0:
        return signals
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())[1:]
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    signals.update(
        components=float(n), largest_component=float(sizes.max()) / area, fill=area / float(box)
    )
    return signals


def mask_signals(
    output: MethodOutput, mask: np.ndarray, *, uncertainty: float | None = None
) -> dict[str, float]:
    """Every signal of one class mask: ``output``'s ``score`` and 0-d extras, its number of
    ``instances``, the ``stability`` of its logits, the :func:`shape_signals` of ``mask``
    (the class mask at the image's size) and, when given, the method's mean
    ``uncertainty`` inside the mask."""
    signals = {"score": float(output.score)}
    for key, value in output.extras.items():
        if isinstance(value, torch.Tensor) and value.ndim == 0:
            signals[key] = float(value)
    signals["instances"] = float(len(output.instances))
    signals["stability"] = stability_score(output.low_res_logits)
    signals.update(shape_signals(mask))
    if uncertainty is not None:
        signals["uncertainty"] = float(uncertainty)
    return signals
