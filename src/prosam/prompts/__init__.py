"""Prompt simulation: reference annotations, point and box prompts, and their perturbations.

- :mod:`prosam.prompts.annotations`: VRP-SAM/SEEM-style reference annotations (point,
  scribble, box, mask) and :func:`downsample_annotation` to bring them to feature size.
- :mod:`prosam.prompts.points`: foreground/background clicks, drawing and jittering them.
- :mod:`prosam.prompts.boxes`: tight boxes, IoU, HQ-SAM noisy boxes and Stable-SAM boxes of
  controlled IoU. Boxes are ``(x0, y0, x1, y1)`` with exclusive ``x1 = max_x + 1``.
- :mod:`prosam.prompts.occlusion`: synthetic occluders.

Every random function takes ``rng``: a ``numpy.random.Generator`` or an int seed (see
:data:`RngLike`), and is deterministic given it. Points are ``(x, y)`` pixel coordinates.
"""

from __future__ import annotations

from prosam.prompts.annotations import (
    ANNOTATION_KINDS,
    AnnotationKind,
    DownsampleMode,
    downsample_annotation,
    random_kind,
    simulate_annotation,
    simulate_points,
    simulate_scribble,
)
from prosam.prompts.arrays import RngLike, as_generator
from prosam.prompts.boxes import (
    Box,
    box_iou,
    box_to_mask,
    box_with_iou_in_range,
    mask_to_box,
    noisy_box,
)
from prosam.prompts.occlusion import paste_occluder
from prosam.prompts.points import (
    draw_points,
    jitter_points,
    random_points,
    sample_point_prompts,
    sample_points,
)

__all__ = [
    "ANNOTATION_KINDS",
    "AnnotationKind",
    "Box",
    "DownsampleMode",
    "RngLike",
    "as_generator",
    "box_iou",
    "box_to_mask",
    "box_with_iou_in_range",
    "downsample_annotation",
    "draw_points",
    "jitter_points",
    "mask_to_box",
    "noisy_box",
    "paste_occluder",
    "random_kind",
    "random_points",
    "sample_point_prompts",
    "sample_points",
    "simulate_annotation",
    "simulate_points",
    "simulate_scribble",
]
