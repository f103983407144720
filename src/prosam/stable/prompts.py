"""Prompt kinds of Stable-SAM's robustness protocol and of its robust training strategy (RTS).

A kind names how a prompt is drawn from an object mask:

- ``gt_box``: the tight box of the mask (``x1 = max_x + 1``, prosam's box convention);
- ``noisy_box`` / ``noisy_box_<scale>``: HQ-SAM's box noise (``mode="cxcywh"``, scale 0.4 by
  default), clipped to the image;
- ``box_iou_<lo>_<hi>``: a noisy box whose IoU with the tight box is in ``[lo, hi)``
  (Stable-SAM's N-Box 0.5-0.6 / 0.6-0.7, :func:`prosam.prompts.box_with_iou_in_range`);
- ``points_<n>``: ``n`` positive points drawn uniformly from the mask (with replacement only
  when the mask has fewer than ``n`` pixels).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from prosam.errors import InputError
from prosam.prompts import box_iou, box_with_iou_in_range, mask_to_box, noisy_box, random_points

__all__ = [
    "DEFAULT_NOISE_SCALE",
    "ROBUSTNESS_KINDS",
    "Prompt",
    "check_kind",
    "noisy_box_with_min_iou",
    "sample_prompt",
]

DEFAULT_NOISE_SCALE = 0.4
ROBUSTNESS_KINDS: tuple[str, ...] = (
    "gt_box",
    "noisy_box",
    "box_iou_0.5_0.6",
    "box_iou_0.6_0.7",
    "points_1",
    "points_3",
    "points_5",
    "points_10",
)

_NOISY = re.compile(r"^noisy_box(?:_(\d+(?:\.\d+)?))?$")
_IOU = re.compile(r"^box_iou_(\d+(?:\.\d+)?)_(\d+(?:\.\d+)?)$")
_POINTS = re.compile(r"^points_(\d+)$")


@dataclass(frozen=True)
class Prompt:
    """A SAM prompt in original-image pixels: ``(N, 2)`` xy points with labels, or a box."""

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None

    def key(self) -> bytes:
        """Bytes identifying the prompt (equal prompts give equal keys)."""
        parts = [
            b"-" if a is None else np.ascontiguousarray(a, dtype=np.float64).tobytes()
            for a in (self.points, self.labels, self.box)
        ]
        return b"|".join(parts)


def check_kind(kind: str) -> str:
    """Validate a prompt kind name; returns it."""
    if kind == "gt_box":
        return kind
    if _NOISY.match(kind):
        return kind
    m = _IOU.match(kind)
    if m:
        lo, hi = float(m.group(1)), float(m.group(2))
        if not 0.0 <= lo < hi or lo >= 1.0:
            raise InputError(f"{kind}: need 0 <= lo < hi and lo < 1")
        return kind
    m = _POINTS.match(kind)
    if m:
        if int(m.group(1)) < 1:
            raise InputError(f"{kind}: need at least one point")
        return kind
    raise InputError(
        f"unknown prompt kind {kind!r}; use gt_box, noisy_box[_<scale>], box_iou_<lo>_<hi> "
        "or points_<n>"
    )


def noisy_box_with_min_iou(
    box: tuple[float, float, float, float] | np.ndarray,
    rng: np.random.Generator,
    scale: float,
    image_size: tuple[int, int],
    min_iou: float = 0.0,
    max_tries: int = 100,
) -> np.ndarray:
    """HQ-SAM noisy box (``cxcywh``) redrawn until its IoU with ``box`` is ``>= min_iou``.

    After ``max_tries`` misses the candidate with the highest IoU is returned.
    """
    best, best_iou = None, -1.0
    for _ in range(max(1, max_tries)):
        cand = np.asarray(noisy_box(box, rng, scale, image_size, mode="cxcywh"))
        iou = float(box_iou(cand, box))
        if iou >= min_iou:
            return cand
        if iou > best_iou:
            best, best_iou = cand, iou
    assert best is not None
    return best


def sample_prompt(
    kind: str, mask: np.ndarray, rng: np.random.Generator, *, min_iou: float = 0.0
) -> Prompt:
    """Draw one prompt of ``kind`` for the non-empty ``(H, W)`` object ``mask``.

    ``min_iou`` applies to ``noisy_box`` kinds only (RTS keeps noisy boxes with IoU >= 0.5
    with the ground truth; the evaluation protocol does not filter).

    Raises:
      InputError: unknown kind, empty mask, or no box in the IoU range.
    """
    h, w = mask.shape
    gt = np.asarray(mask_to_box(mask), dtype=np.float64)
    if kind == "gt_box":
        return Prompt(box=gt)
    m = _NOISY.match(kind)
    if m:
        scale = DEFAULT_NOISE_SCALE if m.group(1) is None else float(m.group(1))
        return Prompt(box=noisy_box_with_min_iou(gt, rng, scale, (h, w), min_iou))
    m = _IOU.match(kind)
    if m:
        lo, hi = float(m.group(1)), float(m.group(2))
        return Prompt(box=np.asarray(box_with_iou_in_range(gt, rng, lo, hi, (h, w))))
    m = _POINTS.match(kind)
    if m:
        n = int(m.group(1))
        pts = random_points(mask, n, rng, replace=n > int(np.count_nonzero(mask)))
        return Prompt(points=pts.astype(np.float64), labels=np.ones(n, dtype=np.int64))
    check_kind(kind)  # raises
    raise AssertionError(kind)  # pragma: no cover
