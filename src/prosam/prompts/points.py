"""Point prompts: sampling foreground/background clicks, drawing them, and jittering them.

Coordinates are ``(x, y)`` pixel indices (``x`` the column, ``y`` the row), the order SAM's
``point_coords`` use, as ``(N, 2)`` arrays. Integer coordinates name the pixel ``mask[y, x]``.
"""

from __future__ import annotations

import numpy as np

from prosam.errors import InputError
from prosam.prompts.arrays import RngLike, as_generator, as_mask, stamp_disks


def random_points(
    mask: np.ndarray,
    n: int,
    rng: RngLike,
    positive: bool = True,
    *,
    replace: bool = False,
) -> np.ndarray:
    """Draw ``n`` pixels uniformly from the foreground (or the background) of ``mask``.

    Args:
        mask: ``(H, W)`` boolean mask (non-zero counts as foreground).
        n: number of points, ``>= 0``.
        rng: generator or int seed (see :data:`prosam.prompts.RngLike`).
        positive: ``True`` samples foreground pixels (positive clicks), ``False`` background
            pixels (negative clicks).
        replace: sample with replacement. Without it (the default) the points are distinct
            and asking for more points than there are candidate pixels is an error.

    Returns:
        ``(n, 2)`` ``int64`` array of ``(x, y)`` coordinates.

    Raises:
        InputError: there is no candidate pixel (empty mask for ``positive=True``, a mask
            covering the whole image for ``positive=False``), or ``n`` exceeds their number
            while ``replace`` is false.
    """
    m = as_mask(mask)
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    side = "foreground" if positive else "background"
    ys, xs = np.nonzero(m if positive else ~m)
    if ys.size == 0:
        raise InputError(f"random_points: the mask has no {side} pixel to sample a point from")
    if not replace and n > ys.size:
        raise InputError(
            f"random_points: asked for {n} distinct {side} points but the mask has only "
            f"{ys.size} {side} pixels (pass replace=True to allow repeats)"
        )
    gen = as_generator(rng)
    idx = gen.choice(ys.size, size=n, replace=replace)
    return np.stack([xs[idx], ys[idx]], axis=1).astype(np.int64)


def sample_points(mask: np.ndarray, n: int, rng: RngLike) -> np.ndarray:
    """``n`` distinct foreground pixels of ``mask`` as an ``(n, 2)`` ``(x, y)`` array.

    Shorthand for ``random_points(mask, n, rng, positive=True)``; see :func:`random_points`.
    """
    return random_points(mask, n, rng, positive=True)


def sample_point_prompts(
    mask: np.ndarray,
    rng: RngLike,
    *,
    num_positive: int = 1,
    num_negative: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """SAM-style click prompts: positive clicks on the object, negative ones off it.

    Returns:
        ``(coords, labels)``: ``(N, 2)`` ``float32`` ``(x, y)`` coordinates (positives first)
        and ``(N,)`` ``int64`` labels, 1 for positive and 0 for negative, as
        ``SamPredictor.predict(point_coords=..., point_labels=...)`` takes them.
    """
    gen = as_generator(rng)
    pos = random_points(mask, num_positive, gen, positive=True)
    neg = (
        random_points(mask, num_negative, gen, positive=False)
        if num_negative
        else np.zeros((0, 2), dtype=np.int64)
    )
    coords = np.concatenate([pos, neg]).astype(np.float32)
    labels = np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)])
    return coords, labels


def draw_points(
    points: np.ndarray,
    shape: tuple[int, int],
    radius: int = 0,
    *,
    clip_to: np.ndarray | None = None,
) -> np.ndarray:
    """Rasterise ``(x, y)`` points as disks of ``radius`` pixels on an ``(H, W)`` canvas.

    ``radius=0`` marks single pixels; radius ``r`` marks the pixels within Euclidean distance
    ``r`` of the point (a ``(2r+1)``-wide digital disk). Points are rounded to the nearest
    pixel; disks are cut at the image border and, when ``clip_to`` is given, to that mask.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    xy = np.rint(pts).astype(np.int64)
    out = stamp_disks(tuple(shape), xy[:, 1], xy[:, 0], int(radius))
    if clip_to is not None:
        out &= as_mask(clip_to, "clip_to")
    return out


def jitter_points(
    points: np.ndarray,
    rng: RngLike,
    sigma: float,
    image_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Move each ``(x, y)`` point by isotropic Gaussian noise of std ``sigma`` pixels.

    Simulates imprecise clicks. With ``image_size=(H, W)`` the result is clipped to
    ``[0, W-1] x [0, H-1]``. Returns a ``float64`` ``(N, 2)`` array.
    """
    if sigma < 0:
        raise InputError(f"sigma must be >= 0, got {sigma}")
    gen = as_generator(rng)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    out = pts + gen.normal(0.0, sigma, size=pts.shape) if sigma > 0 else pts.copy()
    if image_size is not None:
        h, w = image_size
        out[:, 0] = np.clip(out[:, 0], 0, w - 1)
        out[:, 1] = np.clip(out[:, 1], 0, h - 1)
    return out
