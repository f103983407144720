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


CLASS_NAME_PUNCTUATION = " _-.'+&(),"
"""The characters a class name may hold besides letters, digits and marks (any script)."""
MAX_CLASS_NAME = 100


def check_class_name(name: object) -> str:
    """``name`` if it is a usable class name, else an :class:`InputError` saying what is wrong.

    The one rule, for the command line, the Python API, the page and a resumed job alike:
    1 to 100 characters, letters, digits and marks of any script plus ``space _ - . ' + & ( )
    ,``, not starting with a dot or a space, not ending with a space. Path separators, control
    characters and look-alikes of them (``／``, ``∕``) are refused, so a name can never point
    to another folder; file names are still derived through :func:`safe_name`."""
    if not isinstance(name, str):
        raise InputError(f"a class name must be text, not {type(name).__name__} ({name!r})")
    if not name:
        raise InputError("a class name must not be empty")
    bad = [c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
    if bad:
        raise InputError(f"class name {name!r} holds a control character ({bad[0]!r})")
    if name != name.strip():
        raise InputError(f"class name {name!r} starts or ends with a space")
    if len(name) > MAX_CLASS_NAME:
        raise InputError(f"class name {name[:20]!r}... is over {MAX_CLASS_NAME} characters")
    odd = [
        c
        for c in name
        if unicodedata.category(c)[0] not in "LNM" and c not in CLASS_NAME_PUNCTUATION
    ]
    if odd:
        raise InputError(
            f"class name {name!r} holds {odd[0]!r}; use letters, digits, spaces and "
            f"{' '.join(CLASS_NAME_PUNCTUATION.strip())}"
        )
    if name.startswith("."):
        raise InputError(f"class name {name!r} starts with a dot")
    return name


def check_class_names(names: Sequence[str]) -> list[str]:
    """The names, each checked by :func:`check_class_name`, refusing duplicates and names
    that would share an output folder (compared case-insensitively, as some file systems do)."""
    names = [check_class_name(n) for n in names]
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
