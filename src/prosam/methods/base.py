"""What every reference-segmentation method looks like to the rest of prosam.

A method is fitted on k annotated references, then predicts one target at a time. Inputs
carry SAM image embeddings computed (and cached) by the caller, so a method never runs the
image encoder itself; outputs are SAM decoder logits, which the caller turns into masks at
whatever resolution it evaluates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from prosam.sam.predictor import ImageEmbedding


@dataclass
class Reference:
    """An annotated reference image.

    ``annotation`` is the user's (or simulated) annotation rasterised at the image size:
    a mask, a filled box, drawn points or a scribble. ``kind`` says which.
    """

    image: np.ndarray
    annotation: np.ndarray
    embedded: ImageEmbedding
    kind: str = "mask"


@dataclass
class Target:
    """An image to segment."""

    image: np.ndarray
    embedded: ImageEmbedding


@dataclass
class InstanceMask:
    """One object found in a target: ``(1, h, w)`` low-res logits like
    :attr:`MethodOutput.low_res_logits`, its score (higher = more confident) and, when the
    method knows it, SAM's predicted IoU of the mask."""

    low_res_logits: torch.Tensor
    score: float
    predicted_iou: float | None = None


@dataclass
class MethodOutput:
    """A method's answer for one target.

    ``low_res_logits`` are ``(1, h, w)`` SAM decoder logits over the padded square input
    (256x256 for real SAMs); ``score`` ranks outputs (higher = more confident);
    ``extras`` holds method-specific maps (similarity, uncertainty, ...).

    ``instances``: the separate objects, for methods that find them (empty otherwise, and
    the class mask is then one object). When given, the class mask is their union: the
    method's ``low_res_logits`` are the instances' element-wise maximum.
    """

    low_res_logits: torch.Tensor
    score: float
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    instances: list[InstanceMask] = field(default_factory=list)


@runtime_checkable
class ReferenceMethod(Protocol):
    """The interface of every method: ``fit(references)`` then ``predict(target)``."""

    name: str

    def fit(self, references: Sequence[Reference]) -> None: ...

    def predict(self, target: Target) -> MethodOutput: ...
