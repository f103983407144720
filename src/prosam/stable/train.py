"""Stable-SAM's robust training strategy (RTS): train the plugin on prompts of mixed quality.

Each object (an instance, a class mask or a connected component, see
:mod:`prosam.stable.training_objects`) gets one prompt per epoch, its family drawn uniformly
from ``prompt_kinds``:

- ``gt_box``: the tight box;
- ``noisy_box``: HQ-SAM box noise (``cxcywh``, scale 0.4), clipped to the image and redrawn
  until its IoU with the tight box is at least ``noisy_box_min_iou`` (0.5, the paper's
  supplementary; 0 disables);
- ``points``: ``n`` positive points, ``n`` drawn uniformly from ``point_counts`` (1, 3, 10);
- any other kind name of :mod:`prosam.stable.prompts` (``points_5``, ``box_iou_0.5_0.6``...).

With ``occlusion=True`` an object is occluded with probability ``occlusion_prob`` by
:func:`prosam.prompts.paste_occluder` (a patch of the image's own texture): the target and
the prompt come from the visible part, and the occluded image is encoded afresh (never
cached), which costs a full image-encoder pass per occluded object: off by default on CPU.

The decoder runs with ``multimask_output=False`` (as HQ-SAM's and Stable-SAM's training);
the loss is :func:`prosam.core.losses.bce_dice_loss` on the low-res logits cropped to
the unpadded image area against the ground truth resized there with nearest neighbour
(ignore pixels excluded), as prosam's episodic training does. Only the plugin's parameters
are optimised (AdamW; the paper uses Adam, lr 1e-3, no weight decay).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from prosam.core.checkpoint import load_checkpoint
from prosam.core.losses import bce_dice_loss
from prosam.data.types import Dataset
from prosam.errors import InputError
from prosam.prompts import paste_occluder
from prosam.sam.model import FrozenSam
from prosam.sam.predictor import Predictor
from prosam.sam.transforms import (
    ImageGeometry,
    mask_to_low_res,
    transform_boxes,
    transform_coords,
)
from prosam.stable.checkpoint import save_stable_plugin
from prosam.stable.objects import ObjectItem
from prosam.stable.plugin import (
    PluggedCrossAttention,
    StableSamPlugin,
    attach_stable_plugin,
    count_parameters,
    is_attached,
)
from prosam.stable.prompts import Prompt, check_kind, sample_prompt
from prosam.stable.robustness import evaluate_robustness
from prosam.stable.training_objects import TrainingObjects

__all__ = [
    "StableTrainSettings",
    "choose_kind",
    "object_loss",
    "prompt_logits",
    "train_stable",
]


@dataclass
class StableTrainSettings:
    """RTS and optimisation settings (paper values where it gives them)."""

    epochs: int = 1
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    prompt_kinds: tuple[str, ...] = ("gt_box", "noisy_box", "points")
    point_counts: tuple[int, ...] = (1, 3, 10)
    noisy_box_min_iou: float = 0.5
    occlusion: bool = False
    occlusion_prob: float = 0.5
    min_object_pixels: int = 16
    max_objects_per_epoch: int | None = None
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        self.prompt_kinds = tuple(self.prompt_kinds)
        self.point_counts = tuple(int(n) for n in self.point_counts)
        if not self.prompt_kinds:
            raise InputError("prompt_kinds is empty")
        for kind in self.prompt_kinds:
            if kind != "points":
                check_kind(kind)
        if "points" in self.prompt_kinds and (not self.point_counts or min(self.point_counts) < 1):
            raise InputError("point_counts must be positive integers")
        if self.epochs < 0 or self.batch_size < 1:
            raise InputError("need epochs >= 0 and batch_size >= 1")
        if not 0.0 <= self.occlusion_prob <= 1.0:
            raise InputError("occlusion_prob must be in [0, 1]")


def choose_kind(settings: StableTrainSettings, rng: np.random.Generator) -> str:
    """A training prompt kind: a family uniformly, then the number of points for ``points``."""
    kind = str(settings.prompt_kinds[int(rng.integers(len(settings.prompt_kinds)))])
    if kind == "points":
        n = settings.point_counts[int(rng.integers(len(settings.point_counts)))]
        kind = f"points_{n}"
    return kind


def prompt_logits(
    sam: FrozenSam, embedding: torch.Tensor, geometry: ImageGeometry, prompt: Prompt
) -> torch.Tensor:
    """Differentiable single-mask decoder logits ``(1, 1, 4h, 4w)`` for one prompt."""
    device = sam.device
    points = None
    if prompt.points is not None:
        labels = np.ones(len(prompt.points)) if prompt.labels is None else np.asarray(prompt.labels)
        points = (
            transform_coords(prompt.points, geometry)[None].to(device),
            torch.as_tensor(labels, dtype=torch.int64, device=device)[None],
        )
    boxes = None
    if prompt.box is not None:
        boxes = transform_boxes(np.asarray(prompt.box)[None], geometry).to(device)
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
    low_res, _ = sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
    return low_res


def object_loss(
    sam: FrozenSam,
    embedding: torch.Tensor,
    geometry: ImageGeometry,
    prompt: Prompt,
    mask: np.ndarray,
    ignore: np.ndarray | None = None,
) -> torch.Tensor:
    """BCE + Dice of one prompt's low-res logits on the unpadded area against ``mask``."""
    logits = prompt_logits(sam, embedding, geometry, prompt)
    target, (h, w) = mask_to_low_res(mask, geometry, logits.shape[-1])
    ign = None
    if ignore is not None:
        ign = mask_to_low_res(ignore, geometry, logits.shape[-1])[0].to(logits.device)
    return bce_dice_loss(logits[:, :, :h, :w], target.to(logits.device), ign)


