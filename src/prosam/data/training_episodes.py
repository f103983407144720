"""Training episodes that cannot be solved without reading the reference.

A standard 1-shot episode (:func:`prosam.data.episodes.make_episodes`) can often be solved
by segmenting the target's most salient object, whatever the reference shows; a prompt
encoder trained only on those learns to ignore its reference. Three kinds of episode
break that shortcut:

- *paired*: one target image holding two training classes appears twice, back to back,
  with a reference of each class and each class's ground truth; the two halves of a pair
  always share a batch (:func:`batch_units`), so the only way to get both right is to read
  the reference;
- *absent*: the target does not show the reference's class at all (not even below the
  area filter), and its ground truth is empty: "not in this image" is a valid answer;
- *distractor*: the target shows the class, but another annotated class covers more of it.

:class:`EpisodeMix` sets the fraction of each kind in an epoch (the rest are standard);
:func:`mixed_episode_units` draws an epoch's episodes as *units* (a pair is one unit of two
episodes, every other episode a unit of one), shuffled, seeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prosam.data.episodes import make_episodes
from prosam.data.types import Dataset, Episode, Sample
from prosam.errors import InputError

__all__ = [
    "ClassAreas",
    "EpisodeMix",
    "absent_episodes",
    "batch_units",
    "distractor_episodes",
    "episode_truth",
    "is_absent",
    "mixed_episode_units",
    "paired_episodes",
]


@dataclass(frozen=True)
class EpisodeMix:
    """Fractions of paired (counted in episodes, two per pair), absent-target and
    distractor episodes in an epoch; the rest are standard."""

    paired: float = 0.0
    absent: float = 0.0
    distractor: float = 0.0

    def __post_init__(self) -> None:
        parts = (self.paired, self.absent, self.distractor)
        if any(not 0.0 <= p <= 1.0 for p in parts) or sum(parts) > 1.0 + 1e-9:
            raise InputError(
                "episode mix fractions must be in [0, 1] and sum to at most 1, got "
                f"paired={self.paired}, absent={self.absent}, distractor={self.distractor}"
            )

    @property
    def standard(self) -> float:
        return max(0.0, 1.0 - self.paired - self.absent - self.distractor)


def is_absent(episode: Episode) -> bool:
    """Whether the target does not show the episode's class at all."""
    return episode.class_id not in episode.target.present_classes


def episode_truth(episode: Episode) -> tuple[np.ndarray, np.ndarray]:
    """``(foreground, ignore)`` of the target for the episode's class: empty for an absent
    target."""
    if is_absent(episode):
        h, w = episode.target.size
        empty = np.zeros((h, w), dtype=bool)
        return empty, empty.copy()
    return episode.target.mask(episode.class_id)


class ClassAreas:
    """Foreground fraction of each usable class in each image, computed once on demand."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._areas: dict[str, dict[int, float]] = {}

    def of(self, sample: Sample) -> dict[int, float]:
        """``{class_id: area fraction}`` of ``sample``'s usable classes."""
        if sample.key not in self._areas:
            self._areas[sample.key] = {
                c: float(sample.mask(c)[0].mean()) for c in sorted(sample.classes)
            }
        return self._areas[sample.key]


def _episode(
    dataset: Dataset,
    reference: Sample,
    target: Sample,
    class_id: int,
    annotation: str,
    rng: np.random.Generator,
) -> Episode:
    return Episode(
        references=(reference,),
        target=target,
        class_id=class_id,
        class_name=dataset.class_names.get(class_id, ""),
        annotation=annotation,
        annotation_seed=int(rng.integers(2**31 - 1)),
    )


def _reference(
    dataset: Dataset, class_id: int, target: Sample, rng: np.random.Generator
) -> Sample | None:
    pool = [s for s in dataset.samples_with_class(class_id) if s.key != target.key]
    return pool[int(rng.integers(len(pool)))] if pool else None


