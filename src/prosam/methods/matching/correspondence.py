"""Patch-level correspondence between a reference and a target feature grid.

:func:`bidirectional_matches` is Matcher's patch matching: every reference foreground cell
is matched to a target cell (its nearest neighbour, or one-to-one with the Hungarian
algorithm as Matcher does), and a matched target cell is kept only when its own best match
among *all* reference cells lands back inside the reference foreground (the reverse check
that drops matches on background look-alikes).

:func:`similarity_priors` are GF-SAM's positive-negative maps over the target cells: the
mean and the max similarity to the reference foreground and the mean similarity to the
reference background.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from prosam.errors import InputError

Assignment = Literal["nearest", "hungarian"]


@dataclass
class Matches:
    """Kept correspondences: target cells ``(M,)`` (flat indices into the target grid, each
    once), the reference cells they matched ``(M,)`` and their cosine similarities ``(M,)``.
    ``forward`` is how many foreground cells were matched before the reverse check."""

    target_cells: torch.Tensor
    reference_cells: torch.Tensor
    scores: torch.Tensor
    forward: int

    @property
    def kept_fraction(self) -> float:
        """The share of forward matches that survived the reverse check."""
        return len(self.target_cells) / self.forward if self.forward else 0.0


def _flat(features: torch.Tensor, name: str) -> torch.Tensor:
    if features.ndim != 3:
        raise InputError(f"{name} must be (C, h, w), got {tuple(features.shape)}")
    return F.normalize(features.reshape(features.shape[0], -1).float(), dim=0)


def similarity_matrix(reference: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``(h_r * w_r, h_t * w_t)`` of every reference and target cell."""
    r, t = _flat(reference, "reference"), _flat(target, "target")
    if r.shape[0] != t.shape[0]:
        raise InputError(f"reference has {r.shape[0]} channels, target {t.shape[0]}")
    return r.T @ t


def bidirectional_matches(
    reference: torch.Tensor,
    foreground: torch.Tensor,
    target: torch.Tensor,
    *,
    assignment: Assignment = "nearest",
    similarity: torch.Tensor | None = None,
) -> Matches:
    """Match the reference's foreground cells into the target and keep the cycle-consistent
    matches (see the module docstring).

    Args:
        reference, target: ``(C, h, w)`` feature grids.
        foreground: ``(h_r, w_r)`` bool, the reference cells inside the annotation.
        similarity: :func:`similarity_matrix` of the two, if already computed.
    """
    if assignment not in ("nearest", "hungarian"):
        raise InputError(f"assignment must be 'nearest' or 'hungarian', got {assignment!r}")
    fg = foreground.reshape(-1).bool().to(reference.device)
    if fg.numel() != reference.shape[-2] * reference.shape[-1]:
        raise InputError(
            f"foreground {tuple(foreground.shape)} does not match the reference grid "
            f"{tuple(reference.shape[-2:])}"
        )
    fg_cells = torch.nonzero(fg).flatten()
    if len(fg_cells) == 0:
        raise InputError("the reference annotation covers no feature cell (it is empty)")
    sim = similarity_matrix(reference, target) if similarity is None else similarity
    forward_sim = sim[fg_cells]  # (F, T)
    if assignment == "hungarian":
        rows, cols = linear_sum_assignment(forward_sim.cpu().numpy(), maximize=True)
        ref_cells = fg_cells[torch.as_tensor(rows, device=fg_cells.device)]
        tgt_cells = torch.as_tensor(cols, device=fg_cells.device)
    else:
        ref_cells, tgt_cells = fg_cells, forward_sim.argmax(dim=1)
    scores = sim[ref_cells, tgt_cells]
    back = sim[:, tgt_cells].argmax(dim=0)  # each matched target cell's best reference cell
    keep = fg[back]
    ref_cells, tgt_cells, scores = ref_cells[keep], tgt_cells[keep], scores[keep]
    # One entry per target cell: the best-scoring of the reference cells that chose it.
    order = torch.argsort(scores, descending=True)
    seen: set[int] = set()
    chosen = []
    for i in order.tolist():
        cell = int(tgt_cells[i])
        if cell not in seen:
            seen.add(cell)
            chosen.append(i)
    idx = torch.as_tensor(chosen, dtype=torch.long, device=scores.device)
    return Matches(tgt_cells[idx], ref_cells[idx], scores[idx], forward=len(fg_cells))


@dataclass
class Priors:
    """Per-target-cell maps ``(h, w)``: mean / max cosine similarity to the reference
    foreground (``positive_mean``, ``positive_max``, any cell with part of the annotation),
    mean to its background (``negative_mean``, zeros when the reference has no background)
    and max to its cells wholly outside the annotation (``negative_max``, -1 when none)."""

    positive_mean: torch.Tensor
    positive_max: torch.Tensor
    negative_mean: torch.Tensor
    negative_max: torch.Tensor


def similarity_priors(
    similarity: torch.Tensor, foreground_weights: torch.Tensor, target_size: tuple[int, int]
) -> Priors:
    """GF-SAM's positive / negative similarity maps from a :func:`similarity_matrix`.

    ``foreground_weights`` ``(h_r, w_r)`` in ``[0, 1]`` weight each reference cell (the
    fraction of it inside the annotation); background weights are ``1 - w``.
    """
    w = foreground_weights.reshape(-1, 1).float().to(similarity.device)
    if w.shape[0] != similarity.shape[0]:
        raise InputError("foreground_weights do not match the similarity matrix")
    h, wt = target_size
    pos_mean = (similarity * w).sum(0) / w.sum().clamp_min(1e-6)
    pos_max = torch.where(w > 0, similarity, torch.full_like(similarity, -1.0)).amax(0)
    neg = 1 - w
    neg_mean = (similarity * neg).sum(0) / neg.sum().clamp_min(1e-6)
    neg_max = torch.where(w == 0, similarity, torch.full_like(similarity, -1.0)).amax(0)
    return Priors(
        pos_mean.reshape(h, wt),
        pos_max.reshape(h, wt),
        neg_mean.reshape(h, wt),
        neg_max.reshape(h, wt),
    )


def positive_cells(priors: Priors, rule: str = "mean") -> torch.Tensor:
    """``(h, w)`` 1.0 where a target cell looks more like the reference foreground than its
    background: by ``"mean"`` similarity (GF-SAM's alignment), or by its ``"nearest"``
    reference cell (foreground max above pure-background max)."""
    if rule == "mean":
        return (priors.positive_mean > priors.negative_mean).float()
    if rule == "nearest":
        return (priors.positive_max > priors.negative_max).float()
    raise InputError(f"rule must be 'mean' or 'nearest', got {rule!r}")


def cell_centres(cells: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """``(M, 2)`` pixel ``x, y`` centres in an ``size = (H, W)`` image of flat cell indices on
    a ``grid = (h, w)`` spanning the image."""
    h, w = grid
    rows = (cells // w).cpu().numpy().astype(np.float64)
    cols = (cells % w).cpu().numpy().astype(np.float64)
    return np.stack([(cols + 0.5) * size[1] / w, (rows + 0.5) * size[0] / h], axis=1)