def _embed(
    predictor: Predictor,
    plain: Predictor,
    item: ObjectItem,
    settings: StableTrainSettings,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, ImageGeometry, ObjectItem]:
    if settings.occlusion and rng.random() < settings.occlusion_prob:
        image, visible, occluder = paste_occluder(item.image, item.mask, rng)
        if int(visible.sum()) >= settings.min_object_pixels:
            ignore = None if item.ignore is None else item.ignore & ~occluder
            item = ObjectItem(image, visible, ignore, item.key + "+occluded")
            emb = plain.embed(image)  # the occluded image is not worth caching
            return emb.embedding.clone(), emb.geometry, item
    emb = predictor.embed(item.image)
    # clone(): the embedding may be an inference tensor (computed under inference_mode).
    return emb.embedding.clone(), emb.geometry, item


def _check_own_attachment(sam: FrozenSam, plugin: StableSamPlugin) -> None:
    for i, layer in enumerate(sam.sam.mask_decoder.transformer.layers):
        attn = layer.cross_attn_token_to_image
        if isinstance(attn, PluggedCrossAttention) and (
            i not in plugin.block_ids or attn.plugin is not plugin.block(i)
        ):
            raise InputError("another Stable-SAM plugin is attached to this SAM")


def _objects_of(
    data: Sequence[ObjectItem] | Dataset, settings: StableTrainSettings
) -> Sequence[ObjectItem]:
    if isinstance(data, Dataset):
        return TrainingObjects([data], mode="classes", min_pixels=settings.min_object_pixels)
    return data


@dataclass
class _Position:
    """Where a run stands: the next batch to train and what it has done so far."""

    epoch: int = 0
    batch: int = 0
    objects_seen: int = 0
    seconds: float = 0.0
    best: float = -math.inf
    history: list[dict[str, Any]] = field(default_factory=list)


