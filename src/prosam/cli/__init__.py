"""The ``prosam`` command: one module per command, and this entry point that lists them.

Building the parser imports no model code (torch loads only when a command runs).
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from prosam import __version__
from prosam.cli import (
    app,
    backends,
    cache,
    demo,
    episodes,
    eval,
    label,
    predict,
    review,
    segment,
    stable,
    study,
    train,
    weights,
)
from prosam.errors import ProsamError, ProsamWarning

#: The commands in the order ``prosam --help`` lists them; each module has ``add_parser(sub)``.
COMMANDS = (
    predict,
    weights,
    backends,
    cache,
    demo,
    episodes,
    eval,
    train,
    segment,
    stable,
    label,
    review,
    app,
    study,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``prosam`` command."""
    parser = argparse.ArgumentParser(
        prog="prosam", description="Visual reference segmentation on a frozen SAM."
    )
    parser.add_argument("--version", action="version", version=f"prosam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _show_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    if issubclass(category, ProsamWarning):
        print(f"prosam: warning: {message}", file=sys.stderr)
    else:
        _default_show_warning(message, category, *args, **kwargs)


_default_show_warning = warnings.showwarning


COORDINATE_OPTIONS = frozenset(
    {"--box", "--point", "--ref-box", "--ref-points", "--ref-scribble", "--neg-box", "--neg-points"}
)
NEGATIVE_COORDINATES = re.compile(r"^-\d|^-\.\d")


def join_negative_coordinates(argv: Sequence[str]) -> list[str]:
    """``--box -5,-5,100,100`` as ``--box=-5,-5,100,100``: argparse would read a value that
    starts with ``-`` as an option (a box or point partly outside the image is valid)."""
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        following = items[i + 1] if i + 1 < len(items) else None
        if item in COORDINATE_OPTIONS and following and NEGATIVE_COORDINATES.match(following):
            out.append(f"{item}={following}")
            i += 2
            continue
        out.append(item)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line and exit with status 2, no traceback.

    Errors of the file system (a folder that cannot be written, a full disk) count as the
    user's too; :class:`ProsamWarning` prints as one ``prosam: warning:`` line.
    """
    parser = build_parser()
    given = join_negative_coordinates(sys.argv[1:] if argv is None else argv)
    dashes = [a for a in given if a.startswith("--") and a.endswith("=--")]
    if dashes:  # argparse turns "--opt=--" into an empty list, whatever the option's type
        print(f"prosam: error: {dashes[0][:-3]}: give a value, not '--'", file=sys.stderr)
        return 2
    args = parser.parse_args(given)
    with warnings.catch_warnings():
        warnings.simplefilter("always", ProsamWarning)
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args) or 0)
        except ProsamError as err:
            print(f"prosam: error: {err}", file=sys.stderr)
            return 2
        except OSError as err:
            where = f"{err.filename}: " if err.filename else ""
            print(f"prosam: error: {where}{err.strerror or err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("prosam: interrupted", file=sys.stderr)
            return 130
