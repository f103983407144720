"""PASCAL-5i (VOC2012 + SBD) and COCO-20i (COCO 2014) few-shot benchmarks.

PASCAL root layout (the PFENet/HSNet convention)::

    root/JPEGImages/<stem>.jpg
    root/SegmentationClassAug/<stem>.png   # values 0..20, 255 = ignore (grayscale or palette)
    root/ImageSets/SegmentationAug/train_aug.txt   # train: SBD-augmented VOC2012 train
    root/ImageSets/Segmentation/val.txt            # val (test): the 1449 VOC2012 val images

The PFENet list files (``lists/pascal/voc_sbd_merge_noduplicate.txt``, ``lists/pascal/val.txt``,
lines ``JPEGImages/x.jpg SegmentationClassAug/x.png``) are found too, and HSNet-style lines
(``2007_000033__01``) are read by their image stem. Few-shot training uses the train list on
the fold's base classes; testing uses val on its novel classes. With the default lists, train
images also listed in val are dropped (``stats["val_overlap_dropped"]``). PFENet further
drops (image, class) pairs under ``2 * 32 * 32`` pixels: pass ``min_area_pixels=2048``.

COCO root layout: ``root/{train,val}2014/*.jpg`` and
``root/annotations/instances_{train,val}2014.json``, loaded with :func:`load_coco`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from prosam.data.coco import load_coco
from prosam.data.folds import PASCAL_CLASSES, coco20i_classes, pascal5i_classes
from prosam.data.types import Dataset, Sample
from prosam.errors import InputError
from prosam.io import IGNORE_VALUE, read_label_map, write_bytes_atomic

Split = Literal["train", "val"]

PASCAL_LIST_CANDIDATES: dict[str, tuple[str, ...]] = {
    "train": (
        "ImageSets/SegmentationAug/train_aug.txt",
        "lists/pascal/voc_sbd_merge_noduplicate.txt",
        "lists/pascal/train_aug.txt",
    ),
    "val": ("ImageSets/Segmentation/val.txt", "lists/pascal/val.txt"),
}
"""Split list files looked for under the PASCAL root, first found wins."""

_NUM_VOC_CLASSES = 20


def _find_list(root: Path, split: str) -> Path | None:
    if split not in PASCAL_LIST_CANDIDATES:
        raise InputError(f"unknown split {split!r} (train or val)")
    for rel in PASCAL_LIST_CANDIDATES[split]:
        if (root / rel).is_file():
            return root / rel
    return None


def read_split_list(path: str | os.PathLike[str]) -> list[str]:
    """Image stems of a split list (bare stems, PFENet pairs or HSNet ``stem__cls``), deduped."""
    stems: dict[str, None] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise InputError(f"{path}: cannot read split list ({err})") from err
    for line in lines:
        token = line.split()[0] if line.strip() else ""
        if not token:
            continue
        stem = Path(token).stem
        head, sep, tail = stem.rpartition("__")
        stems[head if sep and tail.isdigit() else stem] = None
    return list(stems)


class _LabelMapMasks:
    """Masks from label-map PNGs: class ``c`` is ``labels == c``, 255 is ignore."""

    def __init__(self) -> None:
        self.paths: dict[str, Path] = {}

    def __call__(self, sample: Sample, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        labels = read_label_map(self.paths[sample.key])
        return labels == class_id, labels == IGNORE_VALUE


def _class_counts(mask_path: Path) -> dict[str, Any]:
    labels = read_label_map(mask_path)
    counts = np.bincount(labels.ravel(), minlength=256)
    st = mask_path.stat()
    return {
        "size": list(labels.shape),
        "counts": {str(c): int(counts[c]) for c in range(1, _NUM_VOC_CLASSES + 1) if counts[c]},
        "stamp": [st.st_size, st.st_mtime_ns],
    }


def load_pascal_voc(
    root: str | os.PathLike[str],
    split: Split = "val",
    *,
    list_file: str | os.PathLike[str] | None = None,
    min_area_fraction: float = 0.0,
    min_area_pixels: int = 0,
    cache_path: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Load a VOC2012(+SBD) split as a :class:`Dataset` keyed by ``<stem>.jpg``; ids 1..20.

    Every label map is read once at load to find its classes; ``cache_path`` (a JSON file,
    written atomically, revalidated by mask size and mtime) saves that work next time.
    """
    root = Path(root)
    lst = Path(list_file) if list_file is not None else _find_list(root, split)
    if lst is None:
        raise InputError(
            f"{root}: no {split} list; expected one of {', '.join(PASCAL_LIST_CANDIDATES[split])}"
        )
    stems = read_split_list(lst)
    stats = dict.fromkeys(
        ("val_overlap_dropped", "missing_masks", "images_without_classes", "small_pairs_skipped"), 0
    )
    if split == "train" and list_file is None:
        val_list = _find_list(root, "val")
        if val_list is not None:
            val = set(read_split_list(val_list))
            stats["val_overlap_dropped"] = sum(s in val for s in stems)
            stems = [s for s in stems if s not in val]

    cache: dict[str, Any] = {}
    if cache_path is not None and Path(cache_path).is_file():
        try:
            cache = json.loads(Path(cache_path).read_text(encoding="utf-8")).get("images", {})
        except (OSError, ValueError):
            cache = {}
    masks = _LabelMapMasks()
    samples: list[Sample] = []
    fresh: dict[str, Any] = {}
    for stem in stems:
        mask_path = root / "SegmentationClassAug" / f"{stem}.png"
        if not mask_path.is_file():
            stats["missing_masks"] += 1
            continue
        entry = cache.get(stem)
        st = mask_path.stat()
        if entry is None or entry.get("stamp") != [st.st_size, st.st_mtime_ns]:
            entry = _class_counts(mask_path)
        fresh[stem] = entry
        h, w = entry["size"]
        counts = {int(c): n for c, n in entry["counts"].items()}
        limit = max(min_area_pixels, min_area_fraction * h * w)
        usable = frozenset(c for c, n in counts.items() if n >= limit)
        stats["small_pairs_skipped"] += len(counts) - len(usable)
        if not usable:
            stats["images_without_classes"] += 1
            continue
        key = f"{stem}.jpg"
        masks.paths[key] = mask_path
        image_path = root / "JPEGImages" / key
        samples.append(Sample(key, image_path, usable, frozenset(counts), (h, w), masks))
    if stats["missing_masks"]:
        warnings.warn(
            f"{root}: {stats['missing_masks']} listed images have no mask and were skipped",
            stacklevel=2,
        )
    merged = {**cache, **fresh}
    if cache_path is not None and merged != cache:
        payload = json.dumps({"version": 1, "images": merged}, sort_keys=True).encode()
        write_bytes_atomic(cache_path, payload)
    names = {i + 1: n for i, n in enumerate(PASCAL_CLASSES)}
    return Dataset(samples, names, f"pascal-voc:{root}:{split}", stats)


