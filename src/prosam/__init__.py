"""prosam: visual reference segmentation on a frozen Segment Anything Model."""

from __future__ import annotations

__version__ = "0.1.0"
