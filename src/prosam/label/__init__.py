"""Auto-labelling: one annotated reference, thousands of targets, standard outputs.

- :mod:`prosam.label.api`: ``load(...)`` → :class:`Segmenter` with ``fit`` / ``predict`` /
  ``label`` and ``save_png`` / ``save_coco`` / ``save_yolo`` / ``save_overlay``;
- :mod:`prosam.label.job`: the resumable, shardable :class:`LabelJob`;
- :mod:`prosam.label.writers`: the output formats;
- :mod:`prosam.label.cli`: ``prosam label``.
"""

from prosam.label.api import (
    LabelResult,
    Segmenter,
    annotation_to_mask,
    load,
    save_coco,
    save_overlay,
    save_png,
    save_yolo,
)
from prosam.label.job import LabelJob, LabelSummary, finalize_outputs, plan_targets
from prosam.label.writers import (
    FORMATS,
    CocoWriter,
    LabelMask,
    OverlayWriter,
    PngWriter,
    Writer,
    YoloWriter,
)

__all__ = [
    "FORMATS",
    "CocoWriter",
    "LabelJob",
    "LabelMask",
    "LabelResult",
    "LabelSummary",
    "OverlayWriter",
    "PngWriter",
    "Segmenter",
    "Writer",
    "YoloWriter",
    "annotation_to_mask",
    "finalize_outputs",
    "load",
    "plan_targets",
    "save_coco",
    "save_overlay",
    "save_png",
    "save_yolo",
]
