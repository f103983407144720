"""Episodic training of VRP / ProSAM prompt encoders against a frozen SAM.

Only the prompt encoder has gradients. SAM embeddings and backbone features come from a
:class:`FeatureStore` (computed once, cached on disk). Each epoch draws fresh 1-shot
episodes from the base classes with a seed derived from ``(seed, epoch)``, so a resumed run
sees the same episodes as an uninterrupted one. Runs alone or under torchrun (gloo/nccl DDP,
each rank taking a strided share of the epoch's episodes).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from prosam.backbones.base import BackboneFeatures
from prosam.backbones.features import stack_features
from prosam.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from prosam.data.episodes import (
    make_episodes,
    rank_and_world_from_env,
    reference_annotation,
    split_for_rank,
)
from prosam.data.training_episodes import (
    ClassAreas,
    EpisodeMix,
    batch_units,
    episode_truth,
    mixed_episode_units,
)
from prosam.data.types import ANNOTATION_KINDS, Dataset, Episode
from prosam.errors import InputError
from prosam.methods.base import Reference, Target
from prosam.methods.prompt_encoder.anchors import anchor_prompts
from prosam.methods.prompt_encoder.feature_store import FeatureStore
from prosam.methods.prompt_encoder.network import PromptNetwork, decode_prompt_logits
from prosam.methods.prompt_encoder.variational import prosam_loss
from prosam.prompts import downsample_annotation
from prosam.sam.model import FrozenSam
from prosam.sam.transforms import mask_to_low_res


@dataclass
class TrainSettings:
    """Optimisation settings (ProSAM / VRP-SAM defaults where the papers give them)."""

    epochs: int = 10
    episodes_per_epoch: int = 500
    batch_size: int = 2
    lr: float = 1e-4
    weight_decay: float = 1e-6
    scheduler: str = "cosine_restarts"  # or "cosine"
    restart_every: int = 15
    seed: int = 321
    annotation: str = "mask"  # a kind, or "mixed"
    grad_clip: float | None = None
    paired_fraction: float = 0.0
    absent_fraction: float = 0.0
    distractor_fraction: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mix(self) -> EpisodeMix:
        """The episode kinds of an epoch (:mod:`prosam.data.training_episodes`)."""
        return EpisodeMix(self.paired_fraction, self.absent_fraction, self.distractor_fraction)

    def __post_init__(self) -> None:
        _ = self.mix  # validates the fractions
        if self.annotation not in (*ANNOTATION_KINDS, "mixed"):
            raise InputError(f"annotation must be one of {ANNOTATION_KINDS} or 'mixed'")
        if self.scheduler not in ("cosine", "cosine_restarts"):
            raise InputError("scheduler must be 'cosine' or 'cosine_restarts'")


def _scheduler(
    opt: torch.optim.Optimizer, s: TrainSettings
) -> torch.optim.lr_scheduler.LRScheduler:
    if s.scheduler == "cosine_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=s.restart_every)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(s.epochs, 1))


def epoch_units(
    dataset: Dataset,
    classes: Sequence[int],
    settings: TrainSettings,
    epoch: int,
    areas: ClassAreas | None = None,
) -> list[tuple[Episode, ...]]:
    """This epoch's training episodes as units (a paired episode's two halves form one
    unit, see :mod:`prosam.data.training_episodes`), seeded by ``seed`` and ``epoch``.
    Without paired, absent or distractor fractions these are :func:`make_episodes`'s."""
    seed = settings.seed * 100_003 + epoch
    kind = "mask" if settings.annotation == "mixed" else settings.annotation
    mix = settings.mix
    if mix.standard >= 1.0:
        units = [
            (e,)
            for e in make_episodes(
                dataset, classes, n=settings.episodes_per_epoch, shots=1, seed=seed, annotation=kind
            )
        ]
    else:
        units = mixed_episode_units(
            dataset, classes, settings.episodes_per_epoch, mix, seed, kind, areas
        )
    if settings.annotation == "mixed":
        rng = np.random.default_rng(seed)
        kinds = iter(rng.choice(ANNOTATION_KINDS, size=sum(len(u) for u in units)))
        units = [
            tuple(
                Episode(
                    e.references,
                    e.target,
                    e.class_id,
                    e.class_name,
                    str(next(kinds)),
                    e.annotation_seed,
                )
                for e in unit
            )
            for unit in units
        ]
    return units


