"""One target's labels: every class's method run on one embedding, masks at the image size,
each kept mask with its quality estimate when a quality model is given."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from prosam.errors import InputError
from prosam.label.defaults import DEFAULT_MIN_AREA_FRACTION, DEFAULT_SCORE_THRESHOLD
from prosam.label.writers import LabelMask
from prosam.methods.base import ReferenceMethod, Target
from prosam.methods.overlaps import resolve_overlaps
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


OVERLAP_RULES = ("resolve", "keep")
"""``resolve`` (default): a pixel two classes claim goes to the one of highest logit, so
each pixel belongs to at most one class; ``keep``: each class's mask as its method gave it."""


def check_overlaps(rule: str) -> str:
    """``rule`` if it is one of :data:`OVERLAP_RULES` (else a one-line error)."""
    if rule not in OVERLAP_RULES:
        raise InputError(f"overlaps must be one of {', '.join(OVERLAP_RULES)}, got {rule!r}")
    return rule


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
    overlaps: str = "resolve",
) -> list[ClassPrediction]:
    """Embed ``image`` once and predict every class's mask at the image's size (with
    ``quality``, each kept mask's expected IoU).

    A class is kept when its score and mask area pass the thresholds; with
    ``overlaps="resolve"`` the kept classes' logits at the image's size then share the
    pixels (:func:`~prosam.methods.overlaps.resolve_overlaps`: each pixel to the class of
    highest logit above the mask threshold), a class left under the area threshold is
    dropped, and its instances are cut to its mask."""
    check_overlaps(overlaps)
    embedded = predictor.embed(image) if embedded is None else embedded
    target = Target(image, embedded)
    h, w = image.shape[:2]
    names = list(methods)
    results = [methods[name].predict(target) for name in names]
    logits = [
        postprocess_logits(
            r.low_res_logits.float().reshape(1, 1, *r.low_res_logits.shape[-2:]), embedded.geometry
        )[0, 0]
        for r in results
    ]
    threshold = predictor.mask_threshold

    def passes(mask: np.ndarray, score: float) -> bool:
        area = int(mask.sum())
        return area > 0 and area >= min_area_fraction * h * w and score >= score_threshold

    masks = [(x > threshold).cpu().numpy() for x in logits]
    kept = [passes(m, float(r.score)) for m, r in zip(masks, results, strict=True)]
    chosen = [i for i, k in enumerate(kept) if k]
    if overlaps == "resolve" and len(chosen) > 1:
        stacked = torch.stack([logits[i] for i in chosen])
        labels, _ = resolve_overlaps(stacked, float(torch.sigmoid(torch.tensor(threshold))))
        labels_np = labels.cpu().numpy()
        for j, i in enumerate(chosen):
            masks[i] = labels_np == j
            kept[i] = passes(masks[i], float(results[i].score))
    out = []
    for name, result, mask, keep in zip(names, results, masks, kept, strict=True):
        low_res = result.low_res_logits
        if not keep:
            mask = np.zeros_like(mask)
        unc = uncertainty_in_mask(result.extras, mask, embedded, tuple(low_res.shape[-2:]))
        instances = []
        if keep:
            for inst in result.instances:
                m = original_size_mask(inst.low_res_logits, embedded.geometry, threshold) & mask
                if m.any():
                    instances.append((m, float(inst.score)))
        prediction = ClassPrediction(name, mask, float(result.score), keep, unc, instances)
        if keep:
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
