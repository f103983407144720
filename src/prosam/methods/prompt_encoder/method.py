"""VRP-SAM / ProSAM at inference: ``fit(references)`` then ``predict(target)``.

k references are combined as VRP-SAM's Table 7 does: each reference yields its own prompts
for the target, and the k prompt sets are concatenated into one sparse prompt of k·Q tokens.
ProSAM predicts with the mean prompt by default (the paper's inference); ``strategy`` picks
one of its five K-sample strategies instead, and ``uncertainty=True`` adds a per-pixel
uncertainty map computed from K samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from prosam.backbones.base import Backbone, BackboneFeatures
from prosam.backbones.features import BackboneFeatureCache
from prosam.errors import InputError
from prosam.methods.base import MethodOutput, Reference, Target
from prosam.methods.capabilities import PROMPT_NOISE, UNCERTAINTY
from prosam.methods.prompt_encoder.anchors import anchor_prompts
from prosam.methods.prompt_encoder.method_prior import MethodPrior, matcher_prior
from prosam.methods.prompt_encoder.network import (
    PromptNetwork,
    decode_prompt_logits,
)
from prosam.methods.prompt_encoder.variational import (
    PromptDistribution,
    combine_samples,
    sample_prompts,
    uncertainty_map,
)
from prosam.sam.model import FrozenSam


class PromptEncoderMethod:
    """A trained VRP or ProSAM prompt encoder used as a :class:`ReferenceMethod`."""

    def __init__(
        self,
        sam: FrozenSam,
        backbone: Backbone,
        model: PromptNetwork,
        *,
        strategy: str = "mean_prompt",
        samples: int = 10,
        uncertainty: bool = False,
        seed: int = 0,
        features: Callable[[np.ndarray], BackboneFeatures] | None = None,
        prior: MethodPrior | None = None,
    ) -> None:
        self.sam = sam
        self.backbone = backbone
        self.model = model.eval()
        self.config = model.config
        self.name = self.config.method
        self.capabilities = (
            frozenset({PROMPT_NOISE, UNCERTAINTY})
            if self.config.method == "prosam"
            else frozenset({PROMPT_NOISE})
        )
        self.strategy = strategy
        self.samples = samples
        self.uncertainty = uncertainty
        self.seed = seed
        self._features = features or BackboneFeatureCache(backbone, self.config.backbone_input)
        self._refs: list[tuple[BackboneFeatures, Tensor]] = []
        self._references: list[Reference] = []
        self.prior = prior
        if model.needs_method_prior and prior is None:
            self.prior = matcher_prior(sam, memory=0)
        if self.config.method != "prosam" and (strategy != "mean_prompt" or uncertainty):
            raise InputError("sampling strategies and uncertainty need a ProSAM model")

    @torch.inference_mode()
    def fit(self, references: Sequence[Reference]) -> None:
        if not references:
            raise InputError("fit needs at least one reference")
        refs = []
        for ref in references:
            if not ref.annotation.any():
                raise InputError("a reference annotation is empty")
            ann = torch.from_numpy(ref.annotation.astype(np.float32))[None, None]
            refs.append((self._features(ref.image), ann.to(self.sam.device)))
        self._refs = refs
        self._references = list(references)

    @torch.inference_mode()
    def predict(
        self,
        target: Target,
        *,
        prompt_noise: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        """Segment ``target``. ``prompt_noise`` > 0 adds ``N(0, prompt_noise^2)`` noise to
        every element of the deterministic prompt (VRP's, ProSAM's mean) before decoding, to
        measure robustness (drawn with ``generator``)."""
        if not self._refs:
            raise RuntimeError("call fit(references) before predict")
        tgt = self._features(target.image)
        grid = (int(tgt.mid[0].shape[-2]), int(tgt.mid[0].shape[-1]))
        tgt_sam = self.model.target_value_map(self.sam, target.embedded, grid)
        if tgt_sam is not None:
            tgt_sam = tgt_sam.to(tgt.mid[0])
        tgt_prior = None
        if self.prior is not None and self.model.needs_method_prior:
            tgt_prior = self.prior(self._references, target, grid).to(tgt.mid[0])
        outputs = [self.model(ref, ann, tgt, tgt_sam, tgt_prior) for ref, ann in self._refs]
        anchors = None
        if self.config.anchor_points:
            assert tgt_prior is not None  # such a model needs a method prior
            geometry = target.embedded.geometry
            anchors = anchor_prompts(self.sam, tgt_prior, [geometry], self.config.anchor_points)
        anchored = self.model.with_anchors
        embedding = target.embedded.embedding
        extras: dict[str, Tensor] = {}
        if prompt_noise < 0:
            raise InputError(f"prompt_noise must be >= 0, got {prompt_noise}")
        if prompt_noise > 0:
            if self.strategy != "mean_prompt":
                raise InputError("prompt_noise perturbs the mean prompt: use strategy mean_prompt")
            prompts = torch.cat(
                [o.mu if isinstance(o, PromptDistribution) else o for o in outputs], dim=1
            )
            noise = torch.randn(prompts.shape, generator=generator).to(prompts)
            logits, iou = decode_prompt_logits(
                self.sam, embedding, anchored((prompts + prompt_noise * noise)[None], anchors)
            )
            return MethodOutput(logits[0, 0], float(iou[0, 0]), extras)
        if isinstance(outputs[0], PromptDistribution):
            mean = torch.cat([o.mu for o in outputs], dim=1)
            need_samples = self.strategy != "mean_prompt" or self.uncertainty
            if need_samples:
                samples = anchored(self._samples(outputs), anchors)  # (K, 1, A + kQ, D)
                sample_logits, _ = decode_prompt_logits(self.sam, embedding, samples)
                if self.uncertainty:
                    extras["uncertainty"] = uncertainty_map(sample_logits)[0, 0]
            mean = anchored(mean[None], anchors)
            if self.strategy == "mean_prompt":
                logits, iou = decode_prompt_logits(self.sam, embedding, mean)
                return MethodOutput(logits[0, 0], float(iou[0, 0]), extras)
            combined = combine_samples(sample_logits, self.strategy)  # type: ignore[arg-type]
            _, iou = decode_prompt_logits(self.sam, embedding, mean)
            return MethodOutput(combined[0], float(iou[0, 0]), extras)
        prompts = anchored(torch.cat(outputs, dim=1)[None], anchors)
        logits, iou = decode_prompt_logits(self.sam, embedding, prompts)
        return MethodOutput(logits[0, 0], float(iou[0, 0]), extras)

    def _samples(self, outputs: list[PromptDistribution]) -> Tensor:
        c = self.config
        generator = torch.Generator(device=outputs[0].mu.device).manual_seed(self.seed)
        parts = [
            sample_prompts(
                o,
                self.samples,
                family=c.family,
                nu=c.nu,  # type: ignore[arg-type]
                n_mode=c.n_mode,
                generator=generator,
            )  # type: ignore[arg-type]
            for o in outputs
        ]
        return torch.cat(parts, dim=2)
