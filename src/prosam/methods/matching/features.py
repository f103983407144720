"""Dense semantic features for patch matching: a frozen ImageNet backbone's stages, each
upsampled to the finest chosen stride and L2-normalised, concatenated, optionally fused
with SAM's own embedding.

The image is resized (aspect ratio kept, no padding) so its longest side is ``input_size``,
so the feature grid spans exactly the original image (the :class:`FeatureProvider` default
for annotations and maps). Every level is normalised and the concatenation scaled by
``1 / sqrt(total weight)``, so the cosine of two concatenated cells is the weighted mean of
the levels' cosines. Features are computed once per image object (in memory) and, with a
cache directory, once per image (on disk, keyed by the pixels, the backbone, the levels,
the size and :data:`PREPROCESS_VERSION`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from prosam.backbones import build_backbone
from prosam.backbones.base import Backbone
from prosam.backbones.features import ImageObjectLRU
from prosam.backbones.runtimes import BackboneRunner, open_backbone
from prosam.errors import InputError
from prosam.methods.similarity import FeatureProvider, feature_region
from prosam.sam.embedding_cache import EmbeddingCache
from prosam.sam.predictor import ImageEmbedding

PREPROCESS_VERSION = "longest-side-v1"
LEVELS = ("mid0", "mid1", "high")


def aspect_preserving_input(image: np.ndarray, longest: int, device: torch.device) -> torch.Tensor:
    """An ``(H, W, 3) uint8`` image as ``(1, 3, h, w)`` floats in ``[0, 1]`` with
    ``max(h, w) = longest`` (antialiased bilinear)."""
    h, w = image.shape[:2]
    scale = longest / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float()
    x = F.interpolate(x / 255.0, size, mode="bilinear", align_corners=False, antialias=True)
    return x.clamp_(0.0, 1.0)


def finest_size(maps: Sequence[torch.Tensor]) -> tuple[int, int]:
    """The ``(h, w)`` of the ``(C, h, w)`` map with the most cells."""
    h, w = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
    return int(h), int(w)


def resized(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A ``(C, h, w)`` map bilinearly resized to ``size`` (itself when already that size)."""
    if tuple(m.shape[-2:]) == size:
        return m
    return F.interpolate(m[None], size, mode="bilinear", align_corners=False)[0]


