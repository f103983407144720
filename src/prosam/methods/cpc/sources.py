"""Where CPC-SAM's prompt sets come from, on support images (fit) and on targets (predict).

- :class:`SamPromptSource` (``prompt_source="sam"``): SAM's own point/box prompts.
  On a support image the M sets are random annotations of that image's own mask. On a
  target there is no mask, so the sets are drawn the same way from a *PerSAM-style location
  prior*: the cosine similarity of the target's SAM features with the entity's mean
  reference feature, min-max normalised over the image; the region is where it is
  ``>= prior_threshold`` (with ``prior_component``, the default, only its 8-connected
  component holding the best pixel) and negatives come from where it is
  ``<= 1 - prior_threshold``.
  With ``anchors`` (default) the first positive click of every clicked set is the prior's
  best pixel and the first negative its worst pixel (PerSAM's two clicks).
- :class:`EncoderPromptSource` (``prompt_source=<checkpoint>``): a reference encoder
  ``encode(reference, annotation, image) -> (1, Q, D)`` (a trained VRP / ProSAM model)
  applied to M random annotations of a reference. On support image i the annotations are
  drawn on reference ``(i + 1) mod k`` (on itself when k = 1); on a target, set m is drawn on
  reference ``m mod k``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from prosam.backbones.features import BackboneFeatureCache
from prosam.errors import InputError
from prosam.methods.base import Reference, Target
from prosam.methods.cpc.prompt_sets import (
    PromptSets,
    Recipe,
    encoder_prompt_sets,
    not_a_point_token,
    sam_prompt_sets,
)
from prosam.methods.similarity import (
    annotation_weights,
    cosine_similarity_map,
    feature_region,
    grid_map_to_image,
    masked_mean_feature,
    minmax_normalise,
)
from prosam.prompts.arrays import RngLike, as_generator
from prosam.sam.model import FrozenSam

#: ``encode(reference, annotation on the reference, image to prompt) -> (1, Q, D)``.
EncodeFn = Callable[[Reference, np.ndarray, np.ndarray], Tensor]


class PromptSource(Protocol):
    """Makes an entity's M prompt sets on its support images and on a target."""

    name: str

    def fit_entity(self, references: Sequence[Reference], masks: Sequence[np.ndarray]) -> Any: ...

    def support_sets(
        self,
        state: Any,
        references: Sequence[Reference],
        masks: Sequence[np.ndarray],
        index: int,
        recipes: Sequence[Recipe],
        rng: RngLike,
    ) -> PromptSets: ...

    def target_sets(
        self,
        state: Any,
        references: Sequence[Reference],
        masks: Sequence[np.ndarray],
        target: Target,
        recipes: Sequence[Recipe],
        rng: RngLike,
    ) -> tuple[PromptSets, dict[str, Tensor]]: ...

    def pad_token(self) -> Tensor | None: ...


