"""prosam: visual reference segmentation on a frozen Segment Anything Model.

The public API is small and imported lazily (so ``prosam --help`` stays fast):

- :func:`prosam.load` — a segmenter: ``seg = prosam.load("persam")``, ``seg.fit(refs)``,
  ``seg.predict(targets)``, ``seg.label(paths, out_dir)``;
- :func:`prosam.load_sam` — a frozen SAM by weights name or file;
- :class:`prosam.Predictor` — SAM's promptable interface (points, boxes, mask input).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load": ("prosam.label.api", "load"),
    "Segmenter": ("prosam.label.api", "Segmenter"),
    "load_sam": ("prosam.sam", "load_sam"),
    "Predictor": ("prosam.sam", "Predictor"),
}

__all__ = ["Predictor", "Segmenter", "__version__", "load", "load_sam"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'prosam' has no attribute {name!r}")
