"""Core data types: a lazily loaded :class:`Sample`, a :class:`Dataset`, an :class:`Episode`.

Class ids are dataset-specific positive integers; 0 is reserved for background. Every dataset
loader in :mod:`prosam.data` uses 1-based contiguous ids (VOC ids for PASCAL, the rank in
sorted COCO category-id order for COCO, the rank in sorted folder-name order for folders), so
the fold definitions in :mod:`prosam.data.folds` apply to them directly.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from prosam.errors import InputError
from prosam.io import read_image
from prosam.prompts.annotations import ANNOTATION_KINDS  # the kinds an episode can ask for

__all__ = ["ANNOTATION_KINDS", "Dataset", "Episode", "MaskLoader", "Sample", "image_size"]

MaskLoader = Callable[["Sample", int], tuple[np.ndarray, np.ndarray]]
"""``loader(sample, class_id) -> (foreground, ignore)``, both ``(H, W)`` bool arrays."""

_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(H, W)`` of an image file as :func:`prosam.io.read_image` returns it (EXIF applied).

    Reads only the header.
    """
    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSING_ORIENTATIONS:
                w, h = h, w
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such file") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: not a readable image ({err})") from err
    return h, w


@dataclass(frozen=True)
class Sample:
    """One image of a dataset, with per-class masks loaded on demand.

    ``key`` identifies the image within its dataset (a relative file name) and is what episode
    files store. ``classes`` are the class ids usable as episode classes for this image (after
    any area filter); ``present_classes`` are all annotated classes (a superset), used when
    excluding images that show a class at all. Two samples are equal when their key, path and
    class sets are; the loader is not compared.
    """

    key: str
    image_path: Path
    classes: frozenset[int]
    present_classes: frozenset[int] = frozenset()
    known_size: tuple[int, int] | None = None
    loader: MaskLoader | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.present_classes >= self.classes:
            object.__setattr__(self, "present_classes", self.present_classes | self.classes)

    @functools.cached_property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the image (from the annotation file when known, else the header)."""
        return self.known_size if self.known_size is not None else image_size(self.image_path)

    def image(self) -> np.ndarray:
        """The image as an ``(H, W, 3) uint8`` RGB array; its size must match :attr:`size`."""
        img = read_image(self.image_path)
        if self.known_size is not None and img.shape[:2] != tuple(self.known_size):
            h, w = self.known_size
            raise InputError(
                f"{self.image_path}: image is {img.shape[1]}x{img.shape[0]} (WxH) but its "
                f"annotations say {w}x{h}"
            )
        return img

    def mask(self, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``(foreground, ignore)`` ``(H, W)`` bool masks of ``class_id`` in this image."""
        if self.loader is None:
            raise InputError(f"{self.key}: sample has no masks")
        return self.loader(self, int(class_id))

    def instances(self, class_id: int) -> list[np.ndarray]:
        """The separate objects of ``class_id`` in this image, one bool ``(H, W)`` mask each
        (from a loader that knows them, e.g. COCO's annotations; otherwise the class mask
        as one object, or none when it is empty)."""
        per_object = getattr(self.loader, "instances", None)
        if callable(per_object):
            return list(per_object(self, int(class_id)))
        fg, _ = self.mask(class_id)
        return [fg] if fg.any() else []


@dataclass(frozen=True)
class Episode:
    """A few-shot episode: ``k`` reference samples and one target sample of one class.

    ``annotation`` is the kind of reference annotation to derive from the reference masks
    (one of :data:`ANNOTATION_KINDS`); ``annotation_seed`` seeds that derivation (points,
    scribbles, box jitter) so an episode means the same prompts everywhere.
    """

    references: tuple[Sample, ...]
    target: Sample
    class_id: int
    class_name: str = ""
    annotation: str = "mask"
    annotation_seed: int = 0

    @property
    def shots(self) -> int:
        """Number of reference samples."""
        return len(self.references)


class Dataset:
    """An ordered, immutable collection of :class:`Sample` with class names and lookups.

    ``class_names`` maps every class id the dataset knows (1-based) to its name, including
    classes no sample currently uses. ``stats`` holds loader counters (duplicates dropped,
    images without masks, pairs below the area threshold...).
    """

    def __init__(
        self,
        samples: Iterable[Sample],
        class_names: Mapping[int, str],
        description: str = "",
        stats: Mapping[str, int] | None = None,
    ) -> None:
        self.samples: tuple[Sample, ...] = tuple(samples)
        self.class_names: dict[int, str] = {int(k): str(v) for k, v in sorted(class_names.items())}
        self.description = description
        self.stats: dict[str, int] = dict(stats or {})
        self._by_key: dict[str, Sample] = {}
        by_class: dict[int, list[Sample]] = {}
        for s in self.samples:
            if s.key in self._by_key:
                raise InputError(f"{description or 'dataset'}: duplicate sample key {s.key!r}")
            self._by_key[s.key] = s
            for c in s.classes:
                by_class.setdefault(c, []).append(s)
        unknown = set(by_class) - set(self.class_names)
        if unknown:
            raise InputError(f"{description or 'dataset'}: unnamed class ids {sorted(unknown)}")
        self._by_class = {c: tuple(sorted(v, key=lambda s: s.key)) for c, v in by_class.items()}

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.description!r}, {len(self.samples)} samples, "
            f"{len(self.class_ids)}/{len(self.class_names)} classes used)"
        )

    @property
    def class_ids(self) -> tuple[int, ...]:
        """Sorted ids of the classes at least one sample can be used for."""
        return tuple(sorted(self._by_class))

    def sample(self, key: str) -> Sample:
        """The sample with this key; :class:`InputError` if there is none."""
        try:
            return self._by_key[key]
        except KeyError:
            raise InputError(f"{self.description or 'dataset'}: no sample {key!r}") from None

    def samples_with_class(self, class_id: int) -> tuple[Sample, ...]:
        """Samples usable for ``class_id``, sorted by key (empty if none)."""
        return self._by_class.get(int(class_id), ())

    def restrict(
        self,
        classes: Iterable[int],
        *,
        exclude_images_with: Iterable[int] = (),
        description: str | None = None,
    ) -> Dataset:
        """A dataset whose samples only offer ``classes``.

        Samples left with no class are dropped, and so is every sample where any class in
        ``exclude_images_with`` is present at all (``present_classes``, no area filter).
        """
        keep = frozenset(int(c) for c in classes)
        exclude = frozenset(int(c) for c in exclude_images_with)
        out: list[Sample] = []
        for s in self.samples:
            if s.present_classes & exclude:
                continue
            cls = s.classes & keep
            if cls:
                out.append(replace(s, classes=cls))
        return Dataset(out, self.class_names, description or self.description, self.stats)
