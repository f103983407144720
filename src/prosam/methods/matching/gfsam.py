"""``gfsam``: GF-SAM's point-mask graph on prosam's matching features, every instance.

prosam's reading of GF-SAM (Zhang et al., "Bridge the Points: Graph-based Few-shot Segment
Anything Semantically", NeurIPS 2024) for a CPU budget:

1. **Points**: the target cells where the positive prior (mean x max similarity to the
   reference foreground, each scaled to ``[0, 1]``) beats the scaled mean similarity to the
   reference background; the best ``k`` of them prompt SAM one at a time, ``k`` the sum of
   that filtered prior (GF-SAM's rule), at most ``max_points``.
2. **Graph**: point ``j`` is linked to point ``i`` when ``i``'s mask covers ``j``'s cell;
   the weakly connected components of that graph are the candidate objects.
3. **Mask growth**: in each component the masks are taken by their mean positive-minus-
   negative score, best first, and a mask joins the object when the part of it not yet
   covered holds more positive cells than negative ones (a cell is positive when its squared
   mean similarity to the reference foreground beats its background similarity scaled by the
   middle of the foreground map's range). A component that keeps no mask is not an object.
4. If no component keeps a mask, the best-scoring component's best mask is the answer, as
   in GF-SAM (the presence score, the same as ``matcher``'s, says whether to keep it).

GF-SAM also checks each point's consistency with the other components before the final
union; prosam leaves that step out (one more similarity pass per component). GF-SAM prompts
up to 128 points on a GPU; here ``max_points`` is 16, and the growth's positive cells follow
``matcher``'s rule by default: both chosen on the coco-mini validation episodes
(``docs/methods.md``, "GF-SAM-style graph").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.sparse import csgraph, csr_matrix

from prosam.errors import InputError
from prosam.methods.base import InstanceMask, MethodOutput, Target
from prosam.methods.matching.correspondence import (
    cell_centres,
)
from prosam.methods.matching.method import MatcherMethod, low_res_to_grid, presence_score
from prosam.methods.similarity import minmax_normalise
from prosam.sam.model import FrozenSam


def point_components(covers: np.ndarray) -> np.ndarray:
    """Component label of each point, from ``covers[i, j]`` = mask ``i`` covers point ``j``
    (weakly connected components of that directed graph)."""
    n = covers.shape[0]
    if covers.shape != (n, n):
        raise InputError(f"covers must be square, got {covers.shape}")
    _, labels = csgraph.connected_components(
        csr_matrix(covers.astype(np.int8)), directed=True, connection="weak"
    )
    return labels


def grow_object(cells: torch.Tensor, scores: torch.Tensor, positive: torch.Tensor) -> list[int]:
    """GF-SAM's mask growth: indices of the masks kept, taken in descending ``scores``; a mask
    is kept when its cells not yet covered hold more ``positive`` than negative cells.

    ``cells`` ``(M, h, w)`` are the masks on the feature grid (fractions in ``[0, 1]``)."""
    covered = torch.zeros_like(positive)
    kept = []
    for i in torch.argsort(scores, descending=True).tolist():
        new = cells[i] * (1 - covered)
        pos = float((new * positive).sum())
        neg = float((new * (1 - positive)).sum())
        if pos > neg:
            kept.append(i)
            covered = torch.clamp(covered + new, max=1.0)
    return kept


class GFSamMethod(MatcherMethod):
    """GF-SAM's point selection, point-mask graph and mask growth (module docstring); the
    features, presence score and quality signals are ``matcher``'s.

    Args:
        max_points: at most this many points prompt SAM (one decoder call each).
        cover: a mask covers a point when at least this fraction of the point's cell is in
            the mask.
        positive_rule: which cells count as positive in the mask growth: ``"gfsam"``
            (squared foreground mean above the background mean scaled by the middle of the
            foreground map's range, GF-SAM's rule) or ``"mean"`` (foreground mean above
            background mean, ``matcher``'s purity rule).
        fallback: with no object kept, answer the best component's best mask (GF-SAM)
            instead of nothing.
        candidate: each point's mask: SAM's ``"single"`` output (GF-SAM), or of its three
            multimask outputs the one whose cells score best (``"best_score"``: mean
            positive-minus-negative score, as the mask growth ranks masks).
        zoom_context: as matcher's, but off (0) by default: gfsam's defaults were chosen
            on validation before the zoom existed, and it is unmeasured with it.
        zoom_target: must stay 0: gfsam does not match again inside a zoomed target.
        backbone, extra_feature_sizes: as matcher's, but Lite0 at one size by default
            (``matcher_fast``'s features): gfsam's defaults and presence threshold were
            measured with them.
        Other arguments as :class:`~prosam.methods.matching.method.MatcherMethod`.
    """

    name = "gfsam"

    def __init__(
        self,
        model: FrozenSam,
        *,
        max_points: int = 16,
        cover: float = 0.5,
        positive_rule: str = "mean",
        fallback: bool = True,
        candidate: str = "single",
        zoom_context: float = 0.0,
        zoom_target: float = 0.0,
        backbone: str = "efficientnet_lite0",
        extra_feature_sizes: Sequence[int] = (),
        **options: object,
    ) -> None:
        if zoom_target:
            raise InputError("gfsam does not zoom into targets: zoom_target must be 0")
        if not 0.0 < cover <= 1.0:
            raise InputError(f"cover must be in (0, 1], got {cover}")
        if positive_rule not in ("gfsam", "mean"):
            raise InputError(f"positive_rule must be 'gfsam' or 'mean', got {positive_rule!r}")
        super().__init__(
            model,
            max_points=max_points,
            zoom_context=zoom_context,
            zoom_target=0.0,
            backbone=backbone,
            extra_feature_sizes=extra_feature_sizes,
            **options,  # type: ignore[arg-type]
        )
        self.cover = cover
        self.positive_rule = positive_rule
        self.fallback = fallback
        if candidate not in ("single", "best_score"):
            raise InputError(f"candidate must be 'single' or 'best_score', got {candidate!r}")
        self.candidate = candidate

    def _select_points(self, filtered: torch.Tensor) -> torch.Tensor:
        """Flat cells of the best ``k`` points of the filtered prior (k = its sum)."""
        flat = filtered.reshape(-1)
        total = float(flat.sum())
        k = min(int(total), self.max_points, int((flat > 0).sum()))
        if k == 0:
            k = 1  # GF-SAM keeps one point when the map is weak but not empty
        return flat.topk(k).indices

    @torch.inference_mode()
    def predict(self, target: Target) -> MethodOutput:
        """Segment every instance of the referenced kind in ``target``."""
        embedded = target.embedded
        found = self.target_similarity(target)
        grid, priors = found.grid, found.priors
        cross = minmax_normalise(priors.positive_mean * priors.positive_max)
        negative = minmax_normalise(priors.negative_mean)
        filtered = cross * (negative <= cross).float()
        if self.positive_rule == "gfsam":
            half = (priors.positive_mean.max() + priors.positive_mean.min()) / 2
            region_score = priors.positive_mean**2 - priors.negative_mean * half
        else:
            region_score = priors.positive_mean - priors.negative_mean
        positive = (region_score > 0).float()
        cells_idx = self._select_points(filtered)
        size = tuple(int(v) for v in embedded.geometry.original_size)
        xy = cell_centres(cells_idx, grid, size)  # type: ignore[arg-type]
        logits, ious = [], []
        multimask = self.candidate == "best_score"
        set_low, set_iou = self.predictor.predict_low_res_sets(
            embedded, xy[:, None], multimask_output=multimask
        )
        for low, iou in zip(set_low, set_iou, strict=True):
            pick = 0
            if multimask:
                options = low_res_to_grid(low, embedded, grid)
                fit = (options * region_score).sum((-1, -2)) / options.sum((-1, -2)).clamp_min(1e-6)
                pick = int(fit.argmax())
            logits.append(low[pick])
            ious.append(float(iou.reshape(-1)[pick]))
        stacked = torch.stack(logits)
        cells = low_res_to_grid(stacked, embedded, grid)  # (M, h, w)
        at_points = cells.reshape(len(cells), -1)[:, cells_idx]  # (M, M)
        labels = point_components((at_points >= self.cover).cpu().numpy())
        area = cells.sum((-1, -2)).clamp_min(1e-6)
        mask_scores = (cells * region_score).sum((-1, -2)) / area
        instances: list[InstanceMask] = []
        best_component: tuple[float, int] | None = None
        for component in np.unique(labels):
            members = np.flatnonzero(labels == component)
            member_t = torch.as_tensor(members)
            kept = grow_object(cells[member_t], mask_scores[member_t], positive)
            component_score = float(mask_scores[member_t].max())
            if best_component is None or component_score > best_component[0]:
                best_component = (
                    component_score,
                    int(members[int(mask_scores[member_t].argmax())]),
                )
            if not kept:
                continue
            chosen = member_t[torch.as_tensor(kept)]
            union = stacked[chosen].amax(0)[None]
            scored = self.score_candidates(
                union, torch.ones(1), embedded, positive, priors.positive_max.clamp(0, 1)
            )
            score = scored[0].purity * scored[0].match if scored else 0.0
            instances.append(
                InstanceMask(union, score, float(np.mean([ious[i] for i in chosen.tolist()])))
            )
        if not instances and best_component is not None and self.fallback:
            i = best_component[1]
            instances = [InstanceMask(stacked[i][None], 0.0, ious[i])]
        instances = sorted(instances, key=lambda inst: inst.score, reverse=True)
        instances = instances[: self.max_instances]
        side = self.model.sam.prompt_encoder.mask_input_size
        if instances:
            class_logits = torch.stack([i.low_res_logits for i in instances]).amax(0)
        else:
            class_logits = torch.full((1, *side), -20.0, device=self.model.device)
        matched_positive = (priors.positive_mean > priors.negative_mean).float()
        extras = {
            "points": torch.as_tensor(xy, dtype=torch.float32),
            "prior": filtered.cpu(),
            "components": torch.tensor(float(len(np.unique(labels)))),
            **self.presence_signals(
                self.own_positive_max(found.similarity, grid, priors), matched_positive
            ),
            **self.mask_signals(
                class_logits, instances, embedded, matched_positive, priors.positive_max
            ),
        }
        presence = presence_score(extras["presence_peak"], extras["presence_match"])
        return MethodOutput(class_logits, presence, extras, instances)


def build_gfsam(model: FrozenSam, **options: object) -> GFSamMethod:
    """The registry's ``gfsam``."""
    return GFSamMethod(model, **options)


__all__ = ["GFSamMethod", "build_gfsam", "grow_object", "point_components"]
