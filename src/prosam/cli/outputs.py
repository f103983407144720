"""Checks of the ``--out`` paths, done before any model loads (a bad one fails in a second),
and a run's log file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from prosam.errors import InputError


def check_output_file(path: str | os.PathLike[str], suffixes: tuple[str, ...], what: str) -> Path:
    """A file ``path`` can be written: its suffix is one of ``suffixes`` (the format written),
    it is not a folder, and its folder is (or can be made) writable."""
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise InputError(f"--out {out}: {what}; give a name ending in {' or '.join(suffixes)}")
    if out.is_dir():
        raise InputError(f"--out {out}: is a folder; give a file name ending in {suffixes[0]}")
    check_writable_folder(out.parent)
    return out


def check_output_dir(path: str | os.PathLike[str]) -> Path:
    """A folder ``path`` can be written into: not a file, and writable (or creatable)."""
    out = Path(path)
    try:
        out.resolve(strict=False)
    except (RuntimeError, OSError) as err:  # a link loop, or a path too long
        why = "a loop of links" if isinstance(err, RuntimeError) else err.__class__.__name__
        raise InputError(f"--out {out}: cannot be resolved ({why})") from None
    if out.is_symlink() and not out.exists():
        raise InputError(f"--out {out}: a link to nothing (or a loop of links)")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file, not a folder")
    check_writable_folder(out)
    return out


def check_writable_folder(folder: Path) -> None:
    """:class:`InputError` unless ``folder``, or its nearest existing parent, is a writable
    folder (files can be created in it)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{existing}: is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{existing}: folder is not writable")


def run_log(path: Path) -> Callable[[str], None]:
    """A logger that prints a line and appends it to ``path`` (a training run's log)."""

    def log(line: str) -> None:
        print(line, flush=True)
        with path.open("a") as f:
            f.write(line + "\n")

    return log
