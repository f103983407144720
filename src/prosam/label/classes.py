"""Class names: what a valid one is, and the folder name each gets in the outputs."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from prosam.errors import InputError


def safe_name(name: str) -> str:
    """The folder name of a class: letters (any script), digits, ``.``, ``_`` and ``-`` kept,
    anything else (``/``, spaces, ...) becomes ``_``; no leading or trailing dot."""
    text = unicodedata.normalize("NFC", name)
    return re.sub(r"[^\w.-]", "_", text).strip(".") or "_"


def check_class_name(name: str) -> str:
    """``name`` if it is a usable class name: not empty, one line, no control characters,
    no surrounding spaces; else an :class:`InputError` saying what is wrong."""
    if not name:
        raise InputError("a class name must not be empty")
    bad = [c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
    if bad:
        raise InputError(f"class name {name!r} holds a control character ({bad[0]!r})")
    if name != name.strip():
        raise InputError(f"class name {name!r} starts or ends with a space")
    return name


def check_class_names(names: Sequence[str]) -> list[str]:
    """The names, each checked by :func:`check_class_name`, refusing duplicates and names
    that would share an output folder (compared case-insensitively, as some file systems do)."""
    names = [check_class_name(str(n)) for n in names]
    if not names:
        raise InputError("give at least one class name")
    folders: dict[str, str] = {}
    for name in names:
        folder = safe_name(name).casefold()
        if folder in folders:
            other = folders[folder]
            if other == name:
                raise InputError(f"class {name!r} is given twice")
            raise InputError(
                f"class names {other!r} and {name!r} would share the output folder "
                f"{safe_name(name)!r}; rename one"
            )
        folders[folder] = name
    return names
