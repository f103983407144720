"""Backbone features of one image at a fixed square input size, and a cache for them.

Every method and trainer that reads a frozen backbone goes through
:class:`BackboneFeatureCache`: an in-memory LRU keyed by the image object (a method sees the
same reference and target arrays again and again), optionally backed by an on-disk
:class:`~prosam.sam.embedding_cache.EmbeddingCache` keyed by the pixels (training reads each
image once per epoch).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from prosam.backbones.base import Backbone, BackboneFeatures
from prosam.errors import InputError
from prosam.sam.embedding_cache import EmbeddingCache


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
        if memory_items < 0:
            raise InputError(f"memory_items must be >= 0, got {memory_items}")
        self.backbone = backbone
        self.size = size
        self.memory_items = memory_items
        self.disk = disk
        self.computed = 0
        self._memory: OrderedDict[int, tuple[np.ndarray, BackboneFeatures]] = OrderedDict()

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
        if not self.memory_items:
            return self._compute(image)
        hit = self._memory.get(id(image))
        if hit is not None and hit[0] is image:
            self._memory.move_to_end(id(image))
            return hit[1]
        features = self._compute(image)
        self._memory[id(image)] = (image, features)  # the array is held, so its id stays its own
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)
        return features