class SamPromptSource:
    """SAM point/box prompts; on targets drawn from a location prior (module docstring)."""

    name = "sam"

    def __init__(
        self,
        sam: FrozenSam,
        *,
        max_positive: int = 5,
        max_negative: int = 1,
        prior_threshold: float = 0.7,
        anchors: bool = True,
        prior_component: bool = True,
        support: str = "mask",
    ) -> None:
        if not 0.0 < prior_threshold <= 1.0:
            raise InputError(f"prior_threshold must be in (0, 1], got {prior_threshold}")
        if support not in ("mask", "prior"):
            raise InputError(f"support must be 'mask' or 'prior', got {support!r}")
        self.support = support
        self.sam = sam
        self.max_positive = max_positive
        self.max_negative = max_negative
        self.prior_threshold = prior_threshold
        self.anchors = anchors
        self.prior_component = prior_component

    def pad_token(self) -> Tensor | None:
        return not_a_point_token(self.sam)

    @torch.no_grad()
    def fit_entity(self, references: Sequence[Reference], masks: Sequence[np.ndarray]) -> Tensor:
        """Each reference's mean feature inside its mask, ``(k, C)``; their mean is PerSAM's
        target embedding."""
        means = []
        for ref, mask in zip(references, masks, strict=True):
            g = ref.embedded.geometry
            feats = feature_region(ref.embedded.embedding, g).float()
            grid = (ref.embedded.embedding.shape[-2], ref.embedded.embedding.shape[-1])
            w = annotation_weights(mask, g, grid, "area").to(feats.device)
            means.append(masked_mean_feature(feats, w))
        return torch.stack(means)

    def support_sets(
        self,
        state: Any,
        references: Sequence[Reference],
        masks: Sequence[np.ndarray],
        index: int,
        recipes: Sequence[Recipe],
        rng: RngLike,
    ) -> PromptSets:
        """Random annotations of the reference's mask (``support="mask"``), or drawn from
        its similarity prior exactly as on a target (``support="prior"``; the prior uses
        the other references' mean feature, or its own when it is the only one)."""
        ref = references[index]
        if self.support == "prior":
            k = state.shape[0]
            others = [i for i in range(k) if i != index] or [index]
            target = Target(ref.image, ref.embedded)
            return self._prior_sets(state[others].mean(0), target, recipes, rng)[0]
        return sam_prompt_sets(
            self.sam,
            masks[index],
            ref.embedded.geometry,
            recipes,
            rng,
            max_positive=self.max_positive,
            max_negative=self.max_negative,
        )

    @torch.no_grad()
    def prior(self, vector: Tensor, target: Target) -> Tensor:
        """The min-max normalised similarity prior ``(H, W)`` in ``[0, 1]`` on the target."""
        emb = target.embedded.embedding
        sim = cosine_similarity_map(emb[0].float(), vector.float())
        return minmax_normalise(grid_map_to_image(sim, target.embedded.geometry)).cpu()

    def target_sets(
        self,
        state: Any,
        references: Sequence[Reference],
        masks: Sequence[np.ndarray],
        target: Target,
        recipes: Sequence[Recipe],
        rng: RngLike,
    ) -> tuple[PromptSets, dict[str, Tensor]]:
        vector = state if state.ndim == 1 else state.mean(0)
        return self._prior_sets(vector, target, recipes, rng)

    def _prior_sets(
        self, vector: Tensor, target: Target, recipes: Sequence[Recipe], rng: RngLike
    ) -> tuple[PromptSets, dict[str, Tensor]]:
        prior = self.prior(vector, target)
        p = prior.numpy()
        region = p >= self.prior_threshold
        best = int(np.argmax(p))
        worst = int(np.argmin(p))
        width = p.shape[1]
        if not region.any():  # only when the prior is constant
            region.flat[best] = True
        if self.prior_component:
            components, _ = ndimage.label(region, structure=np.ones((3, 3)))
            region = components == components.flat[best]
        background = p <= 1.0 - self.prior_threshold
        if not background.any():
            background = ~region
        pos = (float(best % width), float(best // width)) if self.anchors else None
        neg = (float(worst % width), float(worst // width)) if self.anchors else None
        sets = sam_prompt_sets(
            self.sam,
            region,
            target.embedded.geometry,
            recipes,
            rng,
            max_positive=self.max_positive,
            max_negative=self.max_negative,
            background=background,
            anchor_positive=pos,
            anchor_negative=neg,
        )
        return sets, {"similarity": prior}


class EncoderPromptSource:
    """Prompt sets from a reference encoder (module docstring)."""

    name = "encoder"

    def __init__(self, encode: EncodeFn) -> None:
        self.encode = encode

    def pad_token(self) -> Tensor | None:
        return None

    def fit_entity(self, references: Sequence[Reference], masks: Sequence[np.ndarray]) -> None:
        return None

    def support_sets(
        self,
        state: Any,
        references: Sequence[Reference],
        masks: Sequence[np.ndarray],
        index: int,
        recipes: Sequence[Recipe],
        rng: RngLike,
    ) -> PromptSets:
        j = (index + 1) % len(references)
        image = references[index].image
        return encoder_prompt_sets(
            lambda ann: self.encode(references[j], ann, image), masks[j], recipes, rng
        )

    def target_sets(
        self,
        state: Any,
        references: Sequence[Reference],
        masks: Sequence[np.ndarray],
        target: Target,
        recipes: Sequence[Recipe],
        rng: RngLike,
    ) -> tuple[PromptSets, dict[str, Tensor]]:
        gen = as_generator(rng)
        k = len(references)
        parts = []
        for m, recipe in enumerate(recipes):
            ref = references[m % k]
            parts.append(
                encoder_prompt_sets(
                    lambda ann, ref=ref: self.encode(ref, ann, target.image),
                    masks[m % k],
                    [recipe],
                    gen,
                )
            )
        tokens = torch.cat([s.tokens for s in parts])
        valid = torch.cat([s.valid for s in parts])
        return PromptSets(tokens, valid, list(recipes)), {}


def prompt_network_encoder(
    model: torch.nn.Module, backbone: torch.nn.Module, size: int
) -> EncodeFn:
    """An :data:`EncodeFn` from a trained VRP / ProSAM ``PromptNetwork`` (its mean prompts).

    Backbone features are cached per image object for the life of the function.
    """
    if getattr(model, "reads_sam_embedding", False) or getattr(model, "needs_method_prior", False):
        raise InputError(
            "this prompt encoder reads SAM's target embedding or another method's prior; "
            "CPC-SAM's sources need one that reads the backbone only"
        )
    features = BackboneFeatureCache(backbone, size, memory_items=64)  # type: ignore[arg-type]

    @torch.no_grad()
    def encode(reference: Reference, annotation: np.ndarray, image: np.ndarray) -> Tensor:
        device = next(model.parameters()).device
        ann = torch.from_numpy(annotation.astype(np.float32))[None, None].to(device)
        out = model.mean_prompts(features(reference.image), ann, features(image))  # type: ignore[operator]
        return out.clone()

    return encode
