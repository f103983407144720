"""The objects Stable-SAM's plugin trains on, gathered from several datasets.

An object is one mask of one image: a COCO-style *instance* (an annotation), or the *class*
mask (the union of a class's instances, the object :func:`prosam.stable.robustness` scores),
or a connected *component* of the class mask. :class:`TrainingObjects` lists them by
reference (dataset, sample, class, index) and loads image and mask only when an object is
drawn, so tens of thousands of objects cost no memory.

``mode`` chooses what counts:

- ``instances``: every annotated instance (Stable-SAM's objects);
- ``classes``: every class mask;
- ``both`` (the default of ``prosam stable train``): every instance, plus the class mask of
  each class that has several instances in the image, since the robustness protocol prompts
  the union of a class's instances;
- ``components``: 8-connected components of the class masks.

Crowd regions are never objects (they are the ``ignore`` mask of their class).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from prosam.data.types import Dataset, Sample
from prosam.errors import InputError
from prosam.stable.objects import ObjectItem, object_masks

__all__ = [
    "OBJECT_MODES",
    "ObjectRef",
    "TrainingObjects",
    "evenly_spaced_per_class",
    "held_out_keys",
    "without_keys",
]

OBJECT_MODES = ("both", "instances", "classes", "components")
CLASS_MASK = -1


@dataclass(frozen=True)
class ObjectRef:
    """Where an object lives: dataset ``source``, sample index, class, and ``index`` (an
    instance or component number, or ``-1`` for the class mask)."""

    source: int
    sample: int
    class_id: int
    index: int


def _candidates(sample: Sample, class_id: int, mode: str) -> list[tuple[int, np.ndarray]]:
    if mode == "classes":
        return [(CLASS_MASK, sample.mask(class_id)[0])]
    if mode == "components":
        fg, _ = sample.mask(class_id)
        return list(enumerate(object_masks(fg, split_components=True)))
    instances = sample.instances(class_id)
    out = list(enumerate(instances))
    if mode == "both" and len(instances) > 1:
        out.append((CLASS_MASK, sample.mask(class_id)[0]))
    return out


class TrainingObjects(Sequence[ObjectItem]):
    """Objects of ``datasets`` (see the module docstring for ``mode``), each with at least
    ``min_pixels`` pixels and ``min_area_fraction`` of its image."""

    def __init__(
        self,
        datasets: Sequence[Dataset],
        *,
        mode: str = "both",
        min_area_fraction: float = 0.0,
        min_pixels: int = 16,
        progress: bool = False,
    ) -> None:
        if mode not in OBJECT_MODES:
            raise InputError(f"object mode {mode!r}: expected one of {', '.join(OBJECT_MODES)}")
        self.datasets = tuple(datasets)
        self.mode = mode
        refs: list[ObjectRef] = []
        pairs = [(d, i, s) for d, ds in enumerate(self.datasets) for i, s in enumerate(ds.samples)]
        if progress:
            from tqdm.auto import tqdm

            pairs = tqdm(pairs, desc="listing objects", unit="image")
        for d, i, sample in pairs:
            for class_id in sorted(sample.classes):
                for index, mask in _candidates(sample, class_id, mode):
                    area = int(mask.sum())
                    if area >= max(min_pixels, 1) and area >= min_area_fraction * mask.size:
                        refs.append(ObjectRef(d, i, class_id, index))
        self.refs: tuple[ObjectRef, ...] = tuple(refs)

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> ObjectItem:  # type: ignore[override]
        ref = self.refs[i]
        sample = self.datasets[ref.source].samples[ref.sample]
        fg, ignore = sample.mask(ref.class_id)
        if ref.index == CLASS_MASK:
            mask = fg
        elif self.mode == "components":
            mask = object_masks(fg, split_components=True)[ref.index]
        else:
            mask = sample.instances(ref.class_id)[ref.index]
        return ObjectItem(sample.image(), mask, ignore, self.key(i))

    def __iter__(self) -> Iterator[ObjectItem]:
        return (self[i] for i in range(len(self)))

    def key(self, i: int) -> str:
        """``<sample key>#<class>.<index>`` (``c`` for the class mask)."""
        ref = self.refs[i]
        sample = self.datasets[ref.source].samples[ref.sample]
        index = "c" if ref.index == CLASS_MASK else str(ref.index)
        return f"{sample.key}#{ref.class_id}.{index}"

    def counts(self) -> dict[str, int]:
        """Objects per source dataset (by its description)."""
        out: dict[str, int] = {}
        for ref in self.refs:
            name = self.datasets[ref.source].description or f"dataset {ref.source}"
            out[name] = out.get(name, 0) + 1
        return out


def evenly_spaced_per_class(dataset: Dataset, n: int) -> Dataset:
    """At most ``n`` samples per class, evenly spaced in key order (frames of a video
    sequence are near-duplicates; a few per sequence carry its information)."""
    if n < 1:
        raise InputError("need at least one image per class")
    keep: set[str] = set()
    for class_id in dataset.class_ids:
        samples = dataset.samples_with_class(class_id)
        picks = np.unique(np.linspace(0, len(samples) - 1, min(n, len(samples))).round())
        keep.update(samples[int(j)].key for j in picks)
    return Dataset(
        [s for s in dataset if s.key in keep],
        dataset.class_names,
        f"{dataset.description} ({n} per class)",
        dataset.stats,
    )


def held_out_keys(dataset: Dataset, fraction: float, seed: int = 0) -> frozenset[str]:
    """A stable pseudo-random ``fraction`` of ``dataset``'s image keys (by hashing key and
    seed, so adding images elsewhere does not move the choice)."""
    if not 0.0 <= fraction < 1.0:
        raise InputError("the validation fraction must be in [0, 1)")

    def unit(key: str) -> float:
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64

    return frozenset(s.key for s in dataset if unit(s.key) < fraction)


def without_keys(dataset: Dataset, keys: Iterable[str], *, keep: bool = False) -> Dataset:
    """``dataset`` without the samples whose key is in ``keys`` (with ``keep``: only them)."""
    keys = frozenset(keys)
    samples = [s for s in dataset if (s.key in keys) == keep]
    return Dataset(samples, dataset.class_names, dataset.description, dataset.stats)
