"""Exceptions that carry a message meant for users (the CLI prints them without a traceback)."""

from __future__ import annotations


class ProsamError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""


class InputError(ProsamError, ValueError):
    """An input file or argument cannot be used (corrupt image, wrong size, bad prompt)."""


class WeightsError(ProsamError):
    """Pretrained weights are missing, corrupt, or do not match the architecture."""


class ProsamWarning(UserWarning):
    """Something the user should know about an input that was used anyway (a clipped box, a
    thresholded lossy mask); the CLI prints it as one ``prosam: warning:`` line."""
