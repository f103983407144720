"""A dataset anyone can make by hand: one folder per class, each image beside its mask.

Layout::

    root/<class_name>/<name>.jpg      # any of IMAGE_SUFFIXES
    root/<class_name>/<name>.png      # its mask; a PNG image uses <name>_mask.png instead

Masks are 0/255 (255 = object) or palette/label maps (1..254 = object, 255 = ignore), as
:func:`prosam.io.read_binary_mask` reads them. Class ids are 1..N in sorted folder-name
order; sample keys are ``<class_name>/<file name>``. Images without a mask are skipped and
counted (``stats["unmasked_images"]``, with a warning).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from prosam.data.types import Dataset, Sample
from prosam.errors import InputError
from prosam.io import read_binary_mask

IMAGE_SUFFIXES: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".jfif",
    ".png",
    ".bmp",
    ".webp",
    ".tif",
    ".tiff",
)
#: Image formats prosam does not label: a folder's files of these kinds are reported as
#: skipped (with this reason) instead of being left out without a word.
UNREAD_IMAGE_SUFFIXES: dict[str, str] = {
    ".gif": "GIF",
    ".heic": "HEIC",
    ".heif": "HEIF",
    ".avif": "AVIF",
    ".jp2": "JPEG 2000",
    ".svg": "SVG",
    ".ico": "icon",
    ".psd": "Photoshop",
    ".dng": "camera raw",
    ".cr2": "camera raw",
    ".nef": "camera raw",
    ".arw": "camera raw",
}
MASK_SUFFIX = "_mask.png"


class _FolderMasks:
    def __init__(self) -> None:
        self.paths: dict[str, Path] = {}

    def __call__(self, sample: Sample, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        if class_id not in sample.classes:
            raise InputError(f"{sample.key}: only has a mask for class {sorted(sample.classes)}")
        return read_binary_mask(self.paths[sample.key], expected_size=sample.size)


def _find_pairs(class_dir: Path) -> tuple[list[tuple[Path, Path]], int]:
    """``[(image, mask)]`` in ``class_dir`` sorted by name, and the number of unmasked images."""
    files = {p.name: p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
    lower = {name.lower(): name for name in files}
    masks: set[str] = set()
    pairs: list[tuple[str, str]] = []
    unpaired: list[str] = []
    for name in sorted(n for n in files if Path(n).suffix.lower() in IMAGE_SUFFIXES):
        if name.lower().endswith(MASK_SUFFIX):
            continue
        stem = Path(name).stem
        options = [f"{stem}{MASK_SUFFIX}"]
        if Path(name).suffix.lower() != ".png":
            options.insert(0, f"{stem}.png")
        found = next((lower[o.lower()] for o in options if o.lower() in lower), None)
        if found is None:
            unpaired.append(name)
        else:
            masks.add(found)
            pairs.append((name, found))
    # A PNG without a mask of its own may be another image's mask.
    unmasked = [n for n in unpaired if n not in masks]
    return [(files[i], files[m]) for i, m in pairs], len(unmasked)


def load_folder(root: str | os.PathLike[str], *, description: str | None = None) -> Dataset:
    """Load a class-per-folder dataset (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise InputError(f"{root}: no class folders (expected root/<class_name>/<image>)")
    names = {i + 1: d.name for i, d in enumerate(class_dirs)}
    masks = _FolderMasks()
    samples: list[Sample] = []
    unmasked = 0
    for class_id, class_dir in enumerate(class_dirs, start=1):
        pairs, n_unmasked = _find_pairs(class_dir)
        unmasked += n_unmasked
        for image_path, mask_path in pairs:
            key = f"{class_dir.name}/{image_path.name}"
            masks.paths[key] = mask_path
            samples.append(Sample(key, image_path, frozenset({class_id}), loader=masks))
    if unmasked:
        warnings.warn(f"{root}: {unmasked} images without a mask were ignored", stacklevel=2)
    return Dataset(samples, names, description or f"folder:{root}", {"unmasked_images": unmasked})
