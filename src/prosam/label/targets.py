"""Which files a labelling job targets: files as given, folders expanded, ``@list`` files read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prosam.data.folder import IMAGE_SUFFIXES
from prosam.errors import InputError


def expand_label_targets(items: Sequence[str], *, recursive: bool = False) -> list[Path]:
    """Files as given, folders expanded to their images, ``@list.txt`` to its lines."""
    paths: list[Path] = []
    for item in items:
        if item.startswith("@"):
            listing = Path(item[1:])
            try:
                lines = listing.read_text().splitlines()
            except OSError as err:
                raise InputError(f"{listing}: cannot read the target list ({err})") from err
            for line in lines:
                line = line.strip()
                if line and not line.startswith("#"):
                    p = Path(line).expanduser()
                    paths.append(p if p.is_absolute() else listing.parent / p)
            continue
        p = Path(item)
        if p.is_dir():
            found = p.rglob("*") if recursive else p.iterdir()
            paths += sorted(q for q in found if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            paths.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    return paths
