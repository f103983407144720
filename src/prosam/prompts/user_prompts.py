"""Checking prompts a user typed: finite numbers, clicks on the image, boxes clipped to it.

Coordinates are pixels of the displayed image (EXIF orientation applied), ``x`` to the
right and ``y`` down; boxes are ``(x0, y0, x1, y1)`` with ``x0 <= x1`` and ``y0 <= y1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from prosam.errors import InputError


def check_finite(values: Sequence[float], what: str) -> None:
    """:class:`InputError` when one of ``values`` is NaN or infinite."""
    if not all(math.isfinite(float(v)) for v in values):
        raise InputError(f"{what} must be finite numbers, got {tuple(float(v) for v in values)}")


def check_points_inside(points: Sequence[Sequence[float]], size: tuple[int, int]) -> None:
    """:class:`InputError` for a click outside the ``(H, W)`` image (its edges included)."""
    h, w = size
    for point in points:
        x, y = float(point[0]), float(point[1])
        check_finite((x, y), "a point")
        if not (0 <= x <= w and 0 <= y <= h):
            raise InputError(f"point ({x:g}, {y:g}) is outside the {w}x{h} image")


def clip_box(
    box: Sequence[float], size: tuple[int, int]
) -> tuple[tuple[float, float, float, float], bool]:
    """``box`` clipped to the ``(H, W)`` image, and whether clipping changed it.

    A box that does not overlap the image (nor touch it from inside) is an
    :class:`InputError`, as is one with ``x1 < x0`` or ``y1 < y0``.
    """
    h, w = size
    x0, y0, x1, y1 = (float(v) for v in box)
    check_finite((x0, y0, x1, y1), "a box")
    if x1 < x0 or y1 < y0:
        raise InputError(f"a box needs x0<=x1 and y0<=y1, got {(x0, y0, x1, y1)}")
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        raise InputError(f"box {_text((x0, y0, x1, y1))} does not overlap the {w}x{h} image")
    clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h)))
    if clipped[2] - clipped[0] < 1.0 or clipped[3] - clipped[1] < 1.0:
        raise InputError(
            f"box {_text((x0, y0, x1, y1))} has no area in the {w}x{h} image: draw it around "
            "the object (x0,y0 top left, x1,y1 bottom right)"
        )
    return clipped, clipped != (x0, y0, x1, y1)


def clip_notice(
    what: str, box: Sequence[float], clipped: Sequence[float], size: tuple[int, int]
) -> str:
    """The one line that says a box was clipped."""
    h, w = size
    return f"{what} {_text(box)} clipped to the {w}x{h} image: {_text(clipped)}"


def _text(box: Sequence[float]) -> str:
    return ",".join(f"{float(v):g}" for v in box)
