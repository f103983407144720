"""Feature/annotation alignment on SAM's padded grid, and the similarity maps built on it.

SAM embeds an image resized (longest side = ``image_size``) and zero-padded to a square, so
its ``(1, C, h', w')`` embedding covers the padded square: only the top-left
``input_size / image_size`` fraction of the grid is the image. Every method that compares
reference and target features goes through this module, so that a reference annotation
lands on the feature cells that actually see it and similarity maps come back to the
original image the way SAM's own masks do:

- :func:`annotation_to_feature_grid`: an ``(H, W)`` annotation resized to the model-input
  size, padded like the image, and pooled onto the padded feature grid;
- :func:`feature_region` / :func:`crop_region`: the grid cells covering the unpadded image
  (every cell that sees at least one image pixel, so the last row/column may be partial);
- :func:`grid_map_to_image` / :func:`region_map_to_image`: a feature-resolution map back to
  the original image size with :func:`prosam.sam.transforms.postprocess_logits`;
- :func:`masked_mean_feature`, :func:`cosine_similarity_map`, :func:`prior_mask`: the
  similarity tools of PerSAM (target embedding) and PFENet (prior mask);
- :class:`FeatureProvider`: a dense feature extractor together with how annotations align
  with its grid and how its maps go back to the image; :class:`SamEmbeddingFeatures` (the
  SAM embedding crop) is the default, :class:`CallableFeatures` wraps any
  ``features(image, embedded) -> (C, h, w)`` function whose grid spans the whole image.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from prosam.errors import InputError
from prosam.prompts import downsample_annotation
from prosam.sam.predictor import ImageEmbedding
from prosam.sam.transforms import ImageGeometry, postprocess_logits

#: Small constant of the cosine and min-max normalisations (PFENet's 1e-7).
EPS = 1e-7

PoolMode = Literal["max", "area"]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def region_size(geometry: ImageGeometry, grid: tuple[int, int]) -> tuple[int, int]:
    """``(h, w)``: how many cells of the padded ``grid = (h', w')`` cover the unpadded image.

    A cell counts when it sees any image pixel: ``ceil(input_size * grid / image_size)``.
    """
    gh, gw = (int(v) for v in grid)
    s = int(geometry.image_size)
    h = min(gh, max(1, _ceil_div(int(geometry.input_size[0]) * gh, s)))
    w = min(gw, max(1, _ceil_div(int(geometry.input_size[1]) * gw, s)))
    return h, w


def crop_region(x: torch.Tensor, geometry: ImageGeometry) -> torch.Tensor:
    """Crop a ``(..., h', w')`` map on the padded grid to the cells covering the image."""
    h, w = region_size(geometry, (x.shape[-2], x.shape[-1]))
    return x[..., :h, :w]


def feature_region(embedding: torch.Tensor, geometry: ImageGeometry) -> torch.Tensor:
    """The ``(C, h, w)`` part of a padded ``(1, C, h', w')`` SAM embedding covering the image."""
    if embedding.ndim == 4:
        if embedding.shape[0] != 1:
            raise InputError(f"expected one embedding (1, C, h, w), got {tuple(embedding.shape)}")
        embedding = embedding[0]
    if embedding.ndim != 3:
        raise InputError(f"expected a (1, C, h, w) embedding, got {tuple(embedding.shape)}")
    return crop_region(embedding, geometry)


def _check_annotation(
    annotation: np.ndarray | torch.Tensor, geometry: ImageGeometry
) -> torch.Tensor:
    t = (
        annotation
        if isinstance(annotation, torch.Tensor)
        else torch.from_numpy(np.ascontiguousarray(annotation))
    )
    if t.ndim != 2:
        raise InputError(f"an annotation must be a 2-D (H, W) array, got {tuple(t.shape)}")
    if tuple(t.shape) != tuple(geometry.original_size):
        raise InputError(
            f"annotation of size {tuple(t.shape)} does not match its image of size "
            f"{tuple(geometry.original_size)}"
        )
    return t.detach().to("cpu", torch.float32)


def annotation_to_feature_grid(
    annotation: np.ndarray | torch.Tensor,
    geometry: ImageGeometry,
    grid: tuple[int, int],
    mode: PoolMode = "area",
) -> torch.Tensor:
    """Bring an ``(H, W)`` annotation onto SAM's padded ``grid = (h', w')`` of feature cells.

    The annotation follows the image: resized to ``geometry.input_size`` (adaptive pooling,
    so single marked pixels survive even when SAM's input is smaller than the image),
    zero-padded at the bottom and right to ``image_size`` squared, then pooled onto the grid
    with :func:`prosam.prompts.downsample_annotation`: ``"max"`` marks every cell touching
    the annotation, ``"area"`` gives the fraction of the cell that is marked.

    Returns:
        A ``(h', w')`` ``float32`` CPU tensor; the cells outside :func:`region_size` are 0.

    Raises:
        InputError: the annotation is not 2-D or not of the image's size.
    """
    if mode not in ("max", "area"):
        raise InputError(f"mode must be 'max' or 'area', got {mode!r}")
    t = _check_annotation(annotation, geometry)[None, None]
    ih, iw = (int(v) for v in geometry.input_size)
    pool = F.adaptive_max_pool2d if mode == "max" else F.adaptive_avg_pool2d
    resized = pool(t, (ih, iw))
    s = int(geometry.image_size)
    padded = F.pad(resized, (0, s - iw, 0, s - ih))
    return downsample_annotation(padded[0, 0], (int(grid[0]), int(grid[1])), mode)


def annotation_weights(
    annotation: np.ndarray | torch.Tensor,
    geometry: ImageGeometry,
    grid: tuple[int, int],
    mode: PoolMode = "area",
) -> torch.Tensor:
    """:func:`annotation_to_feature_grid` cropped like :func:`feature_region`: ``(h, w)``."""
    return crop_region(annotation_to_feature_grid(annotation, geometry, grid, mode), geometry)


def grid_map_to_image(values: torch.Tensor, geometry: ImageGeometry) -> torch.Tensor:
    """A ``(h', w')`` map on the padded grid at the original image size ``(H, W)``, as SAM
    post-processes its low-resolution mask logits (bilinear, crop the padding, bilinear)."""
    x = values.to(torch.float32).reshape(1, 1, *values.shape[-2:])
    return postprocess_logits(x, geometry)[0, 0]


def region_map_to_image(
    values: torch.Tensor, geometry: ImageGeometry, grid: tuple[int, int]
) -> torch.Tensor:
    """A ``(h, w)`` map on the image cells (:func:`crop_region`) at the original size.

    The map is put back on the padded ``grid`` by replicating its last row and column (so the
    padding does not bleed into the image border), then upsampled by
    :func:`grid_map_to_image`.
    """
    gh, gw = (int(v) for v in grid)
    h, w = values.shape[-2:]
    x = values.to(torch.float32).reshape(1, 1, h, w)
    x = F.pad(x, (0, gw - w, 0, gh - h), mode="replicate") if (h, w) != (gh, gw) else x
    return grid_map_to_image(x[0, 0], geometry)


def _check_features(features: torch.Tensor, name: str = "features") -> None:
    if features.ndim != 3:
        raise InputError(f"{name} must be (C, h, w), got {tuple(features.shape)}")


def masked_mean_feature(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean ``(C,)`` of ``(C, h, w)`` features: ``sum(f * w) / (sum(w) + eps)``."""
    _check_features(features)
    if tuple(weights.shape) != tuple(features.shape[-2:]):
        raise InputError(
            f"weights {tuple(weights.shape)} do not match features {tuple(features.shape)}"
        )
    w = weights.to(features.device, features.dtype)
    return (features * w).sum(dim=(-2, -1)) / (w.sum() + EPS)


def cosine_similarity_map(features: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``(h, w)`` of every ``(C, h, w)`` feature with a ``(C,)`` vector."""
    _check_features(features)
    if vector.shape != features.shape[:1]:
        raise InputError(f"vector {tuple(vector.shape)} does not match features' channels")
    f = F.normalize(features.to(torch.float32), dim=0, eps=EPS)
    v = F.normalize(vector.to(features.device, torch.float32), dim=0, eps=EPS)
    return torch.einsum("chw,c->hw", f, v)


def foreground_features(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The ``(N, C)`` features of the cells where ``weights > 0``."""
    _check_features(features)
    if tuple(weights.shape) != tuple(features.shape[-2:]):
        raise InputError(
            f"weights {tuple(weights.shape)} do not match features {tuple(features.shape)}"
        )
    keep = (weights > 0).to(features.device)
    return features[:, keep].T


def max_foreground_similarity(
    target_features: torch.Tensor,
    reference_features: torch.Tensor,
    reference_weights: torch.Tensor,
) -> torch.Tensor:
    """For each target cell, its highest cosine similarity to a reference foreground cell.

    The raw (unnormalised) PFENet correlation, ``(h, w)`` over the target grid.

    Raises:
        InputError: no reference cell has a positive weight.
    """
    _check_features(target_features, "target_features")
    bank = foreground_features(reference_features, reference_weights)
    if bank.shape[0] == 0:
        raise InputError("the reference annotation covers no feature cell (it is empty)")
    if bank.shape[1] != target_features.shape[0]:
        raise InputError(
            f"reference features have {bank.shape[1]} channels, target {target_features.shape[0]}"
        )
    c, h, w = target_features.shape
    q = F.normalize(target_features.reshape(c, h * w).to(torch.float32), dim=0, eps=EPS)
    s = F.normalize(bank.to(q.device, torch.float32), dim=1, eps=EPS)
    return (s @ q).amax(dim=0).reshape(h, w)


def minmax_normalise(values: torch.Tensor) -> torch.Tensor:
    """``(x - min) / (max - min + eps)``: a map to ``[0, 1]`` (all 0 when it is constant)."""
    lo, hi = values.min(), values.max()
    return (values - lo) / (hi - lo + EPS)


def prior_mask(
    target_features: torch.Tensor,
    reference_features: torch.Tensor,
    reference_weights: torch.Tensor,
) -> torch.Tensor:
    """PFENet's prior mask ``(h, w)`` in ``[0, 1]``.

    For each target position the highest cosine similarity to the reference features where
    the reference annotation is positive, min-max normalised over the target image.
    """
    return minmax_normalise(
        max_foreground_similarity(target_features, reference_features, reference_weights)
    )


class FeatureProvider:
    """Dense features of an image, and how annotations and maps align with them.

    Subclasses implement :meth:`features`. The defaults of :meth:`annotation_weights` and
    :meth:`to_image` assume the ``(C, h, w)`` grid spans exactly the original image (as for
    a backbone run on the resized, unpadded image); :class:`SamEmbeddingFeatures` overrides
    them for SAM's padded grid.
    """

    #: Whether :meth:`features` reads SAM's embedding (if not, a geometry-only
    #: :class:`ImageEmbedding` does, and no image encoder run is needed).
    reads_sam_embedding: bool = True

    def features(self, image: np.ndarray, embedded: ImageEmbedding) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, image: np.ndarray, embedded: ImageEmbedding) -> torch.Tensor:
        feats = self.features(image, embedded)
        _check_features(feats)
        return feats

    def annotation_weights(
        self,
        annotation: np.ndarray,
        embedded: ImageEmbedding,
        size: tuple[int, int],
        mode: PoolMode = "area",
    ) -> torch.Tensor:
        """The annotation pooled onto the ``size = (h, w)`` feature grid."""
        t = _check_annotation(annotation, embedded.geometry)
        return downsample_annotation(t, size, mode)

    def to_image(self, values: torch.Tensor, embedded: ImageEmbedding) -> torch.Tensor:
        """A ``(h, w)`` feature-grid map bilinearly resized to the original ``(H, W)``."""
        x = values.to(torch.float32).reshape(1, 1, *values.shape[-2:])
        size = embedded.geometry.original_size
        return F.interpolate(x, size, mode="bilinear", align_corners=False)[0, 0]


class SamEmbeddingFeatures(FeatureProvider):
    """SAM's own image embedding, cropped to the cells covering the image (the default)."""

    def features(self, image: np.ndarray, embedded: ImageEmbedding) -> torch.Tensor:
        return feature_region(embedded.embedding, embedded.geometry)

    def annotation_weights(
        self,
        annotation: np.ndarray,
        embedded: ImageEmbedding,
        size: tuple[int, int],
        mode: PoolMode = "area",
    ) -> torch.Tensor:
        grid = tuple(embedded.embedding.shape[-2:])
        out = annotation_weights(annotation, embedded.geometry, grid, mode)  # type: ignore[arg-type]
        if tuple(out.shape) != tuple(size):
            raise InputError(f"features of size {tuple(size)} are not SAM's image region")
        return out

    def to_image(self, values: torch.Tensor, embedded: ImageEmbedding) -> torch.Tensor:
        grid = tuple(embedded.embedding.shape[-2:])
        return region_map_to_image(values, embedded.geometry, grid)  # type: ignore[arg-type]


class CallableFeatures(FeatureProvider):
    """Wrap ``fn(image, embedded) -> (C, h, w)`` whose grid spans the whole original image."""

    def __init__(self, fn: Callable[[np.ndarray, ImageEmbedding], torch.Tensor]) -> None:
        self.fn = fn

    def features(self, image: np.ndarray, embedded: ImageEmbedding) -> torch.Tensor:
        return self.fn(image, embedded)


FeaturesLike = FeatureProvider | Callable[[np.ndarray, ImageEmbedding], torch.Tensor] | None


def as_feature_provider(features: FeaturesLike) -> FeatureProvider:
    """``None`` → :class:`SamEmbeddingFeatures`; a plain callable → :class:`CallableFeatures`."""
    if features is None:
        return SamEmbeddingFeatures()
    if isinstance(features, FeatureProvider):
        return features
    if callable(features):
        return CallableFeatures(features)
    raise InputError(f"features must be a FeatureProvider, a callable or None, not {features!r}")