class SemanticFeatures(FeatureProvider):
    """Backbone stages (and optionally SAM's embedding) as one ``(C, h, w)`` feature map.

    Args:
        backbone: a backbone name (``efficientnet_lite0``, ``efficientnet_lite2``,
            ``dinov2_vits14``, ...) or a built :class:`Backbone`.
        levels: which of the backbone's ``mid0`` (stride 8), ``mid1`` (stride 16) and
            ``high`` (stride 32) outputs to use; the grid is the finest one's.
        input_size: the longest side the image is resized to.
        sam_weight: weight of SAM's (image-region) embedding in the fusion; 0 leaves it out.
        flip: also run the backbone on the mirrored image and average each level with the
            mirrored result before normalising (test-time augmentation; twice the backbone
            time).
        extra_sizes: more longest sides the backbone also reads the image at; each level
            is summed over the sizes on the ``input_size`` grid before normalising
            (multi-scale test-time augmentation).
        backbone_weights: a weights file for the backbone (default: its published weights).
        backend: what runs the backbone: ``torch``, ``onnxruntime``, ``openvino`` or
            ``auto`` (:func:`prosam.backbones.runtimes.open_backbone`; the exported graph is
            checked against PyTorch, and its features share the caches).
        cache_dir: an on-disk cache directory (``None``: memory only).
    """

    def __init__(
        self,
        backbone: str | Backbone = "efficientnet_lite0",
        *,
        levels: Sequence[str] = ("mid1", "high"),
        input_size: int = 512,
        sam_weight: float = 0.0,
        flip: bool = False,
        extra_sizes: Sequence[int] = (),
        backbone_weights: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
        memory_items: int = 16,
        backend: str = "torch",
    ) -> None:
        levels = tuple(levels)
        if not levels or any(level not in LEVELS for level in levels):
            raise InputError(f"levels must be a non-empty subset of {LEVELS}, got {levels}")
        if input_size < 32:
            raise InputError(f"input_size must be at least 32, got {input_size}")
        if sam_weight < 0:
            raise InputError(f"sam_weight must be >= 0, got {sam_weight}")
        if isinstance(backbone, str):
            backbone = build_backbone(backbone, weights=backbone_weights)
        self.backbone = backbone.to(device)
        self.backend = backend
        self._runner: BackboneRunner | None = None  # opened on first use (may export)
        self.levels = levels
        self.input_size = int(input_size)
        self.sam_weight = float(sam_weight)
        self.flip = bool(flip)
        self.extra_sizes = tuple(int(v) for v in extra_sizes)
        if any(v < 32 for v in self.extra_sizes):
            raise InputError(f"extra_sizes must be at least 32, got {self.extra_sizes}")
        self._memory: ImageObjectLRU[torch.Tensor] = ImageObjectLRU(memory_items)
        identity = f"{backbone.name}:{','.join(levels)}:{input_size}:{PREPROCESS_VERSION}"
        identity += ":flip" if self.flip else ""
        identity += "".join(f":+{v}" for v in self.extra_sizes)
        #: What determines the features (not the runtime: every backend's agree, checked).
        self.identity = identity + (f":sam{self.sam_weight:g}" if self.sam_weight else "")
        self.disk = EmbeddingCache(Path(cache_dir), identity) if cache_dir is not None else None

    @property
    def reads_sam_embedding(self) -> bool:  # type: ignore[override]
        return self.sam_weight > 0

    def backbone_grid(self, image: np.ndarray) -> torch.Tensor:
        """The backbone part: ``(C, h, w)``, each level normalised, scaled ``1/sqrt(n)``."""
        if self.disk is None:
            return self._compute(image)

        def compute() -> tuple[dict[str, torch.Tensor], dict]:
            return {"features": self._compute(image).to(torch.float16)}, {}

        tensors, _ = self.disk.get_or_compute(image, compute)
        return tensors["features"].to(next(self.backbone.parameters()).device, torch.float32)

    @torch.inference_mode()
    def _levels_at(self, image: np.ndarray, longest: int) -> list[torch.Tensor]:
        """The chosen levels' raw ``(C, h, w)`` maps for the image resized to ``longest``
        (averaged with the mirrored image's, mirrored back, with ``flip``)."""
        device = next(self.backbone.parameters()).device
        x = aspect_preserving_input(image, longest, device)
        if self._runner is None:
            self._runner = open_backbone(self.backbone, self.backend)
        out = self._runner(torch.cat([x, x.flip(-1)]) if self.flip else x)
        by_name = {"mid0": out.mid[0], "mid1": out.mid[1], "high": out.high}
        maps = [by_name[level].float().to(device) for level in self.levels]
        return [(m[0] + m[1].flip(-1)) / 2 if self.flip else m[0] for m in maps]

    @torch.inference_mode()
    def _compute(self, image: np.ndarray) -> torch.Tensor:
        maps = self._levels_at(image, self.input_size)
        size = finest_size(maps)
        sums = [resized(m, size) for m in maps]
        for longest in self.extra_sizes:
            more = self._levels_at(image, longest)
            sums = [a + resized(m, size) for a, m in zip(sums, more, strict=True)]
        return torch.cat([F.normalize(m, dim=0) for m in sums]) / math.sqrt(len(sums))

    def features(self, image: np.ndarray, embedded: ImageEmbedding) -> torch.Tensor:
        grid = self._memory.get_or_compute(image, lambda: self.backbone_grid(image))
        if self.sam_weight == 0:
            return grid
        sam = feature_region(embedded.embedding, embedded.geometry).float().to(grid.device)
        sam = F.interpolate(sam[None], grid.shape[-2:], mode="bilinear", align_corners=False)[0]
        n = len(self.levels)
        fused = torch.cat([grid * math.sqrt(n), F.normalize(sam, dim=0) * self.sam_weight])
        return fused / math.sqrt(n + self.sam_weight**2)


class JoinedFeatures(FeatureProvider):
    """Several providers' unit-norm feature maps concatenated on the finest one's grid and
    scaled ``1 / sqrt(n)``, so a cell's cosine is the mean of the providers' cosines (an
    ensemble of backbones)."""

    def __init__(self, providers: Sequence[FeatureProvider]) -> None:
        if len(providers) < 2:
            raise InputError("JoinedFeatures needs at least two providers")
        self.providers = list(providers)
        self.reads_sam_embedding = any(p.reads_sam_embedding for p in self.providers)
        identities = [getattr(p, "identity", None) for p in self.providers]
        #: What determines the features (None when a provider cannot say).
        self.identity = None if None in identities else "+".join(map(str, identities))

    def features(self, image: np.ndarray, embedded: ImageEmbedding) -> torch.Tensor:
        maps = [p(image, embedded) for p in self.providers]
        size = finest_size(maps)
        maps = [m if m.shape[-2:] == size else F.normalize(resized(m, size), dim=0) for m in maps]
        return torch.cat(maps) / math.sqrt(len(maps))


def semantic_features(
    backbone: str,
    *,
    levels: Sequence[str] = ("mid1", "high"),
    flip: bool = False,
    extra_sizes: Sequence[int] = (),
    device: str | torch.device = "cpu",
    backend: str = "torch",
) -> FeatureProvider:
    """:class:`SemanticFeatures` of ``backbone``, or :class:`JoinedFeatures` of several when
    ``backbone`` joins names with ``+`` (``"efficientnet_lite0+efficientnet_lite2"``)."""
    names = [n.strip() for n in backbone.split("+")]
    if not all(names):
        raise InputError(f"backbone: empty name in {backbone!r}")
    providers = [
        SemanticFeatures(
            n, levels=levels, flip=flip, extra_sizes=extra_sizes, device=device, backend=backend
        )
        for n in names
    ]
    return providers[0] if len(providers) == 1 else JoinedFeatures(providers)
