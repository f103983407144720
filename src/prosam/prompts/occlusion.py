"""Synthetic occlusion: paste a random occluder over part of an object (robustness tests)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from prosam.errors import InputError
from prosam.prompts.arrays import (
    RngLike,
    as_float_range,
    as_generator,
    as_mask,
    require_foreground,
)

OccluderShape = Literal["ellipse", "rectangle"]
OccluderFill = Literal["patch", "noise", "color"]


def paste_occluder(
    image: np.ndarray,
    mask: np.ndarray,
    rng: RngLike,
    *,
    coverage: float | tuple[float, float] = (0.1, 0.4),
    shape: OccluderShape = "ellipse",
    fill: OccluderFill = "patch",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cover part of the object in ``mask`` with a random occluder.

    The occluder is an axis-aligned ellipse or rectangle centred on a random foreground
    pixel, of random aspect ratio (1:2 to 2:1), sized so that its area is ``coverage`` times
    the object's area (a fraction drawn from the range; the part of the object actually
    hidden is usually less, as the occluder also spills onto the background).

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` image of any dtype.
        mask: ``(H, W)`` boolean object mask.
        rng: generator or int seed.
        coverage: occluder area over object area, fixed or a ``(lo, hi)`` range.
        shape: ``"ellipse"`` or ``"rectangle"``.
        fill: ``"patch"`` copies the pixels of a same-sized region elsewhere in the image
            (a realistic texture), ``"noise"`` uniform random values, ``"color"`` one random
            colour. Random values span ``[0, 255]`` for integer images, ``[0, 1]`` otherwise.

    Returns:
        ``(occluded_image, visible_mask, occluder_mask)``: a new image, ``mask`` minus the
        occluder, and the occluder's own ``(H, W)`` mask.

    Raises:
        InputError: the mask is empty.
    """
    img = np.asarray(image)
    m = as_mask(mask)
    if img.shape[:2] != m.shape:
        raise InputError(f"image {img.shape[:2]} and mask {m.shape} sizes differ")
    require_foreground(m, "paste_occluder")
    lo, hi = as_float_range(coverage, "coverage")
    if shape not in ("ellipse", "rectangle"):
        raise InputError(f"shape must be 'ellipse' or 'rectangle', got {shape!r}")
    if fill not in ("patch", "noise", "color"):
        raise InputError(f"fill must be 'patch', 'noise' or 'color', got {fill!r}")
    gen = as_generator(rng)
    h, w = m.shape
    area = gen.uniform(lo, hi) * float(m.sum())
    aspect = math.exp(gen.uniform(math.log(0.5), math.log(2.0)))  # width / height
    if shape == "ellipse":
        area /= math.pi / 4
    oh = max(1.0, math.sqrt(area / aspect))
    ow = max(1.0, oh * aspect)
    ys, xs = np.nonzero(m)
    k = int(gen.integers(ys.size))
    cy, cx = float(ys[k]), float(xs[k])
    yy, xx = np.mgrid[0:h, 0:w]
    dy = (yy - cy) / (oh / 2)
    dx = (xx - cx) / (ow / 2)
    if shape == "ellipse":
        occ = dy * dy + dx * dx <= 1.0
    else:
        occ = (np.abs(dy) <= 1.0) & (np.abs(dx) <= 1.0)
    occ[int(cy), int(cx)] = True  # never empty, even when tiny

    out = img.copy()
    top = 255 if np.issubdtype(img.dtype, np.integer) else 1.0
    channels = img.shape[2:]
    if fill == "patch":
        oy0, ox0 = np.nonzero(occ.any(axis=1))[0][0], np.nonzero(occ.any(axis=0))[0][0]
        oy1, ox1 = np.nonzero(occ.any(axis=1))[0][-1] + 1, np.nonzero(occ.any(axis=0))[0][-1] + 1
        ph, pw = oy1 - oy0, ox1 - ox0
        sy = int(gen.integers(0, h - ph + 1))
        sx = int(gen.integers(0, w - pw + 1))
        patch = img[sy : sy + ph, sx : sx + pw]
        region = out[oy0:oy1, ox0:ox1]
        sel = occ[oy0:oy1, ox0:ox1]
        region[sel] = patch[sel]
    elif fill == "noise":
        vals = gen.uniform(0, top, size=(int(occ.sum()), *channels))
        out[occ] = vals.astype(img.dtype) if np.issubdtype(img.dtype, np.integer) else vals
    else:
        colour = gen.uniform(0, top, size=channels)
        out[occ] = colour.astype(img.dtype) if np.issubdtype(img.dtype, np.integer) else colour
    return out, m & ~occ, occ
