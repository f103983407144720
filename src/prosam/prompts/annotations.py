"""Simulated reference annotations (point, scribble, box, mask), as in VRP-SAM and SEEM.

VRP-SAM annotates the reference image with one of four kinds of visual prompt, all made
from the ground-truth mask:

- ``"point"``: ``N`` random foreground pixels (VRP-SAM trains with ``N`` drawn from 1..20
  and tests with 20), each drawn as a disk of radius ``point_radius`` (0 = the pixel itself);
- ``"scribble"``: a few random smooth strokes inside the object, of random brush width;
- ``"box"``: the tight bounding box of the mask, filled;
- ``"mask"``: the mask itself.

Every simulator returns an ``(H, W)`` boolean annotation and is deterministic given a
``numpy.random.Generator`` or an int seed. The annotation is usually much finer than the
feature map it conditions; reduce it with :func:`downsample_annotation` (``mode="max"``
or ``"area"``) so that single points and thin scribbles are not lost.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import numpy as np

from prosam.errors import InputError
from prosam.prompts.arrays import (
    RngLike,
    as_float_range,
    as_generator,
    as_int_range,
    as_mask,
    draw_int,
    erode,
    require_foreground,
    stamp_disks,
)
from prosam.prompts.boxes import mask_to_box
from prosam.prompts.points import random_points

if TYPE_CHECKING:
    import torch

AnnotationKind = Literal["point", "scribble", "box", "mask"]
#: The four annotation kinds, in VRP-SAM's order.
ANNOTATION_KINDS: tuple[AnnotationKind, ...] = ("point", "scribble", "box", "mask")
DownsampleMode = Literal["max", "area", "nearest"]

# Turning angles tried, smallest first, when a stroke would leave the object.
_TURNS = np.deg2rad(np.arange(15, 181, 15, dtype=np.float64))


def simulate_points(
    mask: np.ndarray,
    rng: RngLike,
    *,
    num_points: int | tuple[int, int] = (1, 20),
    point_radius: int = 0,
    clip_to_mask: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Point annotation: random foreground pixels drawn as small disks.

    Args:
        mask: ``(H, W)`` boolean ground-truth mask.
        rng: generator or int seed.
        num_points: a fixed count, or an inclusive ``(lo, hi)`` range to draw the count from
            uniformly (default ``(1, 20)``, VRP-SAM's training range; it tests with 20). The
            count is capped at the number of foreground pixels; points are distinct.
        point_radius: disk radius in pixels; 0 (default) marks only the sampled pixel, ``r``
            marks the pixels within Euclidean distance ``r``.
        clip_to_mask: cut the disks to the mask, so every marked pixel is foreground.

    Returns:
        ``(annotation, points)``: the ``(H, W)`` boolean annotation and the ``(N, 2)``
        ``int64`` ``(x, y)`` point coordinates.

    Raises:
        InputError: the mask is empty.
    """
    m = as_mask(mask)
    require_foreground(m, "simulate_points")
    bounds = as_int_range(num_points, "num_points", minimum=1)
    gen = as_generator(rng)
    n = min(draw_int(gen, bounds), int(m.sum()))
    pts = random_points(m, n, gen, positive=True)
    ann = stamp_disks(m.shape, pts[:, 1], pts[:, 0], int(point_radius))
    if clip_to_mask:
        ann &= m
    return ann, pts


def _stroke(
    m: np.ndarray,
    gen: np.random.Generator,
    start: np.ndarray,
    length: int,
    kappa_max: float,
) -> np.ndarray:
    """Centre line of one smooth stroke: a unit-step walk whose pixels all lie in ``m``.

    The heading turns by a curvature that itself random-walks (bounded by ``kappa_max``), so
    the path is smooth; when the next step would leave the object the walk turns by the
    smallest angle (15° steps, random side first) that keeps it inside, and stops if none does.
    """
    h, w = m.shape
    y, x = float(start[0]), float(start[1])
    theta = gen.uniform(0.0, 2 * math.pi)
    kappa = 0.0
    steps = np.empty((length + 1, 2), dtype=np.int64)
    steps[0] = (int(start[0]), int(start[1]))
    noise = gen.normal(0.0, kappa_max / 4, size=length)
    sides = gen.choice([-1.0, 1.0], size=length)
    count = 1

    def inside(yy: float, xx: float) -> bool:
        iy, ix = round(yy), round(xx)
        return 0 <= iy < h and 0 <= ix < w and bool(m[iy, ix])

    for i in range(length):
        kappa = min(max(kappa + noise[i], -kappa_max), kappa_max)
        theta += kappa
        ny, nx = y + math.sin(theta), x + math.cos(theta)
        if not inside(ny, nx):
            for turn in _TURNS:
                moved = False
                for side in (sides[i], -sides[i]):
                    t = theta + side * turn
                    ty, tx = y + math.sin(t), x + math.cos(t)
                    if inside(ty, tx):
                        theta, ny, nx, moved = t, ty, tx, True
                        break
                if moved:
                    break
            else:
                break
            kappa = 0.0
        y, x = ny, nx
        steps[count] = (round(y), round(x))
        count += 1
    return steps[:count]


