"""PerSAM, training-free (Zhang et al., "Personalize Segment Anything Model with One Shot").

The reference's object is summarised by one *target embedding*, the mean of its SAM
features inside the annotation; on a target image, the cosine similarity of every SAM
feature with it gives a location prior whose best and worst pixels become a positive and a
negative click. SAM predicts from the two clicks, then refines twice as PerSAM does:

1. the same clicks plus the previous low-res logits as mask input, three candidates, keep the
   one with the highest predicted IoU;
2. the same clicks, the box of that mask and its logits as mask input, three candidates, keep
   the best.

Not implemented: PerSAM's *target-guided attention* (the similarity map modulating the
decoder's token-to-image cross-attention) and *target-semantic prompting* (the target
embedding added to the prompt tokens). Both need a patched SAM mask decoder, and prosam
keeps SAM frozen and unmodified, so this is PerSAM's location prior and cascaded
post-refinement on a stock decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

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
)
from prosam.prompts import mask_to_box
from prosam.sam.model import FrozenSam
from prosam.sam.predictor import Predictor


def _pixel_xy(flat_index: int, width: int) -> tuple[int, int]:
    return flat_index % width, flat_index // width


class PerSAM:
    """Training-free PerSAM on SAM's own image embeddings.

    Args:
        model: the frozen SAM whose decoder predicts (its embeddings come with the inputs).
        refinement_steps: how many of PerSAM's two cascaded refinements to run (0, 1 or 2).
        annotation_mode: how the annotation is pooled onto the feature cells for the mean
            (``"area"``: each cell weighted by the fraction of it that is annotated).

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
    ) -> None:
        if refinement_steps not in (0, 1, 2):
            raise InputError(f"refinement_steps must be 0, 1 or 2, got {refinement_steps}")
        if annotation_mode not in ("max", "area"):
            raise InputError(f"annotation_mode must be 'max' or 'area', got {annotation_mode!r}")
        self.model = model
        self.predictor = Predictor(model)
        self.refinement_steps = refinement_steps
        self.annotation_mode: PoolMode = annotation_mode
        self.target_embedding: torch.Tensor | None = None
        self.reference_means: torch.Tensor | None = None
        self.reference_features: list[torch.Tensor] = []

    @torch.inference_mode()
    def fit(self, references: Sequence[Reference]) -> None:
        """Average the references' mean features inside their annotations.

        Raises:
            InputError: no reference, or a reference annotation that is empty.
        """
        if len(references) == 0:
            raise InputError("PerSAM needs at least one reference")
        means, local = [], []
        for i, ref in enumerate(references):
            geometry = ref.embedded.geometry
            feats = feature_region(ref.embedded.embedding, geometry).to(torch.float32)
            grid = (ref.embedded.embedding.shape[-2], ref.embedded.embedding.shape[-1])
            weights = annotation_weights(ref.annotation, geometry, grid, self.annotation_mode)
            weights = weights.to(feats.device)
            if not bool((weights > 0).any()):
                raise InputError(f"reference {i}: the annotation is empty")
            means.append(masked_mean_feature(feats, weights))
            local.append(foreground_features(feats, weights))
        self.reference_means = torch.stack(means)
        self.target_embedding = self.reference_means.mean(dim=0)
        self.reference_features = local

    @torch.inference_mode()
    def predict(self, target: Target) -> MethodOutput:
        """Segment the referenced object in ``target`` (see the module docstring)."""
        if self.target_embedding is None:
            raise RuntimeError("call fit(references) before predict(target)")
        embedded = target.embedded
        emb = embedded.embedding
        if emb.ndim != 4 or emb.shape[0] != 1 or emb.shape[1] != self.target_embedding.shape[0]:
            raise InputError(
                f"target embedding {tuple(emb.shape)} does not match the references' "
                f"{self.target_embedding.shape[0]} channels"
            )
        # Location prior over the whole padded grid, brought to the image as SAM's masks are.
        sim_grid = cosine_similarity_map(emb[0], self.target_embedding)
        similarity = grid_map_to_image(sim_grid, embedded.geometry)
        width = similarity.shape[1]
        flat = similarity.flatten()
        pos = _pixel_xy(int(torch.argmax(flat)), width)
        neg = _pixel_xy(int(torch.argmin(flat)), width)
        points = np.array([pos, neg], dtype=np.float64)
        labels = np.array([1, 0], dtype=np.int64)

        pred = self.predictor.predict(
            embedded, points=points, point_labels=labels, multimask_output=False
        )
        logits, score, mask = pred.low_res_logits[0:1], float(pred.scores[0]), pred.masks[0]
        box = None
        if self.refinement_steps >= 1:
            pred = self.predictor.predict(
                embedded,
                points=points,
                point_labels=labels,
                mask_input=logits,
                multimask_output=True,
            )
            best = int(np.argmax(pred.scores))
            logits, score, mask = (
                pred.low_res_logits[best : best + 1],
                float(pred.scores[best]),
                pred.masks[best],
            )
        if self.refinement_steps >= 2 and mask.any():
            box = np.asarray(mask_to_box(mask), dtype=np.float64)
            pred = self.predictor.predict(
                embedded,
                points=points,
                point_labels=labels,
                box=box,
                mask_input=logits,
                multimask_output=True,
            )
            best = int(np.argmax(pred.scores))
            logits, score = pred.low_res_logits[best : best + 1], float(pred.scores[best])

        extras = {
            "similarity": similarity.cpu(),
            "points": torch.as_tensor(points, dtype=torch.float32),
            "point_labels": torch.as_tensor(labels),
        }
        if box is not None:
            extras["box"] = torch.as_tensor(box, dtype=torch.float32)
        return MethodOutput(low_res_logits=logits, score=score, extras=extras)
