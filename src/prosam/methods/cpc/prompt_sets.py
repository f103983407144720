"""Prompt sets for CPC-SAM: M random annotations of one entity, each encoded as prompt tokens.

CPC-SAM's abstract: "we first generate multiple prompts using random annotations to simulate
diverse distributions". Here a prompt set's *distribution* is its :class:`Recipe`: the
task-irrelevant generating factors of an annotation (its kind, how many positive and negative
clicks, how noisy the box). :func:`draw_recipes` draws M recipes once per episode; every
entity, every support image and the target share them, so set ``m`` always means "drawn the
m-th way" and only the random draw inside the recipe (which pixels, which noise) differs.

Two sources turn a recipe into tokens:

- **SAM prompts** (:func:`sample_sam_prompt` + :func:`encode_sam_prompts`): clicks and a box
  drawn from a region (the reference mask at fit time, a similarity prior on the target at
  predict time), encoded by SAM's own prompt encoder into a fixed *aligned layout* of
  ``T = max_positive + max_negative + 2`` tokens: positive-click slots, negative-click slots,
  then the two box corners. Unused slots hold SAM's not-a-point embedding (what SAM itself
  pads with) and are marked invalid, so token ``t`` plays the same role in every set.
- **A reference encoder** (:func:`encoder_prompt_sets`): any ``prompts_for(annotation) ->
  (1, Q, D)`` (e.g. a trained VRP / ProSAM prompt network) applied to the recipe's simulated
  annotation (point / scribble / noisy box / mask) of the reference; query ``t`` is aligned
  across sets by construction.

Everything is deterministic given the ``rng`` (a generator or an int seed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from prosam.errors import InputError
from prosam.prompts import (
    ANNOTATION_KINDS,
    AnnotationKind,
    box_to_mask,
    mask_to_box,
    noisy_box,
    random_points,
    simulate_annotation,
    simulate_scribble,
)
from prosam.prompts.arrays import RngLike, as_generator, as_mask, require_foreground
from prosam.sam.model import FrozenSam
from prosam.sam.transforms import ImageGeometry, transform_boxes, transform_coords


@dataclass(frozen=True)
class Recipe:
    """The generating factors of one prompt set (what the abstract calls task-irrelevant).

    ``kind``: ``"point"`` (clicks), ``"scribble"`` (clicks on a simulated scribble),
    ``"box"`` (a noisy box, no clicks) or ``"mask"`` (the tight box plus clicks);
    ``num_positive`` / ``num_negative``: click counts; ``box_noise``: :func:`noisy_box` scale.
    """

    kind: AnnotationKind
    num_positive: int
    num_negative: int
    box_noise: float


def draw_recipes(
    num_sets: int,
    rng: RngLike,
    *,
    kinds: Sequence[AnnotationKind] = ANNOTATION_KINDS,
    max_positive: int = 5,
    max_negative: int = 1,
    box_noise: float = 0.3,
) -> list[Recipe]:
    """Draw ``num_sets`` recipes: kinds round-robin from a random start (all kinds appear
    once ``num_sets >= len(kinds)``), 1..``max_positive`` positive and 0..``max_negative``
    negative clicks (none for ``box``), box noise ``U(0, box_noise)`` for ``box``."""
    if num_sets < 1:
        raise InputError(f"num_sets must be >= 1, got {num_sets}")
    if not kinds or any(k not in ANNOTATION_KINDS for k in kinds):
        raise InputError(f"kinds must be a non-empty subset of {ANNOTATION_KINDS}, got {kinds}")
    if max_positive < 1 or max_negative < 0:
        raise InputError("need max_positive >= 1 and max_negative >= 0")
    gen = as_generator(rng)
    start = int(gen.integers(len(kinds)))
    recipes = []
    for m in range(num_sets):
        kind = kinds[(start + m) % len(kinds)]
        n_pos = int(gen.integers(1, max_positive + 1))
        n_neg = int(gen.integers(0, max_negative + 1))
        noise = float(gen.uniform(0.0, box_noise))
        if kind == "box":
            recipes.append(Recipe(kind, 0, 0, noise))
        else:
            recipes.append(Recipe(kind, n_pos, n_neg, 0.0))
    return recipes


@dataclass
class SamPrompt:
    """One simulated SAM prompt in original-image pixels: ``(N, 2)`` xy ``points`` with
    ``(N,)`` ``labels`` (1 positive, 0 negative) and an optional ``(4,)`` xyxy ``box``."""

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None


@dataclass
class PromptSets:
    """M prompt sets of one entity on one image: ``tokens (M, T, D)``, ``valid (M, T)``."""

    tokens: Tensor
    valid: Tensor
    recipes: list[Recipe]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def sample_sam_prompt(
    region: np.ndarray,
    recipe: Recipe,
    rng: RngLike,
    *,
    background: np.ndarray | None = None,
    anchor_positive: tuple[float, float] | None = None,
    anchor_negative: tuple[float, float] | None = None,
) -> SamPrompt:
    """Draw one SAM prompt from ``region`` following ``recipe``.

    Positive clicks are uniform over the region (``point``, ``mask``) or over a scribble
    simulated inside it (``scribble``); negative clicks are uniform over ``background``
    (default: outside the region). ``anchor_positive`` / ``anchor_negative`` replace the
    first click of each sign (used on targets: PerSAM's best and worst prior pixels).
    """
    m = as_mask(region, "region")
    require_foreground(m, "sample_sam_prompt")
    gen = as_generator(rng)
    bg = ~m if background is None else as_mask(background, "background")
    if recipe.kind == "box":
        box = noisy_box(mask_to_box(m), gen, recipe.box_noise, (m.shape[0], m.shape[1]))
        return SamPrompt(np.zeros((0, 2)), np.zeros(0, np.int64), np.asarray(box, np.float64))
    if recipe.kind not in ANNOTATION_KINDS:
        raise InputError(f"unknown recipe kind {recipe.kind!r}")
    source = simulate_scribble(m, gen) if recipe.kind == "scribble" else m
    n_pos = min(max(recipe.num_positive, 1), int(source.sum()))
    pos = random_points(source, n_pos, gen).astype(np.float64)
    if anchor_positive is not None:
        pos[0] = anchor_positive
    n_neg = min(recipe.num_negative, int(bg.sum()))
    neg = random_points(bg, n_neg, gen).astype(np.float64) if n_neg else np.zeros((0, 2))
    if anchor_negative is not None and n_neg:
        neg[0] = anchor_negative
    box = np.asarray(mask_to_box(m), np.float64) if recipe.kind == "mask" else None
    labels = np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)])
    return SamPrompt(np.concatenate([pos, neg]), labels, box)


def not_a_point_token(sam: FrozenSam) -> Tensor:
    """SAM's not-a-point embedding ``(D,)``: the token SAM pads point prompts with."""
    return sam.prompt_encoder.not_a_point_embed.weight[0].detach()


@torch.no_grad()
def encode_sam_prompts(
    sam: FrozenSam,
    prompts: Sequence[SamPrompt],
    geometry: ImageGeometry,
    *,
    max_positive: int = 5,
    max_negative: int = 1,
    recipes: Sequence[Recipe] | None = None,
) -> PromptSets:
    """Encode prompts with SAM's prompt encoder into the aligned layout (module docstring).

    Returns ``tokens (M, max_positive + max_negative + 2, D)``: positive slots, negative
    slots, box corners; empty slots are not-a-point tokens with ``valid = False``.
    """
    if not prompts:
        raise InputError("encode_sam_prompts needs at least one prompt")
    n_pts = max_positive + max_negative
    count = len(prompts)
    coords = np.zeros((count, n_pts, 2), np.float64)
    labels = np.full((count, n_pts), -1, np.int64)
    boxes = np.zeros((count, 4), np.float64)
    has_box = np.zeros(count, bool)
    for i, p in enumerate(prompts):
        pos, neg = p.points[p.labels == 1], p.points[p.labels == 0]
        if len(pos) > max_positive or len(neg) > max_negative:
            raise InputError(
                f"prompt {i} has {len(pos)} positive / {len(neg)} negative clicks; the layout "
                f"holds {max_positive} / {max_negative}"
            )
        coords[i, : len(pos)], labels[i, : len(pos)] = pos, 1
        coords[i, max_positive : max_positive + len(neg)] = neg
        labels[i, max_positive : max_positive + len(neg)] = 0
        if p.box is not None:
            boxes[i], has_box[i] = p.box, True
    encoder = sam.prompt_encoder
    device = sam.device
    lab = torch.as_tensor(labels, device=device)
    points, _ = encoder(
        points=(transform_coords(coords, geometry).to(device), lab), boxes=None, masks=None
    )
    points = points[:, :n_pts]  # drop SAM's own trailing pad point
    corners, _ = encoder(points=None, boxes=transform_boxes(boxes, geometry).to(device), masks=None)
    box_ok = torch.as_tensor(has_box, device=device)
    corners = torch.where(box_ok[:, None, None], corners, not_a_point_token(sam).to(corners))
    tokens = torch.cat([points, corners], dim=1).clone()
    valid = torch.cat([lab != -1, box_ok[:, None].expand(count, 2)], dim=1)
    return PromptSets(tokens, valid, list(recipes) if recipes is not None else [])


def sam_prompt_sets(
    sam: FrozenSam,
    region: np.ndarray,
    geometry: ImageGeometry,
    recipes: Sequence[Recipe],
    rng: RngLike,
    *,
    max_positive: int = 5,
    max_negative: int = 1,
    background: np.ndarray | None = None,
    anchor_positive: tuple[float, float] | None = None,
    anchor_negative: tuple[float, float] | None = None,
) -> PromptSets:
    """One SAM prompt per recipe drawn from ``region`` (see :func:`sample_sam_prompt`), encoded."""
    gen = as_generator(rng)
    prompts = [
        sample_sam_prompt(
            region,
            r,
            gen,
            background=background,
            anchor_positive=anchor_positive,
            anchor_negative=anchor_negative,
        )
        for r in recipes
    ]
    return encode_sam_prompts(
        sam,
        prompts,
        geometry,
        max_positive=max_positive,
        max_negative=max_negative,
        recipes=recipes,
    )


def annotation_for_recipe(mask: np.ndarray, recipe: Recipe, rng: RngLike) -> np.ndarray:
    """A VRP-style reference annotation of ``mask`` following ``recipe``: ``num_positive``
    points, a scribble, a filled noisy box, or the mask itself."""
    m = as_mask(mask)
    gen = as_generator(rng)
    if recipe.kind == "box":
        require_foreground(m, "annotation_for_recipe")
        box = noisy_box(mask_to_box(m), gen, recipe.box_noise, (m.shape[0], m.shape[1]))
        return box_to_mask(box, (m.shape[0], m.shape[1]))
    return simulate_annotation(m, recipe.kind, gen, num_points=max(recipe.num_positive, 1))


@torch.no_grad()
def encoder_prompt_sets(
    prompts_for: Callable[[np.ndarray], Tensor],
    mask: np.ndarray,
    recipes: Sequence[Recipe],
    rng: RngLike,
) -> PromptSets:
    """Apply a reference encoder ``prompts_for(annotation) -> (1, Q, D)`` to one random
    annotation of ``mask`` per recipe; all Q tokens are valid."""
    gen = as_generator(rng)
    tokens = []
    for recipe in recipes:
        out = prompts_for(annotation_for_recipe(mask, recipe, gen))
        if out.ndim != 3 or out.shape[0] != 1:
            raise InputError(f"prompts_for must return (1, Q, D), got {tuple(out.shape)}")
        tokens.append(out[0].detach().clone())
    if not tokens:
        raise InputError("encoder_prompt_sets needs at least one recipe")
    if len({t.shape for t in tokens}) != 1:
        raise InputError("prompts_for returned different token counts for the same reference")
    stacked = torch.stack(tokens)
    valid = torch.ones(stacked.shape[:2], dtype=torch.bool, device=stacked.device)
    return PromptSets(stacked, valid, list(recipes))


def stack_prompt_sets(
    sets: Sequence[PromptSets], pad_token: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Stack N entities' prompt sets into ``tokens (N, M, T, D)`` and ``valid (N, M, T)``.

    Sets with fewer tokens are padded at the end with ``pad_token`` (zeros when omitted),
    marked invalid. Every entity must have the same M.
    """
    if not sets:
        raise InputError("stack_prompt_sets needs at least one entity")
    ms = {len(s) for s in sets}
    if len(ms) != 1:
        raise InputError(f"every entity needs the same number of prompt sets, got {sorted(ms)}")
    t_max = max(int(s.tokens.shape[1]) for s in sets)
    tokens, valid = [], []
    for s in sets:
        m, t, d = s.tokens.shape
        if t < t_max:
            pad = torch.zeros(d) if pad_token is None else pad_token
            fill = pad.to(s.tokens).expand(m, t_max - t, d)
            tokens.append(torch.cat([s.tokens, fill], dim=1))
            extra = torch.zeros(m, t_max - t, dtype=torch.bool, device=s.valid.device)
            valid.append(torch.cat([s.valid, extra], dim=1))
        else:
            tokens.append(s.tokens)
            valid.append(s.valid)
    return torch.stack(tokens), torch.stack(valid)
