"""Backbone features of one image at a fixed square input size, and a cache for them.

Every method and trainer that reads a frozen backbone goes through
:class:`BackboneFeatureCache`: an in-memory LRU keyed by the image object (a method sees the
same reference and target arrays again and again), optionally backed by an on-disk
:class:`~prosam.sam.embedding_cache.EmbeddingCache` keyed by the pixels (training reads each
image once per epoch).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from prosam.backbones.base import Backbone, BackboneFeatures
from prosam.errors import InputError
from prosam.sam.embedding_cache import EmbeddingCache

T = TypeVar("T")


def image_to_backbone_input(image: np.ndarray, size: int, device: torch.device) -> Tensor:
    """An ``(H, W, 3) uint8`` image as a ``(1, 3, size, size)`` float tensor in ``[0, 1]``.

    VRP-SAM feeds its backbone square resized images; aspect ratio is not kept.
    """
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float()
    x = F.interpolate(x / 255.0, (size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp_(0.0, 1.0)


@torch.inference_mode()
def backbone_features(backbone: Backbone, image: np.ndarray, size: int) -> BackboneFeatures:
    """Backbone features of one image (batch of 1)."""
    device = next(backbone.parameters()).device
    return backbone(image_to_backbone_input(image, size, device))


def features_to_tensors(features: BackboneFeatures) -> dict[str, Tensor]:
    """For the on-disk feature cache."""
    return {"mid0": features.mid[0], "mid1": features.mid[1], "high": features.high}


def tensors_to_features(tensors: dict[str, Tensor]) -> BackboneFeatures:
    return BackboneFeatures((tensors["mid0"], tensors["mid1"]), tensors["high"])


def stack_features(items: list[BackboneFeatures]) -> BackboneFeatures:
    """Concatenate batch-1 features into one batch."""
    return BackboneFeatures(
        (torch.cat([f.mid[0] for f in items]), torch.cat([f.mid[1] for f in items])),
        torch.cat([f.high for f in items]),
    )


class ImageObjectLRU(Generic[T]):
    """Values computed per image *object*, the ``size`` most recently used kept (0: none).

    A method sees the same reference and target arrays again and again; the array is held
    with its value, so its ``id`` cannot be reused by another array while cached.
    """

    def __init__(self, size: int) -> None:
        if size < 0:
            raise InputError(f"memory_items must be >= 0, got {size}")
        self.size = size
        self._items: OrderedDict[int, tuple[np.ndarray, T]] = OrderedDict()

    def get_or_compute(self, image: np.ndarray, compute: Callable[[], T]) -> T:
        """The cached value of ``image``, or ``compute()`` (then cached)."""
        if not self.size:
            return compute()
        hit = self._items.get(id(image))
        if hit is not None and hit[0] is image:
            self._items.move_to_end(id(image))
            return hit[1]
        value = compute()
        self._items[id(image)] = (image, value)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value


class BackboneFeatureCache:
    """``cache(image) -> BackboneFeatures`` of ``backbone`` at ``size``, computed once.

    Args:
        memory_items: how many images' features are kept in memory (by object identity;
            0 turns the memory layer off).
        disk: an on-disk cache keyed by the image's pixels, consulted on a memory miss.
    """

    def __init__(
        self,
        backbone: Backbone,
        size: int,
        *,
        memory_items: int = 8,
        disk: EmbeddingCache | None = None,
    ) -> None:
        self.backbone = backbone
        self.size = size
        self.disk = disk
        self.computed = 0
        self._memory: ImageObjectLRU[BackboneFeatures] = ImageObjectLRU(memory_items)

    def _compute(self, image: np.ndarray) -> BackboneFeatures:
        if self.disk is None:
            self.computed += 1
            return backbone_features(self.backbone, image, self.size)

        def compute() -> tuple[dict[str, Tensor], dict]:
            self.computed += 1
            return features_to_tensors(backbone_features(self.backbone, image, self.size)), {}

        tensors, _ = self.disk.get_or_compute(image, compute)
        device = next(self.backbone.parameters()).device
        return tensors_to_features({k: v.to(device) for k, v in tensors.items()})

    def __call__(self, image: np.ndarray) -> BackboneFeatures:
        return self._memory.get_or_compute(image, lambda: self._compute(image))
