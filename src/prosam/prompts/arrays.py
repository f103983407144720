"""Shared helpers for the prompt simulators: random generators, mask checks, disk stamping."""

from __future__ import annotations

from typing import Any

import numpy as np

from prosam.errors import InputError

#: What every simulator accepts as its source of randomness: a ``numpy.random.Generator``
#: (used as is, so successive calls advance it), an ``int`` seed (a fresh generator seeded
#: with it, so the call is reproducible on its own), or ``None`` (fresh OS entropy, not
#: reproducible).
RngLike = np.random.Generator | int | None


def as_generator(rng: RngLike) -> np.random.Generator:
    """Return ``rng`` as a ``numpy.random.Generator`` (see :data:`RngLike`)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, int | np.integer):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, not {type(rng)}")


def as_mask(mask: Any, name: str = "mask") -> np.ndarray:
    """Return ``mask`` as a 2-D boolean array (non-zero is foreground); torch tensors work too."""
    if hasattr(mask, "detach"):  # torch.Tensor, without importing torch here
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise InputError(f"{name} must be a 2-D (H, W) array, got shape {arr.shape}")
    return arr if arr.dtype == bool else arr != 0


def require_foreground(mask: np.ndarray, what: str) -> None:
    """Raise :class:`InputError` if ``mask`` has no foreground pixel."""
    if not mask.any():
        raise InputError(
            f"{what}: the mask is empty (no foreground pixel), so there is no object to "
            "annotate; drop empty masks before simulating prompts"
        )


def as_int_range(value: int | tuple[int, int], name: str, minimum: int = 0) -> tuple[int, int]:
    """Normalise ``value`` (an int or an inclusive ``(lo, hi)`` pair) to ``(lo, hi)``."""
    if isinstance(value, int | np.integer):
        lo = hi = int(value)
    else:
        try:
            lo, hi = (int(v) for v in value)
        except (TypeError, ValueError) as err:
            raise InputError(f"{name} must be an int or a (lo, hi) pair, got {value!r}") from err
    if lo < minimum or hi < lo:
        raise InputError(f"{name} must satisfy {minimum} <= lo <= hi, got {value!r}")
    return lo, hi


def as_float_range(
    value: float | tuple[float, float], name: str, minimum: float = 0.0
) -> tuple[float, float]:
    """Normalise ``value`` (a float or a ``(lo, hi)`` pair) to ``(lo, hi)``."""
    if isinstance(value, int | float | np.integer | np.floating):
        lo = hi = float(value)
    else:
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError) as err:
            raise InputError(f"{name} must be a number or a (lo, hi) pair, got {value!r}") from err
    if not (minimum <= lo <= hi):
        raise InputError(f"{name} must satisfy {minimum} <= lo <= hi, got {value!r}")
    return lo, hi


def draw_int(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    """Draw an int uniformly from the inclusive range ``bounds`` (no draw if it is one value)."""
    lo, hi = bounds
    return lo if lo == hi else int(rng.integers(lo, hi + 1))


def disk_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """``(dy, dx)`` offsets of the pixels of a digital disk: ``dy² + dx² <= radius²``."""
    r = int(radius)
    if r < 0:
        raise InputError(f"radius must be >= 0, got {radius}")
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy * dy + dx * dx <= r * r
    return dy[keep], dx[keep]


def stamp_disks(shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray, radius: int) -> np.ndarray:
    """Boolean ``shape`` canvas with a disk of ``radius`` around each ``(ys[i], xs[i])``.

    Disks are cut at the image border. ``radius=0`` marks the single pixels.
    """
    h, w = shape
    canvas = np.zeros((h, w), dtype=bool)
    ys = np.asarray(ys, dtype=np.int64).ravel()
    xs = np.asarray(xs, dtype=np.int64).ravel()
    if ys.size == 0:
        return canvas
    if radius == 0:
        ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        canvas[ys[ok], xs[ok]] = True
        return canvas
    # Stamp each distinct centre once: dense centre lines repeat pixels a lot.
    centres = np.unique(np.stack([ys, xs], axis=1), axis=0)
    ys, xs = centres[:, 0], centres[:, 1]
    for dy, dx in zip(*disk_offsets(radius), strict=True):
        yy = ys + dy
        xx = xs + dx
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        canvas[yy[ok], xx[ok]] = True
    return canvas


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion of ``mask`` by a disk of ``radius`` (outside the image is background)."""
    if radius <= 0:
        return mask.copy()
    h, w = mask.shape
    pad = np.pad(mask, radius, constant_values=False)
    out = mask.copy()
    for dy, dx in zip(*disk_offsets(radius), strict=True):
        out &= pad[radius + dy : radius + dy + h, radius + dx : radius + dx + w]
    return out
