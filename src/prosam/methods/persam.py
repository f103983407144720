"""PerSAM, training-free (Zhang et al., "Personalize Segment Anything Model with One Shot").

The reference's object is summarised by one *target embedding*, the mean of its SAM
features inside the annotation; on a target image, the cosine similarity of every SAM
feature with it gives a location prior whose best and worst pixels become a positive and a
negative click. The first prediction is steered as the paper does (both on by default,
each an option), with hooks on the frozen decoder (:mod:`prosam.sam.guidance`):

- *target-guided attention*: the sigmoid of the standardised similarity map biases the
  decoder's token-to-image cross-attention;
- *target-semantic prompting*: the target embedding is added to the decoder's tokens.

It then refines twice as PerSAM does:

1. the same clicks plus the previous low-res logits as mask input, three candidates, keep the
   one with the highest predicted IoU;
2. the same clicks, the box of that mask and its logits as mask input, three candidates, keep
   the best.

``persam_lite`` is the same without the two decoder signals (prosam's first PerSAM: the
location prior and the cascade on a stock decoder).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prosam.errors import InputError
from prosam.methods.base import MethodOutput, Reference, Target
from prosam.methods.similarity import (
    PoolMode,
    annotation_weights,
    cosine_similarity_map,
    feature_region,
    foreground_features,
    grid_map_to_image,
    masked_mean_feature,
    region_size,
)
from prosam.prompts import mask_to_box
from prosam.sam.guidance import attention_guide, guided_decoding
from prosam.sam.model import FrozenSam
from prosam.sam.predictor import ImageEmbedding, Predictor


@dataclass
class ReferenceCells:
    """One reference's SAM feature cells: ``features (C, h, w)`` over the image and the
    annotation's ``weights (h, w)`` on them."""

    features: torch.Tensor
    weights: torch.Tensor


def reference_cells(
    references: Sequence[Reference], annotation_mode: PoolMode = "area"
) -> list[ReferenceCells]:
    """Each reference's SAM feature cells and annotation weights.

    Raises:
        InputError: no reference, or a reference annotation that covers no cell.
    """
    if len(references) == 0:
        raise InputError("PerSAM needs at least one reference")
    cells = []
    for i, ref in enumerate(references):
        geometry = ref.embedded.geometry
        feats = feature_region(ref.embedded.embedding, geometry).to(torch.float32)
        grid = (ref.embedded.embedding.shape[-2], ref.embedded.embedding.shape[-1])
        weights = annotation_weights(ref.annotation, geometry, grid, annotation_mode)
        weights = weights.to(feats.device)
        if not bool((weights > 0).any()):
            raise InputError(f"reference {i}: the annotation is empty")
        cells.append(ReferenceCells(feats, weights))
    return cells


def check_embedding(embedded: ImageEmbedding, channels: int) -> torch.Tensor:
    """The ``(1, C, h, w)`` embedding of ``embedded``, checked against ``channels``."""
    emb = embedded.embedding
    if emb.ndim != 4 or emb.shape[0] != 1 or emb.shape[1] != channels:
        raise InputError(
            f"target embedding {tuple(emb.shape)} does not match the references' "
            f"{channels} channels"
        )
    return emb


