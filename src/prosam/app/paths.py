"""The page's view of the file system: only files under one root folder, never outside it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from prosam.errors import InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class FolderListing:
    """The sub-folders and images of one folder, as paths relative to the root."""

    folder: str
    folders: list[str]
    images: list[str]


class RootFolder:
    """Resolves page-given relative paths inside ``root`` and refuses everything else:
    absolute paths, ``..``, and links that lead out of the root."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise InputError(f"--root {root}: not a folder")
        self.root = path.resolve()

    def resolve(self, relative: str, *, must_exist: bool = True) -> Path:
        """The absolute path of ``relative`` (``/``-separated, under the root)."""
        if not isinstance(relative, str) or "\x00" in relative:
            raise InputError("a path must be a string")
        rel = PurePosixPath(relative.replace("\\", "/"))
        if rel.is_absolute() or ".." in rel.parts or (rel.parts and ":" in rel.parts[0]):
            raise InputError(f"{relative!r}: give a path relative to the root folder")
        path = (self.root / Path(*rel.parts)).resolve() if rel.parts else self.root
        if path != self.root and self.root not in path.parents:
            raise InputError(f"{relative!r}: outside the root folder")
        if must_exist and not path.exists():
            raise InputError(f"{relative!r}: no such file or folder")
        return path

    def relative(self, path: Path) -> str:
        """``path`` (under the root) as the page names it."""
        rel = path.resolve().relative_to(self.root).as_posix()
        return "" if rel == "." else rel

    def image(self, relative: str) -> Path:
        """An image file under the root."""
        path = self.resolve(relative)
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"{relative!r}: not an image file")
        return path

    def folder(self, relative: str) -> Path:
        """A folder under the root."""
        path = self.resolve(relative)
        if not path.is_dir():
            raise InputError(f"{relative!r}: not a folder")
        return path

    def listing(self, relative: str = "") -> FolderListing:
        """What ``relative`` holds (hidden entries and links out of the root left out)."""
        folder = self.folder(relative)
        folders, images = [], []
        for entry in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
            if entry.name.startswith("."):
                continue
            resolved = entry.resolve()
            if resolved != self.root and self.root not in resolved.parents:
                continue
            if entry.is_dir():
                folders.append(self.relative(entry))
            elif entry.suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                images.append(self.relative(entry))
        return FolderListing(self.relative(folder), folders, images)


def images_in(folder: Path, limit: int | None = None) -> list[Path]:
    """The image files directly in ``folder``, sorted by name (at most ``limit``)."""
    found = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    return found if limit is None else found[:limit]
