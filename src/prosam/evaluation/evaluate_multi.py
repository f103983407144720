"""The multi-entity evaluation loop: several classes segmented at once on each target.

Each entity's logits are upsampled to the target's original size, then every pixel goes to
at most one entity with :func:`~prosam.methods.overlaps.resolve_overlaps` (highest
probability above 0.5), and each entity's resolved mask is scored against its class mask.
Methods with ``fit_entities`` / ``predict_entities`` (CPC-SAM) are fitted once on all
entities; any other method is fitted and run entity by entity, and its logits resolved by
the same rule, so every method is compared on the same footing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from prosam.data.multi_entity import MultiEntityEpisode
from prosam.errors import InputError
from prosam.evaluation.references import build_references
from prosam.methods.base import Reference, ReferenceMethod, Target
from prosam.methods.capabilities import MULTI_ENTITY, capabilities_of
from prosam.methods.overlaps import resolve_overlaps
from prosam.metrics import FSSAccumulator
from prosam.sam.predictor import Predictor
from prosam.sam.transforms import postprocess_logits


@dataclass
class MultiEvalResult:
    """Accumulated metrics of a multi-entity evaluation.

    ``resolved`` scores each entity's overlap-free mask (the reported numbers);
    ``independent`` its own ``logits > 0`` mask before resolution. One accumulator update
    is one entity, so their ``miou_per_episode`` is the mean per-entity IoU.
    ``overlap_pixels`` counts target pixels claimed (``logit > 0``) by two or more
    entities before resolution, out of ``total_pixels``. ``seconds_method`` is
    ``seconds_fit`` (fitting on the references) + ``seconds_predict`` (the target).
    """

    resolved: FSSAccumulator = field(default_factory=FSSAccumulator)
    independent: FSSAccumulator = field(default_factory=FSSAccumulator)
    overlap_pixels: int = 0
    total_pixels: int = 0
    overlap_fraction_sum: float = 0.0
    seconds_inputs: float = 0.0
    seconds_method: float = 0.0
    seconds_fit: float = 0.0
    seconds_predict: float = 0.0
    episodes: int = 0
    entities: int = 0
    joint: bool = True
    records: list[dict[str, Any]] = field(default_factory=list)

    def summary(self, class_ids: Sequence[int] | None = None) -> dict[str, Any]:
        """Headline numbers: ``miou_fss`` (per-class pooled IoU, mean over classes),
        ``miou_per_entity``, the same two before resolution, and the overlap fractions."""
        res = self.resolved.summary(class_ids)
        ind = self.independent.summary(class_ids)
        return {
            "miou_fss": res["miou_fss"],
            "miou_per_entity": res["miou_per_episode"],
            "miou_fss_independent": ind["miou_fss"],
            "miou_per_entity_independent": ind["miou_per_episode"],
            "overlap_fraction_pooled": _ratio(self.overlap_pixels, self.total_pixels),
            "overlap_fraction_mean": _ratio(self.overlap_fraction_sum, self.episodes),
            "num_episodes": self.episodes,
            "num_entities": self.entities,
            "num_classes": res["num_classes"],
            "classes": res["classes"],
            "absent_classes": res["absent_classes"],
            "joint": self.joint,
            "warning": res["warning"],
        }


def _ratio(num: float, den: float) -> float:
    return float("nan") if den == 0 else num / den


def has_entity_api(method: object) -> bool:
    """Whether ``method`` fits and predicts several entities jointly (CPC-SAM does)."""
    return MULTI_ENTITY in capabilities_of(method)


def entity_logits(
    method: ReferenceMethod,
    entities: Sequence[Sequence[Reference]],
    target: Target,
    *,
    joint: bool,
) -> tuple[torch.Tensor, list[float], float]:
    """Per-entity low-resolution logits ``(E, 1, h, w)`` and scores of ``method`` on
    ``target``, and the seconds spent fitting (the rest is predicting).

    ``joint``: one ``fit_entities`` / ``predict_entities`` call (the raw, unresolved
    logits); otherwise ``fit`` / ``predict`` once per entity.
    """
    if joint:
        t0 = time.perf_counter()
        method.fit_entities(entities)  # type: ignore[attr-defined]
        fit_seconds = time.perf_counter() - t0
        out = method.predict_entities(target)  # type: ignore[attr-defined]
        return out.logits.float(), [float(s) for s in out.scores.reshape(-1)], fit_seconds
    logits, scores, fit_seconds = [], [], 0.0
    for refs in entities:
        t0 = time.perf_counter()
        method.fit(refs)
        fit_seconds += time.perf_counter() - t0
        single = method.predict(target)
        logits.append(single.low_res_logits.float())
        scores.append(float(single.score))
    return torch.stack(logits), scores, fit_seconds


def evaluate_multi_entity(
    method: ReferenceMethod,
    predictor: Predictor,
    episodes: Sequence[MultiEntityEpisode],
    *,
    joint: bool | None = None,
    progress: bool = True,
) -> MultiEvalResult:
    """Run ``method`` over multi-entity ``episodes`` and score every entity at original size.

    ``joint=None`` fits entities jointly when the method can (:func:`has_entity_api`);
    ``False`` forces one fit per entity. Ignore pixels of each class are excluded from
    that class's counts.
    """
    can_join = has_entity_api(method)
    if joint and not can_join:
        raise InputError(f"method {method.name!r} has no fit_entities / predict_entities")
    joint = can_join if joint is None else joint
    result = MultiEvalResult(joint=joint)
    bar = tqdm(episodes, desc=f"eval {method.name} (multi)", unit="ep", disable=not progress)
    for episode in bar:
        t0 = time.perf_counter()
        entities = [
            build_references(e.references, e.class_id, e.annotation, e.annotation_seed, predictor)
            for e in episode.entities
        ]
        image = episode.target.image()
        target = Target(image, predictor.embed(image))
        truths = [episode.target.mask(e.class_id) for e in episode.entities]
        t1 = time.perf_counter()
        low_res, scores, fit_seconds = entity_logits(method, entities, target, joint=joint)
        t2 = time.perf_counter()
        full = postprocess_logits(low_res.detach(), target.embedded.geometry)[:, 0].cpu()
        labels, _ = resolve_overlaps(full)
        claimed = full > 0
        overlap = int((claimed.sum(0) >= 2).sum())
        pixels = int(labels.numel())
        labels_np = labels.numpy()
        rows = []
        for e, (entity, (truth, ignore)) in enumerate(zip(episode.entities, truths, strict=True)):
            iou = result.resolved.update(entity.class_id, labels_np == e, truth, ignore)
            alone = result.independent.update(entity.class_id, claimed[e].numpy(), truth, ignore)
            rows.append(
                {
                    "class_id": entity.class_id,
                    "iou": iou,
                    "iou_independent": alone,
                    "score": scores[e],
                    "pixels": int(np.count_nonzero(labels_np == e)),
                }
            )
        result.overlap_pixels += overlap
        result.total_pixels += pixels
        result.overlap_fraction_sum += overlap / pixels
        result.seconds_inputs += t1 - t0
        result.seconds_method += t2 - t1
        result.seconds_fit += fit_seconds
        result.seconds_predict += t2 - t1 - fit_seconds
        result.episodes += 1
        result.entities += len(rows)
        result.records.append(
            {"target": episode.target.key, "overlap_fraction": overlap / pixels, "entities": rows}
        )
        if not bar.disable:
            bar.set_postfix(miou=f"{result.resolved.summary()['miou_fss']:.3f}")
    return result
