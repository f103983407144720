"""Exceptions that carry a message meant for users (the CLI prints them without a traceback)."""

from __future__ import annotations


class ProsamError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""


class InputError(ProsamError, ValueError):
    """An input file or argument cannot be used (corrupt image, wrong size, bad prompt)."""


class WeightsError(ProsamError):
    """Pretrained weights are missing, corrupt, or do not match the architecture."""
