"""The few-shot evaluation loop: episodes in, FSS metrics out, alone or under torchrun.

Each episode is scored twice: at the original image size, and at the model's working
resolution (SAM's resized input, longest side 1024, ground truth resized with nearest
neighbour), since peers report one or the other.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prosam.data.episodes import rank_and_world_from_env, split_for_rank
from prosam.data.types import Episode
from prosam.evaluation.references import episode_inputs
from prosam.methods.base import ReferenceMethod
from prosam.metrics import FSSAccumulator
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


def evaluate_episodes(
    method: ReferenceMethod,
    predictor: Predictor,
    episodes: Sequence[Episode],
    *,
    boundary: bool = False,
    progress: bool = True,
    distributed: bool | None = None,
) -> EvalResult:
    """Run ``method`` over ``episodes`` and accumulate FSS metrics.

    Under torchrun (``WORLD_SIZE`` > 1) each rank takes its strided share of the list and
    the accumulators are summed across ranks at the end, so every rank returns the totals.
    """
    rank, world = rank_and_world_from_env()
    distributed = world > 1 if distributed is None else distributed
    mine = split_for_rank(list(episodes), rank, world) if distributed else list(episodes)
    result = EvalResult()
    bar = tqdm(mine, desc=f"eval {method.name}", unit="ep", disable=not progress or rank != 0)
    for episode in bar:
        t0 = time.perf_counter()
        references, target, truth, ignore = episode_inputs(episode, predictor)
        t1 = time.perf_counter()
        method.fit(references)
        output = method.predict(target)
        t2 = time.perf_counter()
        geometry = target.embedded.geometry
        logits = output.low_res_logits.float()
        pred = original_size_mask(logits, geometry)
        iou = result.original.update(episode.class_id, pred, truth, ignore, boundary=boundary)
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
        result.records.append(
            {
                "target": episode.target.key,
                "class_id": episode.class_id,
                "iou": iou,
                "score": float(output.score),
            }
        )
        if not bar.disable:
            bar.set_postfix(miou=f"{result.original.summary()['miou_fss']:.3f}")
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        result.original.all_reduce()
        result.working.all_reduce()
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
