"""Tracking one object through video frames: keep the instances where it just was.

A semantic method finds every object of the referenced kind; in a video the user usually
means one of them (the camel in front, not the one behind it). :class:`Tracking` wraps a
method for ordered targets: of each frame's instances it keeps those lying mostly inside
the object's last known place (the previous kept mask, dilated), starting from the
reference's annotation. When none does (the object left, or the last answer was wrong), it
keeps them all and starts again from there. prosam's reading, not a paper's; the settings
were fixed before any run (``docs/methods.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from prosam.errors import InputError
from prosam.methods.base import InstanceMask, MethodOutput, Reference, ReferenceMethod, Target
from prosam.sam.transforms import ImageGeometry, to_low_res_frame


def padded_low_res(mask: torch.Tensor, geometry: ImageGeometry, side: tuple[int, int]):
    """A boolean ``(H, W)`` mask at the original size as a boolean ``side`` mask over SAM's
    padded square input, like the decoder's low-res logits."""
    x = to_low_res_frame(mask.float()[None, None], geometry, side, fill=0.0, mode="area")
    return x[0, 0] >= 0.5


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """A boolean ``(h, w)`` mask grown by ``radius`` pixels (a square structuring element)."""
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    return F.max_pool2d(mask.float()[None, None], k, stride=1, padding=radius)[0, 0] > 0


class Tracking:
    """``method``'s instances near the object's last place, frame after frame.

    Args:
        method: a method with instances (e.g. ``matcher``).
        grow: the last place is dilated by ``grow`` times the square root of its area (in
            low-res pixels, at least 2).
        inside: an instance is kept when at least this share of it lies in the dilated
            last place.
    """

    def __init__(self, method: ReferenceMethod, *, grow: float = 0.25, inside: float = 0.5):
        if grow < 0 or not 0.0 < inside <= 1.0:
            raise InputError(f"need grow >= 0 and 0 < inside <= 1, got {grow}, {inside}")
        self.method = method
        self.name = method.name
        self.capabilities = getattr(method, "capabilities", frozenset())
        self.grow = grow
        self.inside = inside
        self.last: torch.Tensor | None = None  # low-res boolean mask of the object's place
        self.start: torch.Tensor | None = None  # the reference's mask at original size

    def fit(self, references: Sequence[Reference]) -> None:
        """Fit ``method``; the first reference's annotation is the object's first place."""
        self.method.fit(references)
        self.start = torch.as_tensor(references[0].annotation > 0)
        self.last = None

    def predict(self, target: Target) -> MethodOutput:
        """The method's answer with only the instances near the object's last place; the
        kept mask becomes the next frame's last place."""
        if self.start is None:
            raise RuntimeError("call fit(references) before predict")
        out = self.method.predict(target)
        if not out.instances:
            return out
        side = tuple(int(v) for v in out.low_res_logits.shape[-2:])
        if self.last is None or tuple(self.last.shape) != side:
            self.last = padded_low_res(self.start, target.embedded.geometry, side)  # type: ignore[arg-type]
        area = int(self.last.sum())
        near = dilate(self.last, max(2, round(self.grow * math.sqrt(area)))) if area else None
        kept = [i for i in out.instances if near is not None and self.is_near(i, near)]
        kept = kept or list(out.instances)
        logits = torch.stack([i.low_res_logits for i in kept]).amax(0)
        self.last = logits[0] > 0
        return MethodOutput(logits, out.score, out.extras, kept)

    def is_near(self, instance: InstanceMask, near: torch.Tensor) -> bool:
        """Whether at least ``inside`` of the instance lies in ``near``."""
        mask = instance.low_res_logits[0] > 0
        area = int(mask.sum())
        return area > 0 and int((mask & near.to(mask.device)).sum()) >= self.inside * area
