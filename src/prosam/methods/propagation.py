"""Propagation through a sequence: a method that also learns from its own answers.

For ordered targets (the frames of a video), :class:`Propagating` wraps any method and keeps
a *memory* of earlier targets with their predicted masks (the last ``memory`` of them); the
method is fitted on the user's references plus that memory. The object may turn, grow and
change its look over the frames; the first frame alone no longer has to match all of them.
Which answers join the memory is the caller's choice (``benchmarks/one_shot.py
--propagate`` remembers what ``prosam label`` would keep: score at least the method's
presence threshold, area at least the minimum). Only the user's references are annotated by
a person, so a wrong answer that is remembered can pull later frames the wrong way; the
labelling job does not propagate.

This reading is prosam's, not one of the papers' (they segment every target from the
user's references alone); ``docs/methods.md`` gives the settings and what they measured.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from prosam.errors import InputError
from prosam.methods.base import MethodOutput, Reference, ReferenceMethod, Target


class Propagating:
    """``method`` fitted on the references plus the last ``memory`` remembered targets.

    :meth:`predict` does not change the memory; :meth:`remember` adds a target with its
    mask, :meth:`forget` starts a new sequence. :meth:`fit` also forgets.
    """

    def __init__(self, method: ReferenceMethod, *, memory: int = 3) -> None:
        if memory < 1:
            raise InputError(f"memory must be >= 1, got {memory}")
        self.method = method
        self.name = method.name
        self.capabilities = getattr(method, "capabilities", frozenset())
        self.memory_size = memory
        self.references: list[Reference] = []
        self.memory: deque[Reference] = deque(maxlen=memory)

    def fit(self, references: Sequence[Reference]) -> None:
        """Fit on the user's references, with an empty memory."""
        self.method.fit(references)
        self.references = list(references)
        self.memory.clear()

    def predict(self, target: Target) -> MethodOutput:
        """Segment ``target`` from the references and the memory."""
        if not self.references:
            raise RuntimeError("call fit(references) before predict")
        return self.method.predict(target)

    def remember(self, target: Target, mask: np.ndarray) -> None:
        """Add ``target`` with its (original-size, non-empty) ``mask`` and refit; the oldest
        remembered target leaves when the memory is full."""
        if not self.references:
            raise RuntimeError("call fit(references) before remember")
        if mask.shape != target.image.shape[:2] or not mask.any():
            raise InputError("a remembered mask must be non-empty and the target's size")
        self.memory.append(Reference(target.image, mask.astype(bool), target.embedded))
        self.method.fit([*self.references, *self.memory])

    def forget(self) -> None:
        """Drop the memory (a new sequence starts) and refit on the references alone."""
        if self.memory:
            self.memory.clear()
            self.method.fit(self.references)
