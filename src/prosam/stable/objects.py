"""Object masks for Stable-SAM training and robustness evaluation.

prosam's datasets give per-class masks (the union of a class's instances in an image, crowd
regions as ``ignore``). Stable-SAM works on objects: either each class mask as one object or,
with ``split_components=True``, each 8-connected component of it (an approximation of
instances: touching instances merge, occluded ones may split).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from prosam.data.types import Dataset

__all__ = ["ObjectItem", "dataset_objects", "object_masks"]

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class ObjectItem:
    """One object: ``(H, W, 3) uint8`` image, ``(H, W)`` bool mask, optional ignore mask."""

    image: np.ndarray
    mask: np.ndarray
    ignore: np.ndarray | None = None
    key: str = ""


def object_masks(
    mask: np.ndarray, *, split_components: bool = False, min_pixels: int = 1
) -> list[np.ndarray]:
    """The class mask itself, or its 8-connected components, with ``>= min_pixels`` pixels."""
    mask = np.asarray(mask, dtype=bool)
    if not split_components:
        return [mask] if int(mask.sum()) >= max(min_pixels, 1) else []
    labels, n = ndimage.label(mask, structure=_EIGHT)
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    return [labels == i for i in range(1, n + 1) if sizes[i] >= max(min_pixels, 1)]


def dataset_objects(
    dataset: Dataset,
    *,
    split_components: bool = False,
    min_pixels: int = 1,
    max_objects: int | None = None,
) -> Iterator[ObjectItem]:
    """Objects of every sample and usable class, in dataset order (loaded lazily).

    Objects of one image share its image array, so :func:`evaluate_robustness` embeds each
    image once.
    """
    count = 0
    for sample in dataset:
        image: np.ndarray | None = None
        for class_id in sorted(sample.classes):
            fg, ignore = sample.mask(class_id)
            for k, m in enumerate(
                object_masks(fg, split_components=split_components, min_pixels=min_pixels)
            ):
                if max_objects is not None and count >= max_objects:
                    return
                if image is None:
                    image = sample.image()
                yield ObjectItem(image, m, ignore, f"{sample.key}#{class_id}.{k}")
                count += 1
