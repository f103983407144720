"""Auto-labelling: one annotated reference, thousands of targets, standard outputs.

- :mod:`prosam.label.api`: ``load(...)`` → :class:`Segmenter` with ``fit`` / ``predict`` /
  ``label`` and ``save_png`` / ``save_coco`` / ``save_yolo`` / ``save_overlay``;
- :mod:`prosam.label.job`: the resumable, shardable :class:`LabelJob`;
- :mod:`prosam.label.ray_job`: the same job on a pool of Ray actors;
- :mod:`prosam.label.writers`: the output formats;
- :mod:`prosam.label.targets`: which files a job targets.

Names are exported lazily, so the ``prosam label`` parser loads no model code.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    **dict.fromkeys(
        (
            "LabelResult",
            "Segmenter",
            "annotation_to_mask",
            "fitted",
            "load",
            "save_coco",
            "save_overlay",
            "save_png",
            "save_yolo",
        ),
        "prosam.label.api",
    ),
    **dict.fromkeys(
        ("LabelJob", "LabelSummary", "finalize_outputs", "plan_targets"), "prosam.label.job"
    ),
    **dict.fromkeys(("label_paths_with_ray", "label_ray_dataset"), "prosam.label.ray_job"),
    **dict.fromkeys(
        (
            "FORMATS",
            "CocoWriter",
            "LabelMask",
            "OverlayWriter",
            "PngWriter",
            "Writer",
            "YoloWriter",
        ),
        "prosam.label.writers",
    ),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prosam.label' has no attribute {name!r}")