def extreme_pixels(similarity: torch.Tensor) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((x, y) of the highest, (x, y) of the lowest)`` value of an ``(H, W)`` map."""
    width = similarity.shape[1]
    flat = similarity.flatten()
    best, worst = int(torch.argmax(flat)), int(torch.argmin(flat))
    return (best % width, best // width), (worst % width, worst // width)


def refine_step(
    predictor: Predictor,
    embedded: ImageEmbedding,
    points: np.ndarray,
    labels: np.ndarray,
    logits: torch.Tensor,
    mask: np.ndarray,
    *,
    use_box: bool,
) -> tuple[torch.Tensor, float, np.ndarray, np.ndarray | None]:
    """One of PerSAM's cascaded refinements: the clicks, the previous ``(1, h, w)`` logits as
    mask input and (``use_box``) the box of the previous ``mask``; three candidates, the one
    with the highest predicted IoU is kept. Returns ``(logits, score, mask, box)``."""
    box = np.asarray(mask_to_box(mask), dtype=np.float64) if use_box else None
    pred = predictor.predict(
        embedded,
        points=points,
        point_labels=labels,
        box=box,
        mask_input=logits,
        multimask_output=True,
    )
    best = int(np.argmax(pred.scores))
    return (
        pred.low_res_logits[best : best + 1],
        float(pred.scores[best]),
        pred.masks[best],
        box,
    )


class PerSAM:
    """Training-free PerSAM on SAM's own image embeddings.

    Args:
        model: the frozen SAM whose decoder predicts (its embeddings come with the inputs).
        refinement_steps: how many of PerSAM's two cascaded refinements to run (0, 1 or 2).
        annotation_mode: how the annotation is pooled onto the feature cells for the mean
            (``"area"``: each cell weighted by the fraction of it that is annotated).
        guided_attention: bias the first prediction's token-to-image attention with the
            similarity map (PerSAM's target-guided attention).
        semantic_prompt: add the target embedding to the first prediction's decoder tokens
            (PerSAM's target-semantic prompting).

    After :meth:`fit`, :attr:`target_embedding` is the ``(C,)`` mean of the per-reference
    means :attr:`reference_means` ``(k, C)``, and :attr:`reference_features` holds each
    reference's ``(N_i, C)`` features inside its annotation.
    """

    name = "persam"

    def __init__(
        self,
        model: FrozenSam,
        *,
        refinement_steps: int = 2,
        annotation_mode: PoolMode = "area",
        guided_attention: bool = True,
        semantic_prompt: bool = True,
    ) -> None:
        if refinement_steps not in (0, 1, 2):
            raise InputError(f"refinement_steps must be 0, 1 or 2, got {refinement_steps}")
        if annotation_mode not in ("max", "area"):
            raise InputError(f"annotation_mode must be 'max' or 'area', got {annotation_mode!r}")
        self.model = model
        self.predictor = Predictor(model)
        self.refinement_steps = refinement_steps
        self.annotation_mode: PoolMode = annotation_mode
        self.guided_attention = guided_attention
        self.semantic_prompt = semantic_prompt
        self.target_embedding: torch.Tensor | None = None
        self.reference_means: torch.Tensor | None = None
        self.reference_features: list[torch.Tensor] = []

    @torch.inference_mode()
    def fit(self, references: Sequence[Reference]) -> None:
        """Average the references' mean features inside their annotations.

        Raises:
            InputError: no reference, or a reference annotation that is empty.
        """
        cells = reference_cells(references, self.annotation_mode)
        means = [masked_mean_feature(c.features, c.weights) for c in cells]
        self.reference_means = torch.stack(means)
        self.target_embedding = self.reference_means.mean(dim=0)
        self.reference_features = [foreground_features(c.features, c.weights) for c in cells]

    @torch.inference_mode()
    def predict(self, target: Target) -> MethodOutput:
        """Segment the referenced object in ``target`` (see the module docstring)."""
        if self.target_embedding is None:
            raise RuntimeError("call fit(references) before predict(target)")
        embedded = target.embedded
        emb = check_embedding(embedded, int(self.target_embedding.shape[0]))
        # Location prior over the whole padded grid, brought to the image as SAM's masks are.
        sim_grid = cosine_similarity_map(emb[0], self.target_embedding)
        similarity = grid_map_to_image(sim_grid, embedded.geometry)
        pos, neg = extreme_pixels(similarity)
        points = np.array([pos, neg], dtype=np.float64)
        labels = np.array([1, 0], dtype=np.int64)

        guide = None
        if self.guided_attention:
            valid = region_size(embedded.geometry, (sim_grid.shape[0], sim_grid.shape[1]))
            guide = attention_guide(sim_grid, valid)
        bias = self.target_embedding if self.semantic_prompt else None
        with guided_decoding(self.model.sam, attention=guide, token_bias=bias):
            pred = self.predictor.predict(
                embedded, points=points, point_labels=labels, multimask_output=False
            )
        logits, score, mask = pred.low_res_logits[0:1], float(pred.scores[0]), pred.masks[0]
        box = None
        if self.refinement_steps >= 1:
            logits, score, mask, _ = refine_step(
                self.predictor, embedded, points, labels, logits, mask, use_box=False
            )
        if self.refinement_steps >= 2 and mask.any():
            logits, score, mask, box = refine_step(
                self.predictor, embedded, points, labels, logits, mask, use_box=True
            )

        extras = {
            "similarity": similarity.cpu(),
            "points": torch.as_tensor(points, dtype=torch.float32),
            "point_labels": torch.as_tensor(labels),
        }
        if box is not None:
            extras["box"] = torch.as_tensor(box, dtype=torch.float32)
        return MethodOutput(low_res_logits=logits, score=score, extras=extras)


def build_persam_lite(
    model: FrozenSam, *, refinement_steps: int = 2, annotation_mode: PoolMode = "area"
) -> PerSAM:
    """PerSAM's location prior and cascade on a stock decoder (no attention guidance, no
    semantic prompt)."""
    method = PerSAM(
        model,
        refinement_steps=refinement_steps,
        annotation_mode=annotation_mode,
        guided_attention=False,
        semantic_prompt=False,
    )
    method.name = "persam_lite"
    return method
