"""Propagating: a bounded memory of remembered targets, what the method is fitted on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prosam.errors import InputError
from prosam.methods.base import MethodOutput, Reference, Target
from prosam.methods.propagation import Propagating
from prosam.sam.predictor import ImageEmbedding
from prosam.sam.transforms import ImageGeometry


def _embedded() -> ImageEmbedding:
    return ImageEmbedding(torch.zeros(1, 4, 2, 2), ImageGeometry((16, 32), (16, 32), 32))


class Recording:
    """Records every fit; answers with an empty mask."""

    name = "recording"

    def __init__(self) -> None:
        self.fits: list[list[Reference]] = []
        self.predicted = 0

    def fit(self, references) -> None:
        self.fits.append(list(references))

    def predict(self, target: Target) -> MethodOutput:
        self.predicted += 1
        return MethodOutput(torch.zeros(1, 8, 8), 0.0)


def _frame(i: int) -> Target:
    return Target(np.full((16, 32, 3), i, np.uint8), _embedded())


def _mask(i: int) -> np.ndarray:
    m = np.zeros((16, 32), bool)
    m[: i + 1, : i + 1] = True
    return m


@pytest.fixture
def ref() -> Reference:
    return Reference(np.zeros((16, 32, 3), np.uint8), np.ones((16, 32), bool), _embedded())


def test_the_memory_keeps_the_last_targets_and_each_refit_sees_them(ref) -> None:
    method = Recording()
    prop = Propagating(method, memory=2)
    prop.fit([ref])
    for i in (1, 2, 3):
        prop.predict(_frame(i))
        prop.remember(_frame(i), _mask(i))
    assert method.predicted == 3  # predict alone never refits
    assert [[int(r.image[0, 0, 0]) for r in f[1:]] for f in method.fits] == [
        [],
        [1],
        [1, 2],
        [2, 3],
    ]
    assert all(f[0] is ref for f in method.fits)  # the user's reference always comes first
    assert np.array_equal(method.fits[-1][-1].annotation, _mask(3))


def test_forget_and_fit_start_a_new_sequence(ref) -> None:
    method = Recording()
    prop = Propagating(method, memory=3)
    prop.fit([ref])
    prop.forget()  # nothing remembered: nothing to refit
    assert len(method.fits) == 1
    prop.remember(_frame(1), _mask(1))
    prop.forget()
    assert len(prop.memory) == 0 and method.fits[-1] == [ref]
    prop.remember(_frame(2), _mask(2))
    prop.fit([ref])
    assert len(prop.memory) == 0


def test_bad_memories_are_refused(ref) -> None:
    with pytest.raises(InputError, match="memory"):
        Propagating(Recording(), memory=0)
    prop = Propagating(Recording())
    with pytest.raises(RuntimeError, match="fit"):
        prop.predict(_frame(0))
    prop.fit([ref])
    with pytest.raises(InputError, match="non-empty"):
        prop.remember(_frame(1), np.zeros((16, 32), bool))
    with pytest.raises(InputError, match="size"):
        prop.remember(_frame(1), np.ones((8, 8), bool))
