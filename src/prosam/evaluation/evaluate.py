"""The few-shot evaluation loop: episodes in, FSS metrics out, alone or under torchrun.

Each episode is scored twice: at the original image size, and at the model's working
resolution (SAM's resized input, longest side 1024, ground truth resized with nearest
neighbour), since peers report one or the other.

With ``wrong_reference=True`` each target is also predicted from a reference of another
class (:func:`wrong_reference_episodes`) and scored against the *same* ground truth: a method
that reads its reference loses accuracy (the *reference gain*, right minus wrong FSS mIoU, is
large) and its two predictions differ (low *prediction overlap*, their mean IoU); a method
that segments "the main object" whatever the reference shows has gain 0 and overlap 1.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prosam.data.episodes import rank_and_world_from_env, split_for_rank
from prosam.data.types import Episode
from prosam.errors import InputError
from prosam.evaluation.references import episode_inputs
from prosam.methods.base import ReferenceMethod
from prosam.metrics import FSSAccumulator, mask_iou
from prosam.sam.predictor import Predictor
from prosam.sam.transforms import (
    ImageGeometry,
    original_size_mask,
    resize_nearest,
)


def working_resolution_logits(low_res: torch.Tensor, geometry: ImageGeometry) -> torch.Tensor:
    """Decoder logits ``(1, h, w)`` upsampled to SAM's resized (unpadded) input size."""
    s = geometry.image_size
    x = F.interpolate(low_res[None].float(), (s, s), mode="bilinear", align_corners=False)
    return x[0, :, : geometry.input_size[0], : geometry.input_size[1]]


@dataclass
class EvalResult:
    """Accumulated metrics at both resolutions, timings and per-episode records."""

    original: FSSAccumulator = field(default_factory=FSSAccumulator)
    working: FSSAccumulator = field(default_factory=FSSAccumulator)
    seconds_inputs: float = 0.0
    seconds_method: float = 0.0
    episodes: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    wrong: FSSAccumulator | None = None
    overlaps: list[float] = field(default_factory=list)

    def reference_dependence(self, class_ids: Sequence[int] | None = None) -> dict[str, float]:
        """FSS mIoU with the right and with a wrong-class reference, their difference (the
        reference gain) and the mean IoU between the two predictions; empty without
        ``wrong_reference`` evaluation."""
        if self.wrong is None:
            return {}
        right = float(self.original.summary(class_ids=class_ids)["miou_fss"])
        wrong = float(self.wrong.summary(class_ids=class_ids)["miou_fss"])
        return {
            "miou_fss": right,
            "miou_fss_wrong_reference": wrong,
            "reference_gain": right - wrong,
            "prediction_overlap": float(np.mean(self.overlaps)) if self.overlaps else math.nan,
        }


def wrong_reference_episodes(episodes: Sequence[Episode]) -> list[Episode]:
    """For each episode, the next one in the list (cyclically) whose class differs: whose
    references are the *wrong* references of the episode's target."""
    n = len(episodes)
    out = []
    for i, ep in enumerate(episodes):
        other = next(
            (
                episodes[k % n]
                for k in range(i + 1, i + n)
                if episodes[k % n].class_id != ep.class_id
            ),
            None,
        )
        if other is None:
            raise InputError("a wrong-reference evaluation needs episodes of two classes or more")
        out.append(other)
    return out


def evaluate_episodes(
    method: ReferenceMethod,
    predictor: Predictor,
    episodes: Sequence[Episode],
    *,
    boundary: bool = False,
    progress: bool = True,
    distributed: bool | None = None,
    wrong_reference: bool = False,
) -> EvalResult:
    """Run ``method`` over ``episodes`` and accumulate FSS metrics (and, with
    ``wrong_reference``, the reference dependence; see the module docstring).

    Under torchrun (``WORLD_SIZE`` > 1) each rank takes its strided share of the list and
    the accumulators are summed across ranks at the end, so every rank returns the totals
    (the prediction overlaps are those of rank 0's share).
    """
    rank, world = rank_and_world_from_env()
    distributed = world > 1 if distributed is None else distributed
    episodes = list(episodes)
    wrong_of = wrong_reference_episodes(episodes) if wrong_reference else [None] * len(episodes)
    pairs = list(zip(episodes, wrong_of, strict=True))
    mine = split_for_rank(pairs, rank, world) if distributed else pairs
    result = EvalResult(wrong=FSSAccumulator() if wrong_reference else None)
    bar = tqdm(mine, desc=f"eval {method.name}", unit="ep", disable=not progress or rank != 0)
    for episode, wrong_episode in bar:
        t0 = time.perf_counter()
        references, target, truth, ignore = episode_inputs(episode, predictor)
        t1 = time.perf_counter()
        method.fit(references)
        output = method.predict(target)
        t2 = time.perf_counter()
        geometry = target.embedded.geometry
        logits = output.low_res_logits.float()
        pred = original_size_mask(logits, geometry)
        iou, counts = result.original.update_counts(
            episode.class_id, pred, truth, ignore, boundary=boundary
        )
        work_pred = working_resolution_logits(logits, geometry)[0] > 0
        result.working.update(
            episode.class_id,
            work_pred.cpu().numpy(),
            resize_nearest(truth, geometry.input_size),
            resize_nearest(ignore, geometry.input_size),
        )
        result.seconds_inputs += t1 - t0
        result.seconds_method += t2 - t1
        result.episodes += 1
        record = {
            "target": episode.target.key,
            "class_id": episode.class_id,
            "iou": iou,
            "intersection": counts["tp"],
            "union": counts["tp"] + counts["fp"] + counts["fn"],
            "score": float(output.score),
        }
        if wrong_episode is not None and result.wrong is not None:
            other_refs = episode_inputs(wrong_episode, predictor)[0]
            method.fit(other_refs)
            other = original_size_mask(method.predict(target).low_res_logits.float(), geometry)
            record["iou_wrong_reference"] = result.wrong.update(
                episode.class_id, other, truth, ignore
            )
            record["prediction_overlap"] = mask_iou(pred, other)
            result.overlaps.append(record["prediction_overlap"])
        result.records.append(record)
        if not bar.disable:
            bar.set_postfix(miou=f"{result.original.summary()['miou_fss']:.3f}")
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        result.original.all_reduce()
        result.working.all_reduce()
        if result.wrong is not None:
            result.wrong.all_reduce()
    return result


def validation_miou(
    method: ReferenceMethod,
    predictor: Predictor,
    episodes: Sequence[Episode],
    classes: Sequence[int] | None = None,
) -> float:
    """FSS mIoU (original size) of ``method`` on ``episodes``: what training selects on."""
    result = evaluate_episodes(method, predictor, episodes, progress=False, distributed=False)
    return float(result.original.summary(class_ids=classes)["miou_fss"])


def validation_scores(
    method: ReferenceMethod,
    predictor: Predictor,
    episodes: Sequence[Episode],
    classes: Sequence[int] | None = None,
) -> dict[str, float]:
    """``val_miou`` (what training selects on) with the reference dependence of the same
    episodes: ``val_miou_wrong_reference``, ``reference_gain``, ``prediction_overlap``."""
    result = evaluate_episodes(
        method, predictor, episodes, progress=False, distributed=False, wrong_reference=True
    )
    dep = result.reference_dependence(classes)
    return {
        "val_miou": dep["miou_fss"],
        "val_miou_wrong_reference": dep["miou_fss_wrong_reference"],
        "reference_gain": dep["reference_gain"],
        "prediction_overlap": dep["prediction_overlap"],
    }