def _fold_view(
    ds: Dataset, base: Sequence[int], novel: Sequence[int], split: str, exclude: bool, name: str
) -> Dataset:
    if split == "train":
        return ds.restrict(base, exclude_images_with=novel if exclude else (), description=name)
    return ds.restrict(novel, description=name)


def pascal5i(
    root: str | os.PathLike[str],
    fold: int,
    split: Split = "val",
    *,
    exclude_novel_images: bool = False,
    **kwargs: Any,
) -> Dataset:
    """PASCAL-5i ``fold``: train split on base classes, val split on novel classes.

    ``exclude_novel_images`` drops training images showing any novel class (stricter than
    PFENet/HSNet, which keep them with novel pixels as background). ``kwargs`` go to
    :func:`load_pascal_voc`.
    """
    base, novel = pascal5i_classes(fold)
    ds = load_pascal_voc(root, split, **kwargs)
    return _fold_view(ds, base, novel, split, exclude_novel_images, f"pascal-5i:fold{fold}:{split}")


def coco20i(
    root: str | os.PathLike[str],
    fold: int,
    split: Split = "val",
    *,
    year: str = "2014",
    min_area_fraction: float = 0.0,
    exclude_novel_images: bool = False,
) -> Dataset:
    """COCO-20i ``fold`` from a COCO root: train split on base classes, val on novel ones."""
    if split not in ("train", "val"):
        raise InputError(f"unknown split {split!r} (train or val)")
    root = Path(root)
    base, novel = coco20i_classes(fold)
    ds = load_coco(
        [(root / "annotations" / f"instances_{split}{year}.json", root / f"{split}{year}")],
        min_area_fraction=min_area_fraction,
    )
    if len(ds.class_names) != 80:
        raise InputError(
            f"{root}: COCO-20i needs the 80 COCO categories, found {len(ds.class_names)}"
        )
    return _fold_view(ds, base, novel, split, exclude_novel_images, f"coco-20i:fold{fold}:{split}")
