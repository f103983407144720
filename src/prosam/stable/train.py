"""Stable-SAM's robust training strategy (RTS): train the plugin on prompts of mixed quality.

Each object (a class mask, or a connected component of it, see :mod:`prosam.stable.objects`)
gets one prompt per epoch, its family drawn uniformly from ``prompt_kinds``:

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

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

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
from prosam.stable.objects import ObjectItem, object_masks
from prosam.stable.plugin import (
    PluggedCrossAttention,
    StablePluginHandle,
    StableSamPlugin,
    attach_stable_plugin,
    count_parameters,
    is_attached,
)
from prosam.stable.prompts import Prompt, check_kind, sample_prompt
from prosam.stable.robustness import evaluate_robustness

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
    split_components: bool = False
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


def _draw_object(
    dataset: Dataset, slot: tuple[int, int], settings: StableTrainSettings, rng: np.random.Generator
) -> ObjectItem | None:
    sample_index, class_id = slot
    sample = dataset.samples[sample_index]
    fg, ignore = sample.mask(class_id)
    masks = object_masks(
        fg, split_components=settings.split_components, min_pixels=settings.min_object_pixels
    )
    if not masks:
        return None
    mask = masks[int(rng.integers(len(masks)))]
    return ObjectItem(sample.image(), mask, ignore, f"{sample.key}#{class_id}")


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


def train_stable(
    plugin: StableSamPlugin,
    predictor: Predictor,
    dataset: Dataset,
    settings: StableTrainSettings | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    val_items: Sequence[ObjectItem] | None = None,
    val_kinds: Sequence[str] = ("noisy_box", "points_1"),
    val_b: int = 5,
    config: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``plugin`` on ``dataset``'s objects with RTS prompts; return a summary.

    ``predictor`` (with its embedding cache) supplies the frozen SAM and image embeddings.
    The plugin is attached for training (and detached afterwards if this call attached it).
    With ``out_dir``, ``last`` (with optimizer state) is written after every epoch and
    ``best`` (highest mean validation mIoU over ``val_kinds``, or the last epoch without
    ``val_items``); ``config`` entries are added to the checkpoints' JSON.
    """
    settings = settings or StableTrainSettings()
    sam = predictor.model
    slots = [(i, c) for i, s in enumerate(dataset.samples) for c in sorted(s.classes)]
    if not slots:
        raise InputError("the training dataset has no (image, class) pair")
    torch.manual_seed(settings.seed)
    handle: StablePluginHandle | None = None
    if is_attached(sam):
        _check_own_attachment(sam, plugin)
    else:
        handle = attach_stable_plugin(sam, plugin)
    plain = Predictor(sam, cache=None, mask_threshold=predictor.mask_threshold)
    trainable = [p for p in plugin.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    out = None if out_dir is None else Path(out_dir)
    history: list[dict[str, Any]] = []
    best = -math.inf
    t_start = time.perf_counter()
    objects_done = 0
    try:
        for epoch in range(settings.epochs):
            rng = np.random.default_rng([settings.seed, epoch])
            order = rng.permutation(len(slots))
            if settings.max_objects_per_epoch is not None:
                order = order[: settings.max_objects_per_epoch]
            batches = [
                order[i : i + settings.batch_size]
                for i in range(0, len(order), settings.batch_size)
            ]
            plugin.train()
            t0 = time.perf_counter()
            total, used, skipped = 0.0, 0, 0
            kinds: dict[str, int] = {}
            bar = tqdm(batches, desc=f"stable epoch {epoch}", unit="batch", disable=not progress)
            for batch in bar:
                losses = []
                for slot_index in batch:
                    item = _draw_object(dataset, slots[int(slot_index)], settings, rng)
                    if item is None:
                        skipped += 1
                        continue
                    embedding, geometry, item = _embed(predictor, plain, item, settings, rng)
                    kind = choose_kind(settings, rng)
                    try:
                        prompt = sample_prompt(
                            kind, item.mask, rng, min_iou=settings.noisy_box_min_iou
                        )
                    except InputError:  # e.g. no box in a box_iou_* range for this object
                        skipped += 1
                        continue
                    kinds[kind] = kinds.get(kind, 0) + 1
                    losses.append(
                        object_loss(sam, embedding, geometry, prompt, item.mask, item.ignore)
                    )
                if not losses:
                    continue
                loss = torch.stack(losses).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if settings.grad_clip:
                    torch.nn.utils.clip_grad_norm_(trainable, settings.grad_clip)
                opt.step()
                total += float(loss.detach()) * len(losses)
                used += len(losses)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            plugin.eval()
            objects_done += used
            record: dict[str, Any] = {
                "epoch": epoch,
                "loss": total / used if used else math.nan,
                "objects": used,
                "skipped": skipped,
                "seconds": time.perf_counter() - t0,
                "kinds": dict(sorted(kinds.items())),
            }
            if val_items:
                report = evaluate_robustness(
                    predictor, val_items, val_kinds, b=val_b, seed=settings.seed
                )
                record["val"] = {k: v["miou"] for k, v in report["kinds"].items()}
                record["val_miou"] = float(np.nanmean(list(record["val"].values())))
            history.append(record)
            log(
                f"epoch {epoch}: loss={record['loss']:.4g} objects={used} "
                f"seconds={record['seconds']:.1f}"
                + (f" val_miou={record['val_miou']:.4g}" if "val_miou" in record else "")
            )
            if out is not None:
                score = record.get("val_miou", float(epoch))
                extra = {"epoch": epoch, "history": history, "best": max(best, score)}
                cfg = {**(config or {}), "settings": asdict(settings)}
                if score > best:
                    save_stable_plugin(out / "best", plugin, sam, extra=extra, config=cfg)
                save_stable_plugin(
                    out / "last", plugin, sam, optimizer=opt.state_dict(), extra=extra, config=cfg
                )
            best = max(best, record.get("val_miou", float(epoch)))
    finally:
        plugin.eval()
        if handle is not None:
            handle.detach()
    seconds = time.perf_counter() - t_start
    return {
        "history": history,
        "best": best if val_items else None,
        "objects": objects_done,
        "seconds": seconds,
        "seconds_per_object": seconds / max(objects_done, 1),
        "parameters": count_parameters(plugin),
        "checkpoint": None if out is None else str(out / "best"),
        "settings": asdict(settings),
    }
