"""PerSAM-F (Zhang et al., "Personalize Segment Anything Model with One Shot"): PerSAM with
two weights fitted on the reference.

SAM's three multimask outputs for one click are the object at three scales (part, object,
whole). PerSAM-F learns how to mix them for the reference's object: the mask is
``(1 - w1 - w2) m1 + w1 m2 + w2 m3`` over the three logits maps, with ``w1, w2`` fitted by
AdamW on the reference's own annotation (Dice + focal loss). Everything else is frozen.

As in PerSAM-F, the target embedding is the average of the mean and the channel-wise
maximum of the reference's features inside the annotation, the prompt is the one most
similar pixel (no negative click), and the mixed mask is refined twice, each time with the
clicks, the box of the previous mask and the previous logits as mask input.

The decoder's three outputs on the reference do not change while the weights are fitted
(SAM is frozen and the prompt is fixed), so they are computed once and the 1000 steps fit
the two weights on them; PerSAM-F's code reruns the decoder every step, with the same result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from prosam.errors import InputError
from prosam.methods.base import MethodOutput, Reference, Target
from prosam.methods.persam import check_embedding, extreme_pixels, reference_cells, refine_step
from prosam.methods.similarity import (
    PoolMode,
    cosine_similarity_map,
    foreground_features,
    grid_map_to_image,
)
from prosam.sam.model import FrozenSam
from prosam.sam.predictor import ImageEmbedding, Predictor
from prosam.sam.transforms import logits_at_input_resolution, postprocess_logits

#: Default longest side at which the weights are fitted: SAM's low-res mask size. The two
#: weights hardly depend on it, the cost does (1000 steps at 640x480 take ~30 s on one core).
FIT_SIDE = 256


class MaskScaleWeights(nn.Module):
    """PerSAM-F's two learnable weights over SAM's three mask scales (the first scale gets
    one minus their sum); they start at 1/3 each."""

    def __init__(self) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.full((2,), 1.0 / 3.0))

    def scale_weights(self) -> torch.Tensor:
        """The ``(3,)`` weights of the three scales (they sum to 1)."""
        return torch.cat([(1 - self.weights.sum()).reshape(1), self.weights])

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Mix ``(..., 3, H, W)`` logits into ``(..., 1, H, W)``."""
        if logits.shape[-3] != 3:
            raise InputError(f"expected 3 mask scales, got {tuple(logits.shape)}")
        w = self.scale_weights().to(logits.dtype).reshape(3, 1, 1)
        return (logits * w).sum(dim=-3, keepdim=True)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)`` with ``p = sigmoid(logits)``,
    summed over the batch (PerSAM-F's Dice)."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1).to(p.dtype)
    return (1 - (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)).sum()


def fit_scale_weights(
    logits: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    *,
    steps: int = 1000,
    lr: float = 1e-3,
) -> MaskScaleWeights:
    """Fit :class:`MaskScaleWeights` on ``(3, H, W)`` logits and their ``(H, W)`` binary
    targets (one pair per reference): AdamW (eps 1e-4) with a cosine schedule, Dice + focal
    loss summed over the references, as PerSAM-F."""
    if len(logits) == 0 or len(logits) != len(targets):
        raise InputError("fit_scale_weights needs one target per logits map")
    weights = MaskScaleWeights()
    optimizer = torch.optim.AdamW(weights.parameters(), lr=lr, eps=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    fixed = [
        (x.detach().float(), t.detach().float()[None]) for x, t in zip(logits, targets, strict=True)
    ]
    with torch.enable_grad():
        for _ in range(steps):
            loss = torch.zeros(())
            for x, t in fixed:
                mixed = weights(x)
                loss = loss + dice_loss(mixed, t) + sigmoid_focal_loss(mixed, t, reduction="mean")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return weights


def fit_size(original: tuple[int, int], side: int = FIT_SIDE) -> tuple[int, int]:
    """``original`` scaled down so that its longest side is at most ``side``."""
    h, w = original
    scale = min(1.0, side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


class PerSAMF:
    """PerSAM-F: PerSAM whose mask mixes SAM's three scales with two fitted weights.

    Args:
        model: the frozen SAM.
        steps / lr: the weights' fit (PerSAM-F: 1000 steps of AdamW at 1e-3).
        fit_side: the longest side the reference's logits and mask are resized to for the
            fit (PerSAM-F fits at the image size; 256 is SAM's own mask resolution).
        refinement_steps: how many of the two cascaded refinements to run (0, 1 or 2).
        annotation_mode: how the annotation is pooled onto the feature cells.

    After :meth:`fit`, :attr:`scale_weights` holds the three fitted weights.
    """

    name = "persam_f"

    def __init__(
        self,
        model: FrozenSam,
        *,
        steps: int = 1000,
        lr: float = 1e-3,
        fit_side: int = FIT_SIDE,
        refinement_steps: int = 2,
        annotation_mode: PoolMode = "area",
    ) -> None:
        if refinement_steps not in (0, 1, 2):
            raise InputError(f"refinement_steps must be 0, 1 or 2, got {refinement_steps}")
        if steps < 0 or not lr > 0 or fit_side < 1:
            raise InputError(
                f"steps must be >= 0, lr > 0 and fit_side >= 1, got {steps}, {lr}, {fit_side}"
            )
        self.model = model
        self.predictor = Predictor(model)
        self.steps = steps
        self.lr = lr
        self.fit_side = fit_side
        self.refinement_steps = refinement_steps
        self.annotation_mode: PoolMode = annotation_mode
        self.target_feature: torch.Tensor | None = None
        self.scale_weights: torch.Tensor | None = None

    def _click(self, embedded: ImageEmbedding) -> np.ndarray:
        assert self.target_feature is not None
        emb = check_embedding(embedded, int(self.target_feature.shape[0]))
        similarity = grid_map_to_image(
            cosine_similarity_map(emb[0], self.target_feature), embedded.geometry
        )
        best, _ = extreme_pixels(similarity)
        return np.array([best], dtype=np.float64)

    def fit(self, references: Sequence[Reference]) -> None:
        """Build the target feature and fit the two weights on the references.

        Raises:
            InputError: no reference, or a reference annotation that is empty.
        """
        cells = reference_cells(references, self.annotation_mode)
        with torch.inference_mode():
            bank = torch.cat([foreground_features(c.features, c.weights) for c in cells])
            self.target_feature = (bank.mean(dim=0) + bank.amax(dim=0)) / 2
        logits, targets = [], []
        for ref in references:
            geometry = ref.embedded.geometry
            with torch.inference_mode():
                low_res, _ = self.predictor.predict_low_res(
                    ref.embedded, points=self._click(ref.embedded), multimask_output=True
                )
            size = fit_size(geometry.original_size, self.fit_side)
            logits.append(logits_at_input_resolution(low_res[None].clone(), geometry, size)[0])
            mask = torch.as_tensor(np.asarray(ref.annotation) > 0, dtype=torch.float32)
            if tuple(mask.shape) != size:
                mask = F.interpolate(mask[None, None], size, mode="area")[0, 0]
            targets.append((mask >= 0.5).float())
        weights = fit_scale_weights(logits, targets, steps=self.steps, lr=self.lr)
        self.scale_weights = weights.scale_weights().detach()

    @torch.inference_mode()
    def predict(self, target: Target) -> MethodOutput:
        """Segment the referenced object in ``target`` (see the module docstring)."""
        if self.target_feature is None or self.scale_weights is None:
            raise RuntimeError("call fit(references) before predict(target)")
        embedded = target.embedded
        points = self._click(embedded)
        labels = np.ones(1, dtype=np.int64)
        low_res, iou = self.predictor.predict_low_res(
            embedded, points=points, point_labels=labels, multimask_output=True
        )
        w = self.scale_weights.to(low_res.device, low_res.dtype).reshape(3, 1, 1)
        logits = (low_res * w).sum(dim=0, keepdim=True)
        score = float((iou * w.flatten()).sum())
        mask = (postprocess_logits(logits[None], embedded.geometry)[0, 0] > 0).cpu().numpy()
        box = None
        for _ in range(self.refinement_steps):
            if not mask.any():
                break
            logits, score, mask, box = refine_step(
                self.predictor, embedded, points, labels, logits, mask, use_box=True
            )
        extras = {
            "points": torch.as_tensor(points, dtype=torch.float32),
            "point_labels": torch.as_tensor(labels),
            "scale_weights": self.scale_weights.cpu(),
        }
        if box is not None:
            extras["box"] = torch.as_tensor(box, dtype=torch.float32)
        return MethodOutput(low_res_logits=logits, score=score, extras=extras)
