"""GP-SAM: geometric prompts from a PFENet prior mask (the baseline of VRP-SAM, Sec. 5.3).

VRP-SAM's GP-SAM turns a visual reference into SAM's geometric prompts: a pseudo-mask of
the target is computed "following PFENet" (its training-free prior mask: for every target
feature, the highest cosine similarity to the reference's foreground features, min-max
normalised), then its bounding box and/or 5 points sampled at random inside it prompt SAM.

Choices the paper leaves open, made here:

- features: SAM's own image embedding by default (GP-SAM used ResNet-50 or DINOv2; pass
  any :class:`prosam.methods.similarity.FeatureProvider` or ``features(image, embedded)``
  callable to use another backbone);
- the prior is upsampled to the original image (bilinearly, as SAM post-processes masks)
  and then thresholded at ``threshold = 0.5``, the midpoint of the normalised prior;
- with several references, the target's similarity is the maximum over all of them (before
  the min-max normalisation, i.e. one bank of every reference's foreground features);
- the 5 points are distinct pixels drawn with a generator seeded by ``seed`` afresh for each
  prediction (fewer when the pseudo-mask is smaller), so predictions are deterministic;
- an empty pseudo-mask (a constant prior) falls back to one click at the prior's maximum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from prosam.errors import InputError
from prosam.methods.base import MethodOutput, Reference, Target
from prosam.methods.similarity import (
    FeaturesLike,
    PoolMode,
    as_feature_provider,
    max_foreground_similarity,
    minmax_normalise,
)
from prosam.prompts import mask_to_box, random_points
from prosam.sam.model import FrozenSam
from prosam.sam.predictor import Predictor

PromptMode = Literal["box", "point", "box+point"]


class GeometricPrompts:
    """GP-SAM: a PFENet prior mask of the target, prompted into SAM as a box and/or points.

    Args:
        model: the frozen SAM whose decoder predicts.
        prompt: ``"box"`` (the pseudo-mask's bounding box), ``"point"`` (``num_points``
            random pseudo-mask pixels) or ``"box+point"`` (both, the default).
        threshold: the pseudo-mask is ``prior > threshold`` on the normalised prior.
        num_points: how many positive points to sample (VRP-SAM uses 5).
        seed: seed of the point sampler (reset for every prediction).
        features: the feature extractor, ``None`` for SAM's image embedding.
        annotation_mode: how reference annotations are pooled onto the feature cells; every
            cell with a positive value is reference foreground.
    """

    name = "geometric"

    def __init__(
        self,
        model: FrozenSam,
        *,
        prompt: PromptMode = "box+point",
        threshold: float = 0.5,
        num_points: int = 5,
        seed: int = 0,
        features: FeaturesLike = None,
        annotation_mode: PoolMode = "area",
    ) -> None:
        if prompt not in ("box", "point", "box+point"):
            raise InputError(f"prompt must be 'box', 'point' or 'box+point', got {prompt!r}")
        if num_points < 1:
            raise InputError(f"num_points must be >= 1, got {num_points}")
        if annotation_mode not in ("max", "area"):
            raise InputError(f"annotation_mode must be 'max' or 'area', got {annotation_mode!r}")
        self.model = model
        self.predictor = Predictor(model)
        self.prompt: PromptMode = prompt
        self.threshold = float(threshold)
        self.num_points = int(num_points)
        self.seed = int(seed)
        self.features = as_feature_provider(features)
        self.annotation_mode: PoolMode = annotation_mode
        self.references: list[tuple[torch.Tensor, torch.Tensor]] = []

    @torch.inference_mode()
    def fit(self, references: Sequence[Reference]) -> None:
        """Keep each reference's features and annotation weights on its feature grid.

        Raises:
            InputError: no reference, or a reference annotation that is empty.
        """
        if len(references) == 0:
            raise InputError("GeometricPrompts needs at least one reference")
        kept = []
        for i, ref in enumerate(references):
            feats = self.features(ref.image, ref.embedded).to(torch.float32)
            weights = self.features.annotation_weights(
                ref.annotation, ref.embedded, tuple(feats.shape[-2:]), self.annotation_mode
            )
            if not bool((weights > 0).any()):
                raise InputError(f"reference {i}: the annotation is empty")
            kept.append((feats, weights.to(feats.device)))
        self.references = kept

    @torch.inference_mode()
    def prior(self, target: Target) -> torch.Tensor:
        """The normalised prior mask of ``target`` at its original size ``(H, W)``."""
        if not self.references:
            raise RuntimeError("call fit(references) before predict(target)")
        feats = self.features(target.image, target.embedded).to(torch.float32)
        sims = [
            max_foreground_similarity(feats, ref_feats.to(feats.device), ref_w.to(feats.device))
            for ref_feats, ref_w in self.references
        ]
        grid_prior = minmax_normalise(torch.stack(sims).amax(dim=0))
        return self.features.to_image(grid_prior, target.embedded).cpu()

    @torch.inference_mode()
    def predict(self, target: Target) -> MethodOutput:
        """Segment the referenced object in ``target`` from the pseudo-mask's prompts."""
        prior = self.prior(target)
        pseudo = (prior > self.threshold).numpy()
        points = box = None
        if pseudo.any():
            if "box" in self.prompt:
                box = np.asarray(mask_to_box(pseudo), dtype=np.float64)
            if "point" in self.prompt:
                n = min(self.num_points, int(pseudo.sum()))
                points = random_points(pseudo, n, self.seed).astype(np.float64)
        else:
            flat = int(torch.argmax(prior.flatten()))
            width = prior.shape[1]
            points = np.array([[flat % width, flat // width]], dtype=np.float64)
        labels = None if points is None else np.ones(len(points), dtype=np.int64)
        pred = self.predictor.predict(
            target.embedded, points=points, point_labels=labels, box=box, multimask_output=False
        )
        extras = {"pseudo_mask": torch.from_numpy(pseudo), "prior": prior}
        if points is not None:
            extras["points"] = torch.as_tensor(points, dtype=torch.float32)
        if box is not None:
            extras["box"] = torch.as_tensor(box, dtype=torch.float32)
        return MethodOutput(
            low_res_logits=pred.low_res_logits[0:1], score=float(pred.scores[0]), extras=extras
        )


def build_geometric(
    model: FrozenSam,
    *,
    backbone: str | None = None,
    level: str = "high",
    backbone_input: int = 512,
    **options: Any,
) -> GeometricPrompts:
    """GP-SAM; ``backbone`` (e.g. ``efficientnet_lite0``) takes the prior from a semantic
    backbone's ``level`` (``high``, ``mid0`` or ``mid1``) instead of SAM's own embeddings."""
    if backbone is not None:
        options["features"] = backbone_feature_fn(backbone, level, backbone_input, model)
    return GeometricPrompts(model, **options)


def backbone_feature_fn(
    name: str, level: str, size: int, model: FrozenSam
) -> Callable[[Any, Any], Any]:
    """``fn(image, embedded) -> (C, h, w)``: one level of a frozen backbone's features."""
    from prosam.backbones import build_backbone
    from prosam.backbones.features import backbone_features

    if level not in ("high", "mid0", "mid1"):
        raise InputError(f"level must be high, mid0 or mid1, got {level!r}")
    net = build_backbone(name).to(model.device)

    def features(image: Any, embedded: Any) -> Any:
        f = backbone_features(net, image, size)
        return (f.high if level == "high" else f.mid[int(level[-1])])[0]

    return features