def _resume(
    out: Path,
    plugin: StableSamPlugin,
    opt: torch.optim.Optimizer,
    settings: StableTrainSettings,
    n_objects: int,
    log: Callable[[str], None],
) -> _Position:
    ckpt = load_checkpoint(out / "last")
    saved = dict(ckpt.config.get("settings", {}))
    mine = asdict(settings)
    differ = sorted(
        k
        for k in mine
        if k != "epochs" and k in saved and _jsonable(saved[k]) != _jsonable(mine[k])
    )
    if differ:
        raise InputError(
            f"{out / 'last'}: cannot resume with other settings ({', '.join(differ)} differ)"
        )
    if int(ckpt.extra.get("objects", n_objects)) != n_objects:
        raise InputError(
            f"{out / 'last'}: trained on {ckpt.extra['objects']} objects, now {n_objects}; "
            "resume needs the same data"
        )
    plugin.load_state_dict(ckpt.model, strict=True)
    if ckpt.optimizer is not None:
        opt.load_state_dict(ckpt.optimizer)
    pos = ckpt.extra["position"]
    position = _Position(
        epoch=int(pos["epoch"]),
        batch=int(pos["batch"]),
        objects_seen=int(ckpt.extra["objects_seen"]),
        seconds=float(ckpt.extra["seconds"]),
        best=float(ckpt.extra.get("best", -math.inf)),
        history=list(ckpt.extra.get("history", [])),
    )
    log(
        f"resumed from {out / 'last'}: epoch {position.epoch}, batch {position.batch}, "
        f"{position.objects_seen} objects seen"
    )
    return position


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _epoch_batches(n_objects: int, settings: StableTrainSettings, epoch: int) -> list[np.ndarray]:
    order = np.random.default_rng([settings.seed, epoch]).permutation(n_objects)
    if settings.max_objects_per_epoch is not None:
        order = order[: settings.max_objects_per_epoch]
    return [order[i : i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]


def train_stable(
    plugin: StableSamPlugin,
    predictor: Predictor,
    objects: Sequence[ObjectItem] | Dataset,
    settings: StableTrainSettings | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    val_items: Sequence[ObjectItem] | None = None,
    val_kinds: Sequence[str] = ("gt_box", "noisy_box", "points_1"),
    val_b: int = 5,
    val_every: int | None = None,
    resume: bool = False,
    config: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``plugin`` on ``objects`` with RTS prompts; return a summary.

    ``objects`` is a sequence of :class:`ObjectItem` (e.g. :class:`TrainingObjects`, loaded
    when drawn) or a dataset (its class masks). ``predictor`` (with its embedding cache)
    supplies the frozen SAM and image embeddings. The plugin is attached for training (and
    detached afterwards if this call attached it).

    Every batch draws its prompts from a generator seeded by ``(seed, epoch, batch)``, so a
    run stopped anywhere and resumed from ``out_dir/last`` (``resume=True``) continues
    exactly as the uninterrupted run would. Validation on ``val_items`` (mean mIoU over
    ``val_kinds``) runs every ``val_every`` objects and at the end of each epoch; each
    validation appends a point to the learning curve (``history``: objects seen, loss since
    the previous point, validation mIoU per kind; the first point, before any step, is plain
    SAM's) and writes ``last`` (with optimizer
    state and position) and, when it improves, ``best``. Without ``val_items`` a point is
    written at the same times and ``best`` is the latest.
    """
    settings = settings or StableTrainSettings()
    objects = _objects_of(objects, settings)
    if len(objects) == 0:
        raise InputError("no training objects")
    if val_every is not None and val_every < 1:
        raise InputError("val_every must be a positive number of objects")
    sam = predictor.model
    torch.manual_seed(settings.seed)
    if is_attached(sam):
        _check_own_attachment(sam, plugin)
    trainable = [p for p in plugin.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    out = None if out_dir is None else Path(out_dir)
    if resume and out is not None and (out / "last.json").is_file():
        position = _resume(out, plugin, opt, settings, len(objects), log)
    else:
        position = _Position()
    handle = None if is_attached(sam) else attach_stable_plugin(sam, plugin)
    plain = Predictor(sam, cache=None, mask_threshold=predictor.mask_threshold)
    cfg = {**(config or {}), "settings": asdict(settings)}
    t_start = time.perf_counter() - position.seconds
    interval = {"loss": 0.0, "used": 0, "skipped": 0, "kinds": {}}
    next_val = None if val_every is None else (position.objects_seen // val_every + 1) * val_every

    def checkpoint(epoch: int, batch: int, n_batches: int) -> None:
        record: dict[str, Any] = {
            "epoch": epoch,
            "batch": batch,
            "objects_seen": position.objects_seen,
            "loss": interval["loss"] / interval["used"] if interval["used"] else math.nan,
            "objects": interval["used"],
            "skipped": interval["skipped"],
            "kinds": dict(sorted(interval["kinds"].items())),
        }
        if val_items:
            plugin.eval()
            report = evaluate_robustness(
                predictor, val_items, val_kinds, b=val_b, seed=settings.seed
            )
            plugin.train()
            record["val"] = {k: v["miou"] for k, v in report["kinds"].items()}
            record["val_miou"] = float(np.nanmean(list(record["val"].values())))
        position.seconds = time.perf_counter() - t_start
        record["seconds"] = position.seconds
        position.history.append(record)
        interval.update(loss=0.0, used=0, skipped=0, kinds={})
        position.epoch, position.batch = (epoch + 1, 0) if batch >= n_batches else (epoch, batch)
        score = record.get("val_miou", float(len(position.history)))
        improved = score > position.best
        position.best = max(position.best, score)
        if out is not None:
            extra = {
                "position": {"epoch": position.epoch, "batch": position.batch},
                "objects_seen": position.objects_seen,
                "objects": len(objects),
                "seconds": position.seconds,
                "history": position.history,
                "best": position.best,
            }
            if improved:
                save_stable_plugin(out / "best", plugin, sam, extra=extra, config=cfg)
            save_stable_plugin(
                out / "last", plugin, sam, optimizer=opt.state_dict(), extra=extra, config=cfg
            )
        log(
            f"epoch {epoch} batch {batch}: objects_seen={position.objects_seen} "
            f"loss={record['loss']:.4g} seconds={position.seconds:.0f}"
            + (f" val_miou={record['val_miou']:.4g}" if "val_miou" in record else "")
            + (
                " " + " ".join(f"{k}={v:.4g}" for k, v in record["val"].items())
                if "val" in record
                else ""
            )
        )

    try:
        if not position.history and settings.epochs > 0:
            # the curve's first point: the zero-offset plugin, i.e. plain SAM
            checkpoint(0, 0, len(_epoch_batches(len(objects), settings, 0)))
        for epoch in range(position.epoch, settings.epochs):
            batches = _epoch_batches(len(objects), settings, epoch)
            first = position.batch if epoch == position.epoch else 0
            plugin.train()
            bar = tqdm(
                range(first, len(batches)),
                desc=f"stable epoch {epoch}",
                unit="batch",
                disable=not progress,
            )
            for b in bar:
                rng = np.random.default_rng([settings.seed, epoch, b])
                losses = []
                for index in batches[b]:
                    item = objects[int(index)]
                    embedding, geometry, item = _embed(predictor, plain, item, settings, rng)
                    kind = choose_kind(settings, rng)
                    try:
                        prompt = sample_prompt(
                            kind, item.mask, rng, min_iou=settings.noisy_box_min_iou
                        )
                    except InputError:  # e.g. no box in a box_iou_* range for this object
                        interval["skipped"] += 1
                        continue
                    interval["kinds"][kind] = interval["kinds"].get(kind, 0) + 1
                    losses.append(
                        object_loss(sam, embedding, geometry, prompt, item.mask, item.ignore)
                    )
                if losses:
                    loss = torch.stack(losses).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if settings.grad_clip:
                        torch.nn.utils.clip_grad_norm_(trainable, settings.grad_clip)
                    opt.step()
                    interval["loss"] += float(loss.detach()) * len(losses)
                    interval["used"] += len(losses)
                    position.objects_seen += len(losses)
                    bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
                if (
                    next_val is not None
                    and position.objects_seen >= next_val
                    and b + 1 < len(batches)
                ):
                    checkpoint(epoch, b + 1, len(batches))
                    while next_val <= position.objects_seen:
                        next_val += val_every  # type: ignore[operator]
            checkpoint(epoch, len(batches), len(batches))
    finally:
        plugin.eval()
        if handle is not None:
            handle.detach()
    curve = [r for r in position.history if "val_miou" in r]
    return {
        "history": position.history,
        "best": max((r["val_miou"] for r in curve), default=None),
        "objects": len(objects),
        "objects_seen": position.objects_seen,
        "seconds": position.seconds,
        "seconds_per_object": position.seconds / max(position.objects_seen, 1),
        "parameters": count_parameters(plugin),
        "checkpoint": None if out is None else str(out / "best"),
        "settings": asdict(settings),
    }
