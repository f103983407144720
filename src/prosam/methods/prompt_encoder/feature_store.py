"""Frozen outputs computed once per image: SAM embeddings and backbone features (and,
for encoders that take their prior from another method, that method's target priors).

Training and validation read both from on-disk caches (the same :class:`EmbeddingCache`
format), so after the first epoch an epoch costs only prompt-encoder and decoder passes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from prosam.backbones.base import Backbone, BackboneFeatures
from prosam.backbones.features import BackboneFeatureCache
from prosam.data.types import Sample
from prosam.methods.prompt_encoder.method_prior import MethodPrior
from prosam.sam.embedding_cache import EmbeddingCache
from prosam.sam.predictor import ImageEmbedding, Predictor


class FeatureStore:
    """SAM embeddings and backbone features of images, cached on disk."""

    def __init__(
        self,
        predictor: Predictor,
        backbone: Backbone,
        backbone_input: int,
        cache_root: str | os.PathLike[str] | None,
        backbone_id: str,
        prior: MethodPrior | None = None,
    ) -> None:
        self.predictor = predictor
        self.prior = prior
        self.backbone = backbone
        self.backbone_input = backbone_input
        disk = (
            EmbeddingCache(Path(cache_root), f"{backbone_id}:{backbone_input}")
            if cache_root is not None
            else None
        )
        self.cache = BackboneFeatureCache(backbone, backbone_input, memory_items=0, disk=disk)

    def embedding(self, image: np.ndarray) -> ImageEmbedding:
        return self.predictor.embed(image)

    def features(self, image: np.ndarray) -> BackboneFeatures:
        return self.cache(image)

    def sample(self, sample: Sample) -> tuple[np.ndarray, ImageEmbedding, BackboneFeatures]:
        image = sample.image()
        return image, self.embedding(image), self.features(image)