def paired_episodes(
    dataset: Dataset,
    classes: Sequence[int],
    n_pairs: int,
    rng: np.random.Generator,
    annotation: str = "mask",
) -> list[tuple[Episode, Episode]]:
    """``n_pairs`` pairs: a target holding two of ``classes``, with a reference of each."""
    wanted = set(int(c) for c in classes)
    targets = [
        s
        for s in dataset
        if len([c for c in s.classes & wanted if len(dataset.samples_with_class(c)) > 1]) >= 2
    ]
    if n_pairs and not targets:
        raise InputError("paired episodes need images that hold two training classes")
    out = []
    for _ in range(n_pairs):
        target = targets[int(rng.integers(len(targets)))]
        usable = sorted(
            c for c in target.classes & wanted if len(dataset.samples_with_class(c)) > 1
        )
        a, b = (int(c) for c in rng.choice(usable, size=2, replace=False))
        ref_a, ref_b = _reference(dataset, a, target, rng), _reference(dataset, b, target, rng)
        assert ref_a is not None and ref_b is not None  # usable classes have another image
        out.append(
            (
                _episode(dataset, ref_a, target, a, annotation, rng),
                _episode(dataset, ref_b, target, b, annotation, rng),
            )
        )
    return out


def absent_episodes(
    dataset: Dataset,
    classes: Sequence[int],
    n: int,
    rng: np.random.Generator,
    annotation: str = "mask",
) -> list[Episode]:
    """``n`` episodes whose target does not show the reference's class at all."""
    eligible = [int(c) for c in sorted(set(classes)) if dataset.samples_with_class(c)]
    wanted = set(eligible)
    targets = [s for s in dataset if s.classes & wanted]
    out: list[Episode] = []
    for _ in range(n):
        for _attempt in range(100):
            class_id = eligible[int(rng.integers(len(eligible)))]
            target = targets[int(rng.integers(len(targets)))]
            if class_id not in target.present_classes:
                break
        else:
            raise InputError("no training image lacks the drawn classes: no absent episodes")
        ref = _reference(dataset, class_id, target, rng)
        assert ref is not None
        out.append(_episode(dataset, ref, target, class_id, annotation, rng))
    return out


def distractor_episodes(
    dataset: Dataset,
    classes: Sequence[int],
    n: int,
    rng: np.random.Generator,
    annotation: str = "mask",
    areas: ClassAreas | None = None,
) -> list[Episode]:
    """``n`` episodes whose target shows the class and, larger, another annotated class."""
    areas = areas or ClassAreas(dataset)
    wanted = set(int(c) for c in classes)
    candidates = []
    for s in dataset:
        if len(s.classes) < 2 or not s.classes & wanted:
            continue
        area = areas.of(s)
        for c in sorted(s.classes & wanted):
            if (
                len(dataset.samples_with_class(c)) > 1
                and max(a for d, a in area.items() if d != c) > area[c]
            ):
                candidates.append((s, c))
    if n and not candidates:
        raise InputError("distractor episodes need images where another class covers more")
    out = []
    for _ in range(n):
        target, class_id = candidates[int(rng.integers(len(candidates)))]
        ref = _reference(dataset, class_id, target, rng)
        assert ref is not None
        out.append(_episode(dataset, ref, target, class_id, annotation, rng))
    return out


def mixed_episode_units(
    dataset: Dataset,
    classes: Sequence[int],
    n: int,
    mix: EpisodeMix,
    seed: int,
    annotation: str = "mask",
    areas: ClassAreas | None = None,
) -> list[tuple[Episode, ...]]:
    """About ``n`` episodes in the proportions of ``mix``, as shuffled units (see the module
    docstring); the same arguments give the same units."""
    rng = np.random.default_rng([seed, 7])
    n_pairs = round(n * mix.paired / 2)
    n_absent = round(n * mix.absent)
    n_distractor = round(n * mix.distractor)
    n_standard = max(0, n - 2 * n_pairs - n_absent - n_distractor)
    units: list[tuple[Episode, ...]] = [
        (e,)
        for e in make_episodes(dataset, classes, n=n_standard, seed=seed, annotation=annotation)
    ]
    units += paired_episodes(dataset, classes, n_pairs, rng, annotation)
    units += [(e,) for e in absent_episodes(dataset, classes, n_absent, rng, annotation)]
    units += [
        (e,) for e in distractor_episodes(dataset, classes, n_distractor, rng, annotation, areas)
    ]
    order = rng.permutation(len(units))
    return [units[int(i)] for i in order]


def batch_units(units: Sequence[tuple[Episode, ...]], batch_size: int) -> list[list[Episode]]:
    """Batches of about ``batch_size`` episodes that never split a unit (a pair): a unit
    that does not fit starts the next batch; one larger than ``batch_size`` is a batch."""
    if batch_size < 1:
        raise InputError("batch_size must be at least 1")
    batches: list[list[Episode]] = []
    current: list[Episode] = []
    for unit in units:
        if current and len(current) + len(unit) > batch_size:
            batches.append(current)
            current = []
        current.extend(unit)
    if current:
        batches.append(current)
    return batches