def simulate_scribble(
    mask: np.ndarray,
    rng: RngLike,
    *,
    num_strokes: int | tuple[int, int] = (1, 3),
    brush_radius: int | tuple[int, int] = (1, 3),
    stroke_length: float | tuple[float, float] = (0.2, 0.8),
    smoothness: float = 8.0,
    clip_to_mask: bool = True,
) -> np.ndarray:
    """Scribble annotation: a few random smooth strokes drawn inside the object.

    Each stroke starts at a random foreground pixel and walks in unit steps with a smoothly
    varying heading, turning away from the object's border so that its centre line stays on
    the object (it follows rings, L shapes and thin parts). It is drawn with a round brush;
    the walk keeps to the mask eroded by the brush radius where that is not empty, so the
    brush rarely needs clipping.

    Args:
        mask: ``(H, W)`` boolean ground-truth mask.
        rng: generator or int seed.
        num_strokes: fixed count or inclusive ``(lo, hi)`` range (default 1 to 3).
        brush_radius: brush radius in pixels, fixed or an inclusive ``(lo, hi)`` range drawn
            once per stroke (default 1 to 3, i.e. 3 to 7 pixels wide); 0 is a 1-pixel line.
        stroke_length: stroke length as a fraction of the diagonal of the mask's box, fixed
            or a ``(lo, hi)`` range drawn per stroke (default 0.2 to 0.8). Strokes stop early
            when trapped (e.g. in a tiny object).
        smoothness: the tightest turning radius, as ``diagonal / smoothness``; larger values
            allow curlier strokes.
        clip_to_mask: cut the brush to the mask, so every scribble pixel is foreground (the
            centre line always is).

    Returns:
        ``(H, W)`` boolean annotation, never empty.

    Raises:
        InputError: the mask is empty.
    """
    m = as_mask(mask)
    require_foreground(m, "simulate_scribble")
    strokes = as_int_range(num_strokes, "num_strokes", minimum=1)
    radii = as_int_range(brush_radius, "brush_radius", minimum=0)
    lengths = as_float_range(stroke_length, "stroke_length")
    if smoothness <= 0:
        raise InputError(f"smoothness must be > 0, got {smoothness}")
    gen = as_generator(rng)
    x0, y0, x1, y1 = mask_to_box(m)
    diag = math.hypot(x1 - x0, y1 - y0)
    kappa_max = min(smoothness / diag, 0.5)
    ann = np.zeros(m.shape, dtype=bool)
    tracks: dict[int, np.ndarray] = {}
    for _ in range(draw_int(gen, strokes)):
        length = max(1, round(gen.uniform(*lengths) * diag))
        radius = draw_int(gen, radii)
        if radius not in tracks:
            # Walk where the whole brush fits, when the object is wide enough for it.
            inner = erode(m, radius)
            tracks[radius] = inner if inner.any() else m
        track = tracks[radius]
        start = random_points(track, 1, gen)[0, ::-1]  # (y, x)
        line = _stroke(track, gen, start, length, kappa_max)
        ann |= stamp_disks(m.shape, line[:, 0], line[:, 1], radius)
    if clip_to_mask:
        ann &= m
    return ann


