"""A target prior made by another reference method: its class mask as a soft map.

With ``pseudo_mask_source="matcher"`` the VRP / ProSAM encoder takes its target prior from
the training-free matcher instead of a cosine map of backbone features: the probability
(sigmoid of the low-res logits) of the matcher's class mask, over the image only, resized
to the backbone's square grid (which spans the whole image, as the mask does).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from prosam.methods.base import Reference, ReferenceMethod, Target
from prosam.methods.matching.method import FastMatcherMethod
from prosam.methods.similarity import FeaturesLike, crop_region
from prosam.sam.model import FrozenSam

#: Pseudo-mask sources that come from another method rather than from backbone features.
METHOD_PRIOR_SOURCES = ("matcher",)


def mask_prior(low_res_logits: Tensor, target: Target, grid: tuple[int, int]) -> Tensor:
    """``(1, 1, h, w)``: a method's ``(1, H', W')`` low-res logits over the padded input as a
    probability map over the image, resized to ``grid``."""
    region = crop_region(low_res_logits.float(), target.embedded.geometry)
    return F.interpolate(
        torch.sigmoid(region)[None], size=grid, mode="bilinear", align_corners=False
    )


class MethodPrior:
    """``prior(references, target, grid)``: a reference method's class mask as a prior.

    ``key``: when given, results are remembered under it (training draws the same
    reference-target pairs again in later epochs). The method is fitted again only when
    ``references`` is another object than the last call's, so a caller that passes the
    same list for every target (:class:`PromptEncoderMethod`) fits it once.
    """

    def __init__(self, method: ReferenceMethod, *, memory: int = 8192) -> None:
        self.method = method
        self.memory = memory
        self._cache: dict[Hashable, Tensor] = {}
        self._fitted: Sequence[Reference] | None = None

    @torch.no_grad()  # not inference mode: training reads the prior beside autograd
    def __call__(
        self,
        references: Sequence[Reference],
        target: Target,
        grid: tuple[int, int],
        key: Hashable | None = None,
    ) -> Tensor:
        remember = key is not None and self.memory > 0
        if remember and key in self._cache:
            return self._cache[key]
        if references is not self._fitted:
            self.method.fit(references)
            self._fitted = references
        prior = mask_prior(self.method.predict(target).low_res_logits, target, grid)
        if remember:
            if len(self._cache) >= self.memory:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = prior
        return prior


def matcher_prior(
    sam: FrozenSam, *, features: FeaturesLike = None, memory: int = 8192
) -> MethodPrior:
    """The ``matcher`` prior: ``matcher_fast`` (the features the bundled encoders were trained
    with), except that it does not zoom into targets (``zoom_target=0``), which would cost
    an image encoder run per prior."""
    return MethodPrior(FastMatcherMethod(sam, features=features, zoom_target=0), memory=memory)
