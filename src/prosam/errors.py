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


def failure_reason(err: BaseException) -> str:
    """One line saying why something failed: prosam's own message, else the exception's type
    and message (a file that breaks a library, not a prosam bug to hide)."""
    text = " ".join(str(err).split())
    if isinstance(err, ProsamError):
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
