"""CPC-SAM as a :class:`~prosam.methods.base.ReferenceMethod`, single- and multi-entity.

``fit`` runs the whole calibration at test time on the references (the support data):
prompt sets are drawn on each reference image from its own mask, then the first-order
bi-level schedule of :mod:`.bilevel` trains a fresh CaPL and decoder adapter for the
episode. ``predict`` draws the same recipes on the target (:mod:`.sources`), weights them
with the calibrated CaPL, decodes the calibrated prompt through the calibrated adapter.

Modes (registry names): ``cpc`` (the method), ``cpc_uniform`` (equal weights over the same
prompt sets, no calibration, frozen decoder) and ``cpc_best_single`` (for each entity, the
one recipe whose sets have the lowest summed support loss with the frozen decoder; on the
target, that recipe's set alone).

Multi-entity: :meth:`CPCMethod.fit_entities` takes one reference list per entity and
calibrates them jointly (task-level weights pooled across all of them);
:meth:`CPCMethod.predict_entities` returns per-entity logits and an overlap-free labelling
(:func:`resolve_overlaps`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from prosam.errors import InputError
from prosam.methods.base import MethodOutput, Reference, Target
from prosam.methods.capabilities import MULTI_ENTITY
from prosam.methods.cpc.adapters import DecoderAdapter, build_adapter
from prosam.methods.cpc.bilevel import (
    BilevelCalibrator,
    BilevelConfig,
    SupportItem,
    check_combine,
    decode_calibrated,
    decode_items,
    support_item,
)
from prosam.methods.cpc.capl import (
    CausalPromptLearner,
    PromptWeights,
    one_hot_weights,
    uniform_weights,
)
from prosam.methods.cpc.losses import LossWeights, cumulative_loss
from prosam.methods.cpc.prompt_sets import Recipe, draw_recipes, stack_prompt_sets
from prosam.methods.cpc.sources import (
    EncoderPromptSource,
    PromptSource,
    SamPromptSource,
    prompt_network_encoder,
)
from prosam.methods.overlaps import resolve_overlaps
from prosam.prompts import ANNOTATION_KINDS, mask_to_box, random_points
from prosam.sam.model import FrozenSam
from prosam.sam.predictor import Predictor

MODES = ("cpc", "uniform", "best_single")
#: Registry name -> mode.
CPC_KINDS = {"cpc": "cpc", "cpc_uniform": "uniform", "cpc_best_single": "best_single"}


@dataclass
class EntityPrediction:
    """Per-entity output on one target.

    ``logits (E, 1, h, w)`` raw decoder logits of the calibrated prompts; ``resolved``
    after :func:`resolve_overlaps`; ``labels (h, w)`` entity index or -1; ``scores (E,)``
    predicted IoUs; ``weights (E, M)`` the prompt-set weights used.
    """

    logits: Tensor
    resolved: Tensor
    labels: Tensor
    scores: Tensor
    weights: Tensor
    extras: list[dict[str, Tensor]] = field(default_factory=list)


@dataclass
class _Entity:
    references: list[Reference]
    masks: list[np.ndarray]
    state: Any


class CPCMethod:
    """CPC-SAM (prosam's reading of the abstract; see ``docs/methods/cpc.md``).

    Args:
        sam: the frozen SAM.
        mode: ``"cpc"``, ``"uniform"`` or ``"best_single"`` (module docstring).
        source: where prompt sets come from; SAM prompts (:class:`SamPromptSource`) by default.
        num_sets: M, prompt sets per entity and image (each half of the support draws).
        kinds, max_positive, max_negative, box_noise: the recipes (:func:`draw_recipes`).
        adapter: lower-level trainable part, ``"tokens"``, ``"lora"`` or ``"none"``.
        lora_rank: rank for ``adapter="lora"``.
        capl_hidden, token_scores, task_level, entity_level, temperature: CaPL's options.
        combine: ``"masked_tokens"`` (weighted average of the aligned prompt tokens over
            the sets where each token is valid, the default), ``"tokens"`` (plain weighted
            average, padding included) or ``"logits"`` (weighted average of the sets'
            decoded logits).
        outer_steps, lower_steps, upper_steps, lr_lower, lr_upper: the bi-level schedule.
        loss_entity, loss_task, loss_calibrated, loss_consistency: the λ of the objective.
        seed: every random draw and initialisation derives from it.
    """

    capabilities = frozenset({MULTI_ENTITY})

    def __init__(
        self,
        sam: FrozenSam,
        *,
        mode: str = "cpc",
        source: PromptSource | None = None,
        num_sets: int = 8,
        kinds: Sequence[str] = ANNOTATION_KINDS,
        max_positive: int = 5,
        max_negative: int = 1,
        box_noise: float = 0.3,
        adapter: str = "tokens",
        lora_rank: int = 4,
        capl_hidden: int = 64,
        token_scores: bool = True,
        task_level: bool = True,
        entity_level: bool = True,
        temperature: float = 1.0,
        combine: str = "masked_tokens",
        outer_steps: int = 10,
        lower_steps: int = 1,
        upper_steps: int = 1,
        lr_lower: float = 1e-3,
        lr_upper: float = 1e-2,
        loss_entity: float = 1.0,
        loss_task: float = 1.0,
        loss_calibrated: float = 1.0,
        loss_consistency: float = 1.0,
        seed: int = 0,
    ) -> None:
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        if num_sets < 1:
            raise InputError(f"num_sets must be >= 1, got {num_sets}")
        # outer_steps=0: no calibration at all (the uncalibrated learner, a baseline)
        steps = {"outer_steps": outer_steps, "lower_steps": lower_steps, "upper_steps": upper_steps}
        for key, value in steps.items():
            if value < (0 if key == "outer_steps" else 1):
                low = 0 if key == "outer_steps" else 1
                raise InputError(f"{key} must be >= {low}, got {value}")
        for key, value in {"lr_lower": lr_lower, "lr_upper": lr_upper}.items():
            if not value > 0:
                raise InputError(f"{key} must be > 0, got {value}")
        build_adapter(adapter, sam)  # validates the name early
        check_combine(combine)
        self.combine = combine
        self.sam = sam
        self.mode = mode
        self.name = {v: k for k, v in CPC_KINDS.items()}[mode]
        self.source: PromptSource = source or SamPromptSource(
            sam, max_positive=max_positive, max_negative=max_negative
        )
        self.num_sets = num_sets
        self.recipe_options = {
            "kinds": tuple(kinds),
            "max_positive": max_positive,
            "max_negative": max_negative,
            "box_noise": box_noise,
        }
        self.adapter_kind = adapter
        self.lora_rank = lora_rank
        self.capl_options = {
            "hidden": capl_hidden,
            "token_scores": token_scores,
            "task_level": task_level,
            "entity_level": entity_level,
            "temperature": temperature,
        }
        self.config = BilevelConfig(
            outer_steps=outer_steps,
            lower_steps=lower_steps,
            upper_steps=upper_steps,
            lr_lower=lr_lower,
            lr_upper=lr_upper,
            loss=LossWeights(loss_entity, loss_task, loss_calibrated, loss_consistency),
        )
        self.seed = seed
        self.recipes: list[Recipe] = []
        self.entities: list[_Entity] = []
        self.capl: CausalPromptLearner | None = None
        self.adapter: DecoderAdapter | None = None
        self.best_set: Tensor | None = None
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ fit

    def _support_mask(self, ref: Reference, index: int) -> np.ndarray:
        """The reference's mask: the annotation for ``kind="mask"``; otherwise SAM's own
        best-IoU mask prompted with the annotation's box (``box``, kept inside the box) or
        up to 5 of its pixels (``point`` / ``scribble``, united with them)."""
        ann = np.asarray(ref.annotation) != 0
        if not ann.any():
            raise InputError(f"reference {index}: the annotation is empty")
        if ref.kind == "mask":
            return ann
        predictor = Predictor(self.sam)
        if ref.kind == "box":
            x0, y0, x1, y1 = mask_to_box(ann)
            pred = predictor.predict(ref.embedded, box=np.array([x0, y0, x1, y1], float))
            mask, _ = pred.best()
            return mask & ann if (mask & ann).any() else ann
        rng = np.random.default_rng([self.seed, 3, index])
        pts = random_points(ann, min(5, int(ann.sum())), rng)
        pred = predictor.predict(ref.embedded, points=pts.astype(float))
        mask, _ = pred.best()
        return mask | ann

    def fit(self, references: Sequence[Reference]) -> None:
        """Calibrate on the k references of one entity."""
        self.fit_entities([references])

    def fit_entities(
        self,
        entities: Sequence[Sequence[Reference]],
        *,
        calibration: Mapping[str, Tensor] | None = None,
    ) -> None:
        """Calibrate jointly on several entities, each with its own references.

        ``calibration``: a :meth:`calibration_state` of an earlier fit on the same
        references and options, loaded instead of running the calibration again.
        """
        if not entities or any(len(refs) == 0 for refs in entities):
            raise InputError("fit needs at least one entity with at least one reference")
        rng = np.random.default_rng([self.seed, 0])
        self.recipes = draw_recipes(self.num_sets, rng, **self.recipe_options)  # type: ignore[arg-type]
        self.entities, items, half_a, half_b = [], [], [], []
        for e, refs in enumerate(entities):
            masks = [self._support_mask(ref, i) for i, ref in enumerate(refs)]
            state = self.source.fit_entity(refs, masks)
            self.entities.append(_Entity(list(refs), masks, state))
            for r, ref in enumerate(refs):
                items.append(support_item(ref.embedded, masks[r], entity=e))
                for half, out in enumerate((half_a, half_b)):
                    g = np.random.default_rng([self.seed, 1, e, r, half])
                    out.append(self.source.support_sets(state, refs, masks, r, self.recipes, g))
        pad = self.source.pad_token()
        tokens_a, valid_a = stack_prompt_sets(half_a, pad)
        tokens_b, valid_b = stack_prompt_sets(half_b, pad)
        self.capl, self.adapter, self.best_set, self.history = None, None, None, []
        if calibration is not None:
            self._load_calibration(calibration, len(entities))
        elif self.mode == "cpc":
            self._new_learners()
            assert self.capl is not None
            calibrator = BilevelCalibrator(
                self.sam, self.capl, self.adapter, self.config, combine=self.combine, pad_token=pad
            )
            self.history = calibrator.run(items, (tokens_a, valid_a), (tokens_b, valid_b))
        elif self.mode == "best_single":
            self.best_set = self._best_sets(items, [tokens_a, tokens_b], len(entities))

    def _new_learners(self) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.capl = CausalPromptLearner(self.sam.embed_dim, **self.capl_options)  # type: ignore[arg-type]
        self.capl.to(self.sam.device)
        self.adapter = build_adapter(
            self.adapter_kind, self.sam, lora_rank=self.lora_rank, seed=self.seed
        )
        if self.adapter is not None:
            self.adapter.to(self.sam.device)

    def calibration_state(self) -> dict[str, Tensor]:
        """What the calibration fitted, as tensors (CaPL's and the adapter's parameters,
        prefixed ``capl.`` / ``adapter.``; ``best_set`` for ``best_single``): all that
        :meth:`fit_entities` needs to skip it."""
        if not self.entities:
            raise RuntimeError("call fit(references) first")
        state: dict[str, Tensor] = {}
        if self.capl is not None:
            state.update({f"capl.{k}": v for k, v in self.capl.state_dict().items()})
        if self.adapter is not None:
            state.update({f"adapter.{k}": v for k, v in self.adapter.state_dict().items()})
        if self.best_set is not None:
            state["best_set"] = self.best_set
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def _load_calibration(self, state: Mapping[str, Tensor], entities: int) -> None:
        def part(prefix: str) -> dict[str, Tensor]:
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

        try:
            if self.mode == "cpc":
                self._new_learners()
                assert self.capl is not None
                self.capl.load_state_dict(part("capl."))
                self.capl.eval()
                if self.adapter is not None:
                    self.adapter.load_state_dict(part("adapter."))
            elif self.mode == "best_single":
                best = state["best_set"]
                if best.shape != (entities,):
                    raise ValueError(f"best_set of shape {tuple(best.shape)}")
                self.best_set = best.long()
        except (KeyError, RuntimeError, ValueError) as err:
            raise InputError(f"the saved calibration does not fit this method: {err}") from None

    @torch.no_grad()
    def _best_sets(self, items: list[SupportItem], halves: list[Tensor], entities: int) -> Tensor:
        """Per entity, the recipe with the lowest support loss summed over images and halves."""
        n, m = halves[0].shape[:2]
        total = torch.zeros(n, m)
        for tokens in halves:
            w = uniform_weights(n, m, tokens.device)
            sets, cals = decode_items(self.sam, items, tokens, w, None, combine="logits")
            terms = cumulative_loss(sets, cals, [i.target for i in items], w)
            total += terms.per_set.cpu()
        owner = torch.tensor([i.entity for i in items])
        return torch.stack([total[owner == e].sum(0).argmin() for e in range(entities)])

    # -------------------------------------------------------------- predict

    @torch.no_grad()
    def predict_entities(self, target: Target) -> EntityPrediction:
        """Every fitted entity on ``target``, with overlap resolution."""
        if not self.entities:
            raise RuntimeError("call fit(references) before predict")
        sets, extras = [], []
        for e, ent in enumerate(self.entities):
            g = np.random.default_rng([self.seed, 2, e])
            s, extra = self.source.target_sets(
                ent.state, ent.references, ent.masks, target, self.recipes, g
            )
            sets.append(s)
            extras.append(extra)
        tokens, valid = stack_prompt_sets(sets, self.source.pad_token())
        weights = self._weights(tokens, valid)
        logits, iou = decode_calibrated(
            self.sam,
            target.embedded.embedding,
            tokens,
            valid,
            weights,
            self.adapter,
            combine=self.combine,
            pad_token=self.source.pad_token(),
        )
        labels, resolved = resolve_overlaps(logits[:, 0])
        for e, extra in enumerate(extras):
            extra["weights"] = weights.combined[e].cpu()
            extra["task_weights"] = weights.task.cpu()
        return EntityPrediction(logits, resolved[:, None], labels, iou, weights.combined, extras)

    def _weights(self, tokens: Tensor, valid: Tensor) -> PromptWeights:
        n, m = tokens.shape[:2]
        if self.mode == "cpc":
            assert self.capl is not None
            return self.capl(tokens, valid)
        if self.mode == "best_single":
            assert self.best_set is not None
            return one_hot_weights(self.best_set.to(tokens.device), m)
        return uniform_weights(n, m, tokens.device)

    def predict(self, target: Target) -> MethodOutput:
        """The first fitted entity (the only one after :meth:`fit`): its raw logits
        ``(1, h, w)`` and predicted IoU; extras hold its weights (and similarity prior)."""
        out = self.predict_entities(target)
        return MethodOutput(out.logits[0], float(out.scores[0]), out.extras[0])


def build_cpc(
    kind: str,
    model: FrozenSam,
    prompt_source: str | os.PathLike[str] | None = "sam",
    *,
    prior_threshold: float = 0.7,
    anchors: bool = True,
    prior_component: bool = True,
    support: str = "mask",
    backbone_checkpoint: str | None = None,
    **options: Any,
) -> CPCMethod:
    """Build ``cpc``, ``cpc_uniform`` or ``cpc_best_single`` on a frozen SAM.

    ``prompt_source``: ``"sam"`` (SAM point/box prompts, target prompts from a similarity
    prior with ``prior_threshold`` / ``anchors`` / ``prior_component``; ``support="prior"``
    draws the support sets from the references' own priors) or the path of a
    ``prosam train`` checkpoint (VRP / ProSAM mean prompts); ``options`` go to
    :class:`CPCMethod`.
    """
    if kind not in CPC_KINDS:
        raise InputError(f"unknown CPC variant {kind!r}; choose one of {', '.join(CPC_KINDS)}")
    source: PromptSource
    if prompt_source is None or str(prompt_source) == "sam":
        source = SamPromptSource(
            model,
            max_positive=int(options.get("max_positive", 5)),
            max_negative=int(options.get("max_negative", 1)),
            prior_threshold=prior_threshold,
            anchors=anchors,
            prior_component=prior_component,
            support=support,
        )
    else:
        from prosam.backbones import build_backbone
        from prosam.methods.prompt_encoder.loading import load_prompt_network

        prompt_network, _ = load_prompt_network(prompt_source)
        backbone = build_backbone(prompt_network.config.backbone, weights=backbone_checkpoint)
        source = EncoderPromptSource(
            prompt_network_encoder(
                prompt_network.to(model.device),
                backbone.to(model.device),
                prompt_network.config.backbone_input,
            )
        )
    return CPCMethod(model, mode=CPC_KINDS[kind], source=source, **options)


def build_cpc_sam(
    model: FrozenSam, checkpoint: str | os.PathLike[str] | None = None, **options: Any
) -> CPCMethod:
    """CPC-SAM (the registry's ``cpc``); ``checkpoint``: a prompt encoder's prompt source."""
    return build_cpc("cpc", model, prompt_source=checkpoint or "sam", **options)


def build_cpc_uniform(
    model: FrozenSam, checkpoint: str | os.PathLike[str] | None = None, **options: Any
) -> CPCMethod:
    """CPC-SAM's prompt sets with uniform weights (the registry's ``cpc_uniform``)."""
    return build_cpc("cpc_uniform", model, prompt_source=checkpoint or "sam", **options)


def build_cpc_best_single(
    model: FrozenSam, checkpoint: str | os.PathLike[str] | None = None, **options: Any
) -> CPCMethod:
    """CPC-SAM's single best prompt set (the registry's ``cpc_best_single``)."""
    return build_cpc("cpc_best_single", model, prompt_source=checkpoint or "sam", **options)
