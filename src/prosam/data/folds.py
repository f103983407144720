"""Few-shot segmentation folds: which classes are novel (held out) and which are base.

- PASCAL-5i: fold ``i`` holds VOC classes ``5i+1 .. 5i+5`` (contiguous; ids 1..20).
- COCO-20i: fold ``i`` holds classes ``{4k + i + 1 : k = 0..19}`` (interleaved, the split of
  FWB/PFENet/HSNet), with 1-based ids over the 80 categories in COCO category-id order.

:func:`fold_split` applies either scheme to any ordered list of class ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from prosam.errors import InputError

Scheme = Literal["interleaved", "contiguous"]

PASCAL_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
"""VOC class names; class id ``i`` is ``PASCAL_CLASSES[i - 1]``."""


def fold_split(
    class_ids_in_order: Sequence[int],
    fold: int,
    num_folds: int = 4,
    scheme: Scheme = "interleaved",
) -> tuple[list[int], list[int]]:
    """Split ordered class ids into ``(base, novel)`` for ``fold``; both keep the input order.

    ``interleaved``: novel = ids at positions ``j`` with ``j % num_folds == fold``.
    ``contiguous``: novel = the ``fold``-th of ``num_folds`` consecutive blocks; when the count
    does not divide evenly, blocks are cut at ``round(n * f / num_folds)``.
    """
    ids = [int(c) for c in class_ids_in_order]
    if len(set(ids)) != len(ids):
        raise InputError("fold_split: class ids are not unique")
    if num_folds < 1 or not 0 <= fold < num_folds:
        raise InputError(f"fold_split: fold {fold} is not in 0..{num_folds - 1}")
    if len(ids) < num_folds:
        raise InputError(f"fold_split: {len(ids)} classes cannot make {num_folds} folds")
    if scheme == "interleaved":
        novel_pos = set(range(fold, len(ids), num_folds))
    elif scheme == "contiguous":
        lo = round(len(ids) * fold / num_folds)
        hi = round(len(ids) * (fold + 1) / num_folds)
        novel_pos = set(range(lo, hi))
    else:
        raise InputError(f"fold_split: unknown scheme {scheme!r} (interleaved or contiguous)")
    base = [c for j, c in enumerate(ids) if j not in novel_pos]
    novel = [c for j, c in enumerate(ids) if j in novel_pos]
    return base, novel


def pascal5i_classes(fold: int) -> tuple[list[int], list[int]]:
    """``(base, novel)`` VOC class ids (1..20) of PASCAL-5i ``fold`` (0..3)."""
    return fold_split(range(1, 21), fold, 4, "contiguous")


def coco20i_classes(fold: int) -> tuple[list[int], list[int]]:
    """``(base, novel)`` 1-based COCO class indices (1..80) of COCO-20i ``fold`` (0..3)."""
    return fold_split(range(1, 81), fold, 4, "interleaved")