def epoch_episodes(
    dataset: Dataset, classes: Sequence[int], settings: TrainSettings, epoch: int
) -> list[Episode]:
    """This epoch's training episodes, in order (:func:`epoch_units` flattened)."""
    return [e for unit in epoch_units(dataset, classes, settings, epoch) for e in unit]


class _TrainingPrompts(torch.nn.Module):
    """Adapter so DDP wraps the call that produces training prompts."""

    def __init__(self, model: PromptNetwork) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        ref: BackboneFeatures,
        ann: torch.Tensor,
        tgt: BackboneFeatures,
        tgt_sam: torch.Tensor | None = None,
        tgt_prior: torch.Tensor | None = None,
        anchors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model.training_prompts(ref, ann, tgt, tgt_sam, tgt_prior, anchors)


def train(
    model: PromptNetwork,
    sam: FrozenSam,
    store: FeatureStore,
    dataset: Dataset,
    classes: Sequence[int],
    settings: TrainSettings,
    out_dir: str | Path,
    *,
    config: dict[str, Any],
    validate: Callable[[PromptNetwork], float | Mapping[str, float]] | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``model``; write ``last`` and ``best`` checkpoints to ``out_dir``; return a summary.

    ``best`` is the epoch of highest ``validate(model)``, a number or a mapping whose
    ``val_miou`` counts (``prosam train`` passes the FSS mIoU on validation episodes with the
    reference dependence, :func:`prosam.evaluation.evaluate.validation_scores`);
    without it, of lowest training loss. ``validate`` runs in eval mode and no-grad; the
    model is put back in training mode after it. ``config`` goes into every checkpoint's
    JSON.
    """
    out = Path(out_dir)
    rank, world = rank_and_world_from_env()
    distributed = world > 1
    if distributed and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    torch.manual_seed(settings.seed + rank)
    random.seed(settings.seed + rank)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    sched = _scheduler(opt, settings)
    start, best, history = 0, -math.inf, []
    if resume and (out / "last.json").is_file():
        ckpt = load_checkpoint(out / "last")
        model.load_state_dict(ckpt.model)
        if ckpt.optimizer is not None:
            opt.load_state_dict(ckpt.optimizer)
        sched.load_state_dict(ckpt.extra["scheduler"])
        start = int(ckpt.extra["epoch"]) + 1
        best = float(ckpt.extra.get("best", -math.inf))
        history = list(ckpt.extra.get("history", []))
        log(f"resumed from {out / 'last'} at epoch {start}")
    wrapped: torch.nn.Module = _TrainingPrompts(model)
    if distributed:
        wrapped = torch.nn.parallel.DistributedDataParallel(wrapped)
    writer = _tensorboard(out / "tensorboard") if rank == 0 else None
    t_train = 0.0
    episodes_done = 0
    areas = ClassAreas(dataset)  # computed once, for distractor episodes
    for epoch in range(start, settings.epochs):
        # seeded per epoch, so a resumed run draws what an uninterrupted one would (ProSAM's
        # Monte-Carlo samples)
        torch.manual_seed(settings.seed * 100_003 + epoch + 7919 * rank)
        random.seed(settings.seed * 100_003 + epoch + 7919 * rank)
        model.train()
        units = split_for_rank(epoch_units(dataset, classes, settings, epoch, areas), rank, world)
        batches = batch_units(units, settings.batch_size)
        episodes = [e for batch in batches for e in batch]
        t0 = time.perf_counter()
        total = 0.0
        bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", disable=not progress or rank)
        for batch in bar:
            loss = episode_loss(wrapped, model, sam, store, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, settings.grad_clip)
            opt.step()
            total += float(loss.detach()) * len(batch)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        sched.step()
        seconds = time.perf_counter() - t0
        t_train += seconds
        episodes_done += len(episodes)
        record: dict[str, Any] = {
            "epoch": epoch,
            "loss": total / max(len(episodes), 1),
            "seconds": seconds,
            "lr": opt.param_groups[0]["lr"],
        }
        if validate is not None and rank == 0:
            model.eval()
            with torch.no_grad():
                scores = validate(model)
            if isinstance(scores, Mapping):
                record.update({k: float(v) for k, v in scores.items()})
            else:
                record["val_miou"] = float(scores)
            model.train()
        history.append(record)
        log(
            " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
            )
        )
        if writer is not None:
            for key, value in record.items():
                if key not in ("epoch", "seconds") and isinstance(value, float):
                    writer.add_scalar(key, value, epoch)
        if rank == 0:
            score = record.get("val_miou", -record["loss"])
            extra = {
                "epoch": epoch,
                "scheduler": sched.state_dict(),
                "history": history,
                "best": max(best, score),
            }
            state = {k: v for k, v in model.state_dict().items()}
            if score > best:
                best = score
                save_checkpoint(out / "best", Checkpoint(state, config, None, extra))
            save_checkpoint(out / "last", Checkpoint(state, config, opt.state_dict(), extra))
    if writer is not None:
        writer.close()
    return {
        "history": history,
        "best": best,
        "train_seconds": t_train,
        "seconds_per_episode": t_train / max(episodes_done, 1),
        "settings": asdict(settings),
    }


def episode_loss(
    prompt_fn: torch.nn.Module,
    model: PromptNetwork,
    sam: FrozenSam,
    store: FeatureStore,
    batch: Sequence[Episode],
) -> torch.Tensor:
    """Mean BCE + Dice of a batch of 1-shot episodes (over K samples for ProSAM).

    ``prompt_fn`` produces the training prompts (the model itself, or its DDP wrapper).
    """
    device = sam.device
    c = model.config
    refs, anns, tgts, embs, truths, priors = [], [], [], [], [], []
    for ep in batch:
        ref_sample = ep.references[0]
        ann, _ = reference_annotation(ref_sample, ep.class_id, ep.annotation, ep.annotation_seed)
        pooled = downsample_annotation(
            ann.astype(np.float32), (c.backbone_input,) * 2, mode=c.annotation_pool
        )  # type: ignore[arg-type]
        anns.append(torch.as_tensor(pooled)[None, None])
        ref_image = ref_sample.image()
        refs.append(store.features(ref_image))
        image, emb, feats = store.sample(ep.target)
        tgts.append(feats)
        embs.append(emb)
        truths.append(episode_truth(ep))
        if model.needs_method_prior:
            if store.prior is None:
                raise InputError("this model needs a method prior: give the FeatureStore one")
            grid = (int(feats.mid[0].shape[-2]), int(feats.mid[0].shape[-1]))
            reference = Reference(ref_image, ann, store.embedding(ref_image))
            key = (ref_sample.key, ep.class_id, ep.annotation, ep.annotation_seed, ep.target.key)
            priors.append(store.prior([reference], Target(image, emb), grid, key))
    tgt = stack_features(tgts)
    tgt_prior = torch.cat(priors).to(device) if priors else None
    tgt_sam = None
    if model.reads_sam_embedding:
        grid = (int(tgt.mid[0].shape[-2]), int(tgt.mid[0].shape[-1]))
        maps = [model.target_value_map(sam, e, grid) for e in embs]
        tgt_sam = torch.cat([m for m in maps if m is not None]).to(device)
    anchors = None
    if c.anchor_points:
        assert tgt_prior is not None  # a config with anchors needs a method prior
        geometries = [e.geometry for e in embs]
        anchors = anchor_prompts(sam, tgt_prior, geometries, c.anchor_points)
    prompts = prompt_fn(
        stack_features(refs), torch.cat(anns).to(device), tgt, tgt_sam, tgt_prior, anchors
    )
    logits, _ = decode_prompt_logits(sam, torch.cat([e.embedding for e in embs]), prompts)
    low = logits.shape[-1]
    losses = []
    for i, (emb, (truth, ignore)) in enumerate(zip(embs, truths, strict=True)):
        target, (h, w) = mask_to_low_res(truth, emb.geometry, low)
        ign = mask_to_low_res(ignore, emb.geometry, low)[0]
        losses.append(
            prosam_loss(logits[:, i : i + 1, :, :h, :w], target.to(device), ign.to(device))
        )
    return torch.stack(losses).mean()


def _tensorboard(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is the optional `train` extra
        return None
    return SummaryWriter(str(path))