def simulate_annotation(
    mask: np.ndarray,
    kind: AnnotationKind,
    rng: RngLike,
    *,
    num_points: int | tuple[int, int] = (1, 20),
    point_radius: int = 0,
    num_strokes: int | tuple[int, int] = (1, 3),
    brush_radius: int | tuple[int, int] = (1, 3),
    stroke_length: float | tuple[float, float] = (0.2, 0.8),
    clip_to_mask: bool = True,
) -> np.ndarray:
    """Simulate a user's reference annotation of the object in ``mask``.

    Args:
        mask: ``(H, W)`` boolean ground-truth mask (non-zero is foreground).
        kind: ``"point"`` (see :func:`simulate_points`), ``"scribble"`` (see
            :func:`simulate_scribble`), ``"box"`` (the tight box of the mask, filled; see
            :func:`prosam.prompts.mask_to_box`) or ``"mask"`` (a copy of the mask).
        rng: generator or int seed (unused for ``"box"`` and ``"mask"``).
        num_points, point_radius: for ``"point"``.
        num_strokes, brush_radius, stroke_length: for ``"scribble"``.
        clip_to_mask: for ``"point"`` and ``"scribble"``: keep marked pixels on the object.

    Returns:
        ``(H, W)`` boolean annotation. For ``"point"`` and ``"scribble"`` (with
        ``clip_to_mask``) it is a non-empty subset of the mask.

    Raises:
        InputError: the mask is empty.
        ValueError: unknown ``kind``.
    """
    m = as_mask(mask)
    if kind == "point":
        return simulate_points(
            m, rng, num_points=num_points, point_radius=point_radius, clip_to_mask=clip_to_mask
        )[0]
    if kind == "scribble":
        return simulate_scribble(
            m,
            rng,
            num_strokes=num_strokes,
            brush_radius=brush_radius,
            stroke_length=stroke_length,
            clip_to_mask=clip_to_mask,
        )
    if kind == "box":
        require_foreground(m, "simulate_annotation(kind='box')")
        bx0, by0, bx1, by1 = mask_to_box(m)
        out = np.zeros(m.shape, dtype=bool)
        out[by0:by1, bx0:bx1] = True
        return out
    if kind == "mask":
        require_foreground(m, "simulate_annotation(kind='mask')")
        return m.copy()
    raise InputError(f"kind must be one of {ANNOTATION_KINDS}, got {kind!r}")


def random_kind(
    rng: RngLike,
    kinds: tuple[AnnotationKind, ...] = ANNOTATION_KINDS,
    p: tuple[float, ...] | None = None,
) -> AnnotationKind:
    """Draw an annotation kind (uniformly by default, or with probabilities ``p``).

    VRP-SAM trains with a kind drawn at random per episode.
    """
    if not kinds:
        raise InputError("kinds must not be empty")
    bad = [k for k in kinds if k not in ANNOTATION_KINDS]
    if bad:
        raise InputError(f"unknown annotation kinds {bad}; expected a subset of {ANNOTATION_KINDS}")
    gen = as_generator(rng)
    return kinds[int(gen.choice(len(kinds), p=p))]


def downsample_annotation(
    ann: np.ndarray | torch.Tensor,
    size: tuple[int, int],
    mode: DownsampleMode = "max",
) -> np.ndarray | torch.Tensor:
    """Reduce an annotation to feature resolution ``size = (h, w)`` without losing it.

    Modes:
        ``"max"``: adaptive max pooling: a cell is 1 if any pixel in it is marked, so single
        points and 1-pixel scribbles survive as whole cells.
        ``"area"``: adaptive average pooling: the fraction of the cell that is marked (a lone
        pixel in an 8x8 cell gives 1/64, small but non-zero).
        ``"nearest"``: nearest-neighbour sampling, one pixel per cell; shown for comparison,
        it drops most points and thin strokes.

    Args:
        ann: ``(H, W)``, ``(C, H, W)`` or ``(N, C, H, W)`` annotation, boolean or numeric
            (values are used as they are, so soft annotations pool too).
        size: target ``(h, w)``; need not divide ``(H, W)`` (cells then overlap by a pixel).
        mode: ``"max"``, ``"area"`` or ``"nearest"``.

    Returns:
        The pooled annotation with the same leading dimensions: a ``float32`` NumPy array
        for NumPy input, a floating tensor on the input's device for tensor input.
    """
    import torch
    import torch.nn.functional as F

    if mode not in ("max", "area", "nearest"):
        raise InputError(f"mode must be 'max', 'area' or 'nearest', got {mode!r}")
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
        raise InputError(f"size must be positive, got {size}")
    is_tensor = isinstance(ann, torch.Tensor)
    t = ann if is_tensor else torch.from_numpy(np.ascontiguousarray(ann))
    if t.ndim < 2 or t.ndim > 4:
        raise InputError(f"ann must be (H, W), (C, H, W) or (N, C, H, W), got {tuple(t.shape)}")
    if not torch.is_floating_point(t):
        t = t.to(torch.float32)
    lead = t.shape[:-2]
    x = t.reshape(-1, 1, *t.shape[-2:])
    if mode == "max":
        y = F.adaptive_max_pool2d(x, (h, w))
    elif mode == "area":
        y = F.adaptive_avg_pool2d(x, (h, w))
    else:
        y = F.interpolate(x, size=(h, w), mode="nearest")
    y = y.reshape(*lead, h, w)
    return y if is_tensor else y.numpy().astype(np.float32, copy=False)
