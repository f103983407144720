"""Anchor prompts: SAM's own clicks placed where a target prior says the object is.

With ``anchor_points = k`` a VRP / ProSAM model prompts SAM's decoder with ``k`` positive
clicks spread over the prior's likely cells *and* its learned prompt tokens (scaled by a
trained gate that starts at 0), so the untrained model is "SAM clicked where the matcher
found the object" and training learns what to add. Not in VRP-SAM or ProSAM: the learned
tokens alone learn, within a CPU budget, a constant "main object" prompt that ignores the
reference; the clicks carry the reference's answer to the decoder whatever the tokens learn.

Cells are chosen by farthest-point sampling among the cells of probability >= ``inside``,
starting from the most likely one, so the clicks spread over every instance; with fewer
such cells than ``k`` the chosen ones repeat, and with none the ``k`` most likely cells are
clicked.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from prosam.errors import InputError
from prosam.sam.model import FrozenSam
from prosam.sam.transforms import ImageGeometry, transform_coords

#: A prior cell counts as the object's from this probability on.
INSIDE = 0.5


def anchor_cells(prior: Tensor, k: int, *, inside: float = INSIDE) -> Tensor:
    """``(k,)`` flat indices of the cells of an ``(h, w)`` prior map to click (see the
    module docstring)."""
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    flat = prior.reshape(-1).float()
    cells = torch.nonzero(flat >= inside).reshape(-1)
    if len(cells) == 0:
        return flat.topk(min(k, flat.numel())).indices.repeat(k)[:k]
    w = prior.shape[-1]
    pos = torch.stack([cells // w, cells % w], 1).float()
    chosen = [int(flat[cells].argmax())]
    nearest = (pos - pos[chosen[0]]).norm(dim=1)
    while len(chosen) < min(k, len(cells)):
        nxt = int(nearest.argmax())
        chosen.append(nxt)
        nearest = torch.minimum(nearest, (pos - pos[nxt]).norm(dim=1))
    picked = cells[torch.as_tensor(chosen)]
    return picked.repeat((k + len(picked) - 1) // len(picked))[:k]


def anchor_prompts(
    sam: FrozenSam, prior: Tensor, geometries: Sequence[ImageGeometry], k: int
) -> Tensor:
    """``(B, k + 1, D)``: SAM's sparse embedding of ``k`` positive clicks per target (and
    SAM's padding token), from ``(B, 1, h, w)`` priors over each image's whole extent."""
    if prior.shape[0] != len(geometries):
        raise InputError(f"{prior.shape[0]} priors but {len(geometries)} geometries")
    h, w = int(prior.shape[-2]), int(prior.shape[-1])
    coords = []
    for p, geometry in zip(prior, geometries, strict=True):
        cells = anchor_cells(p[0], k)
        height, width = geometry.original_size
        xy = torch.stack(
            [(cells % w + 0.5).float() * width / w, (cells // w + 0.5).float() * height / h], 1
        )
        coords.append(transform_coords(xy, geometry))
    points = torch.stack(coords).to(sam.device)
    labels = torch.ones(points.shape[:2], dtype=torch.int64, device=sam.device)
    with torch.no_grad():
        sparse, _ = sam.sam.prompt_encoder(points=(points, labels), boxes=None, masks=None)
    return sparse
