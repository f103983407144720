"""One target's labels: every class's method run on one embedding, masks at the image size,
each kept mask with its quality estimate when a quality model is given."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from prosam.label.defaults import DEFAULT_MIN_AREA_FRACTION, DEFAULT_SCORE_THRESHOLD
from prosam.label.writers import LabelMask
from prosam.methods.base import ReferenceMethod, Target
from prosam.quality import QualityModel, mask_signals
from prosam.sam.predictor import ImageEmbedding, Predictor
from prosam.sam.transforms import original_size_mask, postprocess_logits


@dataclass
class ClassPrediction:
    """One class's answer on one image: the mask (empty when dropped), score, uncertainty;
    for a kept mask its signals and, with a quality model, its expected IoU (``quality``)
    and the reason the estimate is not higher."""

    class_name: str
    mask: np.ndarray
    score: float
    kept: bool
    uncertainty: float | None = None
    instances: list[tuple[np.ndarray, float]] = field(default_factory=list)
    quality: float | None = None
    reason: str | None = None
    signals: dict[str, float] = field(default_factory=dict)

    @property
    def extras(self) -> dict[str, Any]:
        """What the writers carry besides the mask and score."""
        return {"uncertainty": self.uncertainty, "quality": self.quality, "reason": self.reason}


def uncertainty_in_mask(
    extras: Mapping[str, Any],
    mask: np.ndarray,
    embedded: ImageEmbedding,
    low_res_shape: tuple[int, ...],
) -> float | None:
    """Mean of a method's ``uncertainty`` map over ``mask`` at the original size (None when
    the method gives no map or the mask is empty)."""
    u = extras.get("uncertainty")
    if not isinstance(u, torch.Tensor) or not mask.any():
        return None
    u = u.float().reshape(1, 1, *u.shape[-2:])
    size = embedded.geometry.original_size
    if tuple(u.shape[-2:]) == tuple(low_res_shape[-2:]):
        u = postprocess_logits(u, embedded.geometry)
    elif tuple(u.shape[-2:]) != tuple(size):
        u = torch.nn.functional.interpolate(u, size, mode="bilinear", align_corners=False)
    values = u[0, 0].cpu().numpy()[mask]
    return float(values.mean())


@torch.inference_mode()
def predict_classes(
    methods: Mapping[str, ReferenceMethod],
    predictor: Predictor,
    image: np.ndarray,
    *,
    embedded: ImageEmbedding | None = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    min_area_fraction: float = DEFAULT_MIN_AREA_FRACTION,
    quality: QualityModel | None = None,
) -> list[ClassPrediction]:
    """Embed ``image`` once and predict every class's mask at the image's size (with
    ``quality``, each kept mask's expected IoU)."""
    embedded = predictor.embed(image) if embedded is None else embedded
    target = Target(image, embedded)
    h, w = image.shape[:2]
    out = []
    for name, method in methods.items():
        result = method.predict(target)
        low_res = result.low_res_logits
        mask = original_size_mask(low_res, embedded.geometry, predictor.mask_threshold)
        area = int(mask.sum())
        kept = area > 0 and area >= min_area_fraction * h * w and result.score >= score_threshold
        if not kept:
            mask = np.zeros_like(mask)
        unc = uncertainty_in_mask(result.extras, mask, embedded, tuple(low_res.shape[-2:]))
        instances = []
        if kept:
            for inst in result.instances:
                m = original_size_mask(
                    inst.low_res_logits, embedded.geometry, predictor.mask_threshold
                )
                if m.any():
                    instances.append((m & mask, float(inst.score)))
        prediction = ClassPrediction(name, mask, float(result.score), kept, unc, instances)
        if kept:
            prediction.signals = mask_signals(result, mask, uncertainty=unc)
            if quality is not None:
                prediction.quality = quality.estimate(prediction.signals)
                prediction.reason = quality.reason(prediction.signals)
        out.append(prediction)
    return out


def label_masks(predictions: Sequence[ClassPrediction]) -> list[LabelMask]:
    """The kept predictions as writer input."""
    return [
        LabelMask(p.class_name, p.mask, p.score, p.extras, p.instances)
        for p in predictions
        if p.kept
    ]
