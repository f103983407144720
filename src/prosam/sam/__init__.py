"""Frozen SAM: builders, weights, promptable prediction and the image-embedding cache."""

from prosam.sam.build import SAM_BUILDERS, build_sam
from prosam.sam.decode import decode_masks
from prosam.sam.embedding_cache import EmbeddingCache
from prosam.sam.model import FrozenSam, load_sam
from prosam.sam.predictor import ImageEmbedding, Prediction, Predictor
from prosam.sam.weights import WEIGHT_SOURCES, fetch_weights

__all__ = [
    "SAM_BUILDERS",
    "WEIGHT_SOURCES",
    "EmbeddingCache",
    "FrozenSam",
    "ImageEmbedding",
    "Prediction",
    "Predictor",
    "build_sam",
    "decode_masks",
    "fetch_weights",
    "load_sam",
]
