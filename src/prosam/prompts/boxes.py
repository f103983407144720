"""Box prompts: tight boxes from masks, IoU, and noisy boxes for robustness training.

Box convention: ``(x0, y0, x1, y1)`` in pixel units, **inclusive-exclusive**: the box covers
columns ``x0 <= x < x1`` and rows ``y0 <= y < y1``, so ``mask[y0:y1, x0:x1]`` is the box and its
width is ``x1 - x0``. For a mask, ``x1 = max_x + 1`` and ``y1 = max_y + 1``; a single pixel at
``(x, y)`` has the box ``(x, y, x + 1, y + 1)``. Noisy boxes have float coordinates, clipped
to ``[0, W] x [0, H]`` when the image size is known.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from prosam.errors import InputError
from prosam.prompts.arrays import RngLike, as_generator, as_mask

Box = tuple[float, float, float, float]
NoiseMode = Literal["corners", "cxcywh"]


def mask_to_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box ``(x0, y0, x1, y1)`` of the foreground of ``mask`` (``x1 = max_x + 1``).

    Raises:
        InputError: the mask is empty.
    """
    m = as_mask(mask)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        raise InputError("mask_to_box: the mask is empty (no foreground pixel), it has no box")
    cols = np.flatnonzero(m.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def box_to_mask(box: Box | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Fill ``box`` on an ``(H, W)`` canvas: pixels whose centre lies inside the box.

    Integer boxes fill exactly ``mask[y0:y1, x0:x1]``; float boxes are rounded to the nearest
    pixel edge first.
    """
    h, w = shape
    x0, y0, x1, y1 = (int(np.rint(v)) for v in np.asarray(box, dtype=np.float64).ravel())
    out = np.zeros((h, w), dtype=bool)
    out[max(y0, 0) : max(min(y1, h), 0), max(x0, 0) : max(min(x1, w), 0)] = True
    return out


def box_iou(a: Box | np.ndarray, b: Box | np.ndarray) -> float | np.ndarray:
    """Intersection over union of boxes (continuous areas, inclusive-exclusive convention).

    ``a`` and ``b`` are ``(..., 4)`` array-likes that broadcast against each other; two single
    boxes give a ``float``, otherwise an array of the broadcast shape. Boxes with
    ``x1 <= x0`` or ``y1 <= y0`` have zero area; the IoU of two zero-area boxes is 0.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape[-1:] != (4,) or b.shape[-1:] != (4,):
        raise InputError(f"boxes must have a last dimension of 4, got {a.shape} and {b.shape}")
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return float(iou) if iou.ndim == 0 else iou


def _as_box(box: Box | np.ndarray) -> np.ndarray:
    arr = np.asarray(box, dtype=np.float64)
    if arr.shape != (4,):
        raise InputError(f"a box must be 4 numbers (x0, y0, x1, y1), got shape {arr.shape}")
    if not (arr[2] > arr[0] and arr[3] > arr[1]):
        raise InputError(f"box {tuple(arr.tolist())} is empty: need x1 > x0 and y1 > y0")
    return arr


def _noisy_boxes(
    box: np.ndarray,
    u: np.ndarray,
    scale: np.ndarray,
    image_size: tuple[int, int] | None,
    mode: NoiseMode,
    min_size: float,
) -> np.ndarray:
    """Apply uniform noise ``u`` in ``[-1, 1)^(N, 4)`` times ``scale (N, 1)`` to ``box``."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    side = np.array([w, h, w, h])
    if mode == "corners":
        out = box[None, :] + u * scale * side[None, :]
    elif mode == "cxcywh":
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        ncx = cx + u[:, 0] * scale[:, 0] * w / 2
        ncy = cy + u[:, 1] * scale[:, 0] * h / 2
        nw = np.abs(w + u[:, 2] * scale[:, 0] * w)
        nh = np.abs(h + u[:, 3] * scale[:, 0] * h)
        out = np.stack([ncx - nw / 2, ncy - nh / 2, ncx + nw / 2, ncy + nh / 2], axis=1)
    else:
        raise InputError(f"mode must be 'corners' or 'cxcywh', got {mode!r}")
    # Corners may cross under strong noise: re-order them.
    out = np.concatenate(
        [np.minimum(out[:, :2], out[:, 2:]), np.maximum(out[:, :2], out[:, 2:])], axis=1
    )
    limits = [None, None] if image_size is None else [float(image_size[1]), float(image_size[0])]
    for axis in (0, 1):
        lo, hi = out[:, axis], out[:, axis + 2]
        limit = limits[axis]
        if limit is not None:
            lo, hi = np.clip(lo, 0.0, limit), np.clip(hi, 0.0, limit)
        # Keep at least ``min_size`` (clipping can squash a box against the border).
        small = hi - lo < min_size
        if small.any():
            c = (lo + hi) / 2
            new_lo = c - min_size / 2
            if limit is not None:
                new_lo = np.clip(new_lo, 0.0, max(limit - min_size, 0.0))
            lo = np.where(small, new_lo, lo)
            hi = np.where(small, new_lo + min_size, hi)
            if limit is not None:
                hi = np.minimum(hi, limit)
        out[:, axis], out[:, axis + 2] = lo, hi
    return out


def noisy_box(
    box: Box | np.ndarray,
    rng: RngLike,
    scale: float = 0.4,
    image_size: tuple[int, int] | None = None,
    *,
    mode: NoiseMode = "corners",
    min_size: float = 1.0,
) -> Box:
    """Perturb a box as HQ-SAM does for its box prompts (default noise scale 0.4).

    Modes:
        ``"corners"``: each coordinate moves by ``U(-1, 1) * scale * side``, where ``side`` is
        the box width for ``x0, x1`` and its height for ``y0, y1``.
        ``"cxcywh"``: HQ-SAM's ``box_noise``: the centre moves by up to ``scale * side / 2``
        and the width and height change by up to ``scale * side``.

    Corners that cross are swapped back; with ``image_size=(H, W)`` the box is clipped to
    ``[0, W] x [0, H]``; the result is at least ``min_size`` pixels on each side.

    Returns:
        ``(x0, y0, x1, y1)`` as floats.
    """
    if scale < 0:
        raise InputError(f"scale must be >= 0, got {scale}")
    gen = as_generator(rng)
    b = _as_box(box)
    u = gen.uniform(-1.0, 1.0, size=(1, 4))
    out = _noisy_boxes(b, u, np.array([[float(scale)]]), image_size, mode, min_size)[0]
    return tuple(float(v) for v in out)  # type: ignore[return-value]


def box_with_iou_in_range(
    mask_or_box: np.ndarray | Box,
    rng: RngLike,
    lo: float,
    hi: float,
    image_size: tuple[int, int] | None = None,
    max_tries: int = 2000,
    *,
    max_scale: float = 1.0,
    mode: NoiseMode = "corners",
) -> Box:
    """A noisy box whose IoU with the ground-truth box lies in ``[lo, hi)`` (Stable-SAM).

    Stable-SAM evaluates on box prompts of controlled quality; this draws candidates with
    :func:`noisy_box`-style noise at a scale drawn uniformly from ``[0, max_scale]`` per
    candidate and returns the first whose IoU with the ground truth falls in the range.
    ``hi >= 1`` includes IoU 1 (the exact box).

    Args:
        mask_or_box: ``(H, W)`` mask (its tight box is the ground truth and its shape the
            default ``image_size``) or an ``(x0, y0, x1, y1)`` box.
        rng: generator or int seed.
        lo, hi: the IoU range, ``0 <= lo < hi``.
        image_size: ``(H, W)`` to clip candidates to; ``None`` with a box leaves them unclipped.
        max_tries: how many candidates to draw at most.

    Raises:
        InputError: empty mask or box, or no candidate in range after ``max_tries``.
    """
    if not (0.0 <= lo < hi):
        raise InputError(f"need 0 <= lo < hi, got lo={lo}, hi={hi}")
    if lo >= 1.0:
        raise InputError(f"lo must be < 1 (IoU never exceeds 1), got {lo}")
    arr = np.asarray(mask_or_box)
    if arr.ndim == 2:
        gt = np.asarray(mask_to_box(arr), dtype=np.float64)
        if image_size is None:
            image_size = (arr.shape[0], arr.shape[1])
    else:
        gt = _as_box(arr)
    gen = as_generator(rng)
    batch = 256
    tried = 0
    while tried < max_tries:
        n = min(batch, max_tries - tried)
        scales = gen.uniform(0.0, max_scale, size=(n, 1))
        u = gen.uniform(-1.0, 1.0, size=(n, 4))
        cands = _noisy_boxes(gt, u, scales, image_size, mode, 1.0)
        ious = box_iou(cands, gt[None, :])
        ok = (ious >= lo) & ((ious < hi) | (hi >= 1.0))
        hits = np.flatnonzero(ok)
        if hits.size:
            return tuple(float(v) for v in cands[hits[0]])  # type: ignore[return-value]
        tried += n
    raise InputError(
        f"box_with_iou_in_range: no noisy box with IoU in [{lo}, {hi}) found in {max_tries} "
        f"tries for box {tuple(gt.tolist())}; widen the range, raise max_scale or max_tries"
    )
