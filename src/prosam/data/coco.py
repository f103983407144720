"""COCO-format instance annotations as a per-class segmentation :class:`Dataset`.

- Any number of ``(annotation JSON, image root)`` pairs; images are deduplicated by
  ``file_name`` (the first pair that lists an image wins, later copies are counted in
  ``stats["duplicate_images"]`` and dropped).
- Category ids are mapped to contiguous 1-based class ids in sorted category-id order over
  the union of all files' ``categories`` (names must agree); 0 stays background.
- The mask of class ``c`` is the union of the image's non-crowd instances of ``c``; crowd
  regions (``iscrowd=1``) of ``c`` are left out of it and returned as ``ignore``.
- Polygons, uncompressed and compressed RLE are accepted; masks are decoded only when
  :meth:`Sample.mask` is called (the optional area filter works on RLEs, never decoding).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from prosam.data.types import Dataset, Sample
from prosam.errors import InputError

CocoSource = tuple["str | os.PathLike[str]", "str | os.PathLike[str]"]
"""``(annotation_file, image_root)``."""

_Segms = tuple[list[Any], list[Any]]  # (non-crowd segmentations, crowd segmentations)


class _CocoMasks:
    """Holds raw segmentations per image and class; decodes them on request."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, int, dict[int, _Segms]]] = {}

    def __call__(self, sample: Sample, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        h, w, per_class = self.entries[sample.key]
        crowd_free, crowd = per_class.get(class_id, ([], []))
        fg = _decode(_merge(crowd_free, h, w, sample.key), h, w)
        ignore = _decode(_merge(crowd, h, w, sample.key), h, w) & ~fg
        return fg, ignore

    def instances(self, sample: Sample, class_id: int) -> list[np.ndarray]:
        """One mask per non-crowd annotation of ``class_id`` (empty ones left out)."""
        h, w, per_class = self.entries[sample.key]
        crowd_free, _ = per_class.get(class_id, ([], []))
        rles = [_to_rle(s, h, w, sample.key) for s in crowd_free]
        return [m for m in (_decode(r, h, w) for r in rles if r is not None) if m.any()]


def _to_rle(segm: Any, h: int, w: int, where: str) -> dict[str, Any] | None:
    """One annotation's segmentation as a compressed RLE (``None`` if it is empty)."""
    if isinstance(segm, list):
        polys = [p for p in segm if len(p) >= 6]
        if not polys:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if [int(v) for v in segm["size"]] != [h, w]:
            raise InputError(f"{where}: RLE size {segm['size']} != image size [{h}, {w}]")
        if isinstance(segm["counts"], list):
            return mask_utils.frPyObjects(segm, h, w)
        counts = segm["counts"]
        return {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
    raise InputError(f"{where}: unsupported segmentation {type(segm).__name__}")


def _merge(segms: Sequence[Any], h: int, w: int, where: str) -> dict[str, Any] | None:
    rles = [r for r in (_to_rle(s, h, w, where) for s in segms) if r is not None]
    if not rles:
        return None
    return rles[0] if len(rles) == 1 else mask_utils.merge(rles)


def _decode(rle: dict[str, Any] | None, h: int, w: int) -> np.ndarray:
    if rle is None:
        return np.zeros((h, w), dtype=bool)
    with warnings.catch_warnings():
        # pycocotools' Cython decoder trips numpy 2's ``__array__(copy=...)`` deprecation.
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such file") from err
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable COCO JSON file ({err})") from err
    if not isinstance(data, dict) or "images" not in data:
        raise InputError(f"{path}: not a COCO annotation file (no 'images')")
    return data


class _Builder:
    """Accumulates samples over annotation files, deduplicating by file name."""

    def __init__(self, index_of: dict[int, int], min_area_fraction: float, check_files: bool):
        self.index_of = index_of
        self.min_area_fraction = min_area_fraction
        self.check_files = check_files
        self.seen: set[str] = set()
        self.masks = _CocoMasks()
        self.samples: list[Sample] = []
        self.stats = dict.fromkeys(
            (
                "duplicate_images",
                "missing_images",
                "images_without_classes",
                "orphan_annotations",
                "annotations_of_dropped_images",
                "small_pairs_skipped",
            ),
            0,
        )

    def add_file(self, data: dict[str, Any], root: Path, ann_file: Path) -> None:
        """Add one annotation file's images (see :func:`load_coco`)."""
        images: dict[Any, tuple[str, int, int]] = {}
        dropped: set[Any] = set()
        for img in data["images"]:
            key = str(img["file_name"])
            if key in self.seen:
                self.stats["duplicate_images"] += 1
                dropped.add(img["id"])
                continue
            if self.check_files and not (root / key).is_file():
                self.stats["missing_images"] += 1
                dropped.add(img["id"])
                continue
            self.seen.add(key)
            images[img["id"]] = (key, int(img["height"]), int(img["width"]))
        grouped: dict[Any, dict[int, _Segms]] = {i: {} for i in images}
        for ann in data.get("annotations", []):
            per_class = grouped.get(ann["image_id"])
            if per_class is None:
                dropped_image = ann["image_id"] in dropped
                name = "annotations_of_dropped_images" if dropped_image else "orphan_annotations"
                self.stats[name] += 1
                continue
            cid = int(ann["category_id"])
            if cid not in self.index_of:
                raise InputError(
                    f"{ann_file}: annotation {ann.get('id')} has unknown category {cid}"
                )
            crowd_free, crowd = per_class.setdefault(self.index_of[cid], ([], []))
            (crowd if ann.get("iscrowd", 0) else crowd_free).append(ann["segmentation"])
        for image_id, (key, h, w) in images.items():
            per_class = grouped[image_id]
            present = frozenset(per_class)  # crowd-only classes are present but not usable
            usable = {c for c, (free, _) in per_class.items() if free}
            if self.min_area_fraction > 0:
                for c in sorted(usable):
                    rle = _merge(per_class[c][0], h, w, f"{ann_file}:{key}")
                    area = 0 if rle is None else int(mask_utils.area(rle))
                    if area < self.min_area_fraction * h * w:
                        usable.discard(c)
                        self.stats["small_pairs_skipped"] += 1
            if not usable:
                self.stats["images_without_classes"] += 1
                continue
            self.masks.entries[key] = (h, w, per_class)
            self.samples.append(
                Sample(key, root / key, frozenset(usable), present, (h, w), self.masks)
            )


def load_coco(
    sources: Iterable[CocoSource],
    *,
    min_area_fraction: float = 0.0,
    check_files: bool = True,
    description: str | None = None,
) -> Dataset:
    """Load COCO JSON files as a :class:`Dataset` keyed by image ``file_name``.

    ``min_area_fraction``: an (image, class) pair whose class mask covers less than this
    fraction of the image is not offered as a class of that sample (it stays in
    ``present_classes``). ``check_files``: images missing on disk are dropped with a warning
    (``stats["missing_images"]``).
    """
    if not 0.0 <= min_area_fraction < 1.0:
        raise InputError(f"min_area_fraction must be in [0, 1), got {min_area_fraction}")
    loaded = [(Path(a), Path(r), _read_json(Path(a))) for a, r in sources]
    if not loaded:
        raise InputError("load_coco: no annotation files given")

    names: dict[int, str] = {}
    for ann_file, _, data in loaded:
        for cat in data.get("categories", []):
            cid, name = int(cat["id"]), str(cat["name"])
            if names.setdefault(cid, name) != name:
                raise InputError(
                    f"{ann_file}: category {cid} is {name!r}, elsewhere {names[cid]!r}"
                )
    index_of = {cid: i + 1 for i, cid in enumerate(sorted(names))}
    class_names = {index_of[cid]: name for cid, name in names.items()}

    builder = _Builder(index_of, min_area_fraction, check_files)
    for ann_file, root, data in loaded:
        try:
            builder.add_file(data, root, ann_file)
        except (KeyError, TypeError, AttributeError) as err:
            raise InputError(f"{ann_file}: malformed COCO entry ({err!r})") from err
    stats = builder.stats
    if stats["missing_images"]:
        warnings.warn(
            f"load_coco: {stats['missing_images']} listed images are missing on disk and were "
            "skipped",
            stacklevel=2,
        )
    desc = description or "coco:" + ",".join(str(a) for a, _, _ in loaded)
    return Dataset(builder.samples, class_names, desc, stats)
