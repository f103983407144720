"""Seeded multi-entity episodes: one target image, several classes to segment in it at once.

Each entity of an episode is one class present in the target, with its own reference
images (none of them the target) and its own simulated annotation. The JSON files work
like single-entity ones (:mod:`prosam.data.episodes`): sample keys only, checked against
the dataset on loading, with a sha256 of the episodes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prosam.data.episodes import (
    MULTI_ENTITY_FORMAT,
    read_episode_records,
    record_class,
    records_hash,
    write_episode_file,
)
from prosam.data.types import ANNOTATION_KINDS, Dataset, Episode, Sample
from prosam.errors import InputError

MULTI_ENTITY_VERSION = 1


@dataclass(frozen=True)
class EpisodeEntity:
    """One class to segment in a multi-entity episode, with its references and annotation."""

    class_id: int
    class_name: str
    references: tuple[Sample, ...]
    annotation: str = "mask"
    annotation_seed: int = 0

    @property
    def shots(self) -> int:
        """Number of reference samples."""
        return len(self.references)


@dataclass(frozen=True)
class MultiEntityEpisode:
    """A target sample and the entities (distinct classes present in it) to segment."""

    target: Sample
    entities: tuple[EpisodeEntity, ...]

    @property
    def class_ids(self) -> tuple[int, ...]:
        """The entities' class ids, in entity order."""
        return tuple(e.class_id for e in self.entities)

    def entity_episode(self, index: int) -> Episode:
        """Entity ``index`` as a single-entity :class:`Episode` on the same target."""
        e = self.entities[index]
        return Episode(
            e.references, self.target, e.class_id, e.class_name, e.annotation, e.annotation_seed
        )


def make_multi_entity_episodes(
    dataset: Dataset,
    classes: Iterable[int],
    n: int,
    *,
    entities: int = 2,
    shots: int = 1,
    seed: int = 0,
    annotation: str = "mask",
) -> list[MultiEntityEpisode]:
    """Draw ``n`` episodes, each a target showing ``entities`` of ``classes`` and references.

    Eligible targets are the samples offering at least ``entities`` of ``classes`` that
    each have ``shots`` other samples. Targets are drawn without replacement (a fresh
    seeded permutation of the eligible targets, in key order, each time they run out);
    then ``entities`` distinct eligible classes of the target (listed in class-id order),
    and for each ``shots`` distinct references of that class other than the target, and an
    ``annotation_seed``. The same dataset, arguments and seed give the same episodes.
    """
    if annotation not in ANNOTATION_KINDS:
        raise InputError(f"unknown annotation {annotation!r}; one of {', '.join(ANNOTATION_KINDS)}")
    if entities < 1 or shots < 1 or n < 0:
        raise InputError(
            f"need entities >= 1, shots >= 1 and n >= 0, got entities={entities}, "
            f"shots={shots}, n={n}"
        )
    requested = {int(c) for c in classes}
    usable = {c for c in requested if len(dataset.samples_with_class(c)) > shots}
    targets: list[tuple[Sample, list[int]]] = []
    most = 0
    for sample in sorted(dataset.samples, key=lambda s: s.key):
        offered = sorted(sample.classes & usable)
        most = max(most, len(offered))
        if len(offered) >= entities:
            targets.append((sample, offered))
    if not targets and n:
        raise InputError(
            f"no image of {dataset.description or 'the dataset'} shows {entities} of the "
            f"{len(requested)} requested classes (each with {shots} other image(s) for "
            f"references); the most any image shows is {most}"
        )
    rng = np.random.default_rng(seed)
    order: list[int] = []
    episodes: list[MultiEntityEpisode] = []
    for _ in range(n):
        if not order:
            order = [int(i) for i in rng.permutation(len(targets))]
        target, offered = targets[order.pop(0)]
        picked = sorted(offered[int(i)] for i in rng.choice(len(offered), entities, replace=False))
        drawn = []
        for class_id in picked:
            pool = [s for s in dataset.samples_with_class(class_id) if s.key != target.key]
            refs = tuple(pool[int(i)] for i in rng.choice(len(pool), shots, replace=False))
            drawn.append(
                EpisodeEntity(
                    class_id=class_id,
                    class_name=dataset.class_names.get(class_id, ""),
                    references=refs,
                    annotation=annotation,
                    annotation_seed=int(rng.integers(2**31 - 1)),
                )
            )
        episodes.append(MultiEntityEpisode(target, tuple(drawn)))
    return episodes


def _record(ep: MultiEntityEpisode) -> dict[str, Any]:
    return {
        "target": ep.target.key,
        "entities": [
            {
                "class_id": e.class_id,
                "class_name": e.class_name,
                "references": [s.key for s in e.references],
                "annotation": e.annotation,
                "annotation_seed": e.annotation_seed,
            }
            for e in ep.entities
        ],
    }


def multi_entity_hash(episodes: Iterable[MultiEntityEpisode]) -> str:
    """sha256 hex digest of the episodes' canonical JSON (keys, classes, annotations)."""
    return records_hash([_record(e) for e in episodes])


def save_multi_entity_episodes(
    path: str | os.PathLike[str], episodes: Sequence[MultiEntityEpisode], meta: Mapping[str, Any]
) -> str:
    """Write episodes and ``meta`` to a JSON file (atomically); returns their hash."""
    records = [_record(e) for e in episodes]
    return write_episode_file(path, MULTI_ENTITY_FORMAT, MULTI_ENTITY_VERSION, records, meta)


def load_multi_entity_episodes(
    path: str | os.PathLike[str], dataset: Dataset
) -> tuple[list[MultiEntityEpisode], dict[str, Any]]:
    """Read a multi-entity episode file against ``dataset``; returns ``(episodes, meta)``.

    :class:`InputError` if the file is not such a file, names a sample or class the
    dataset lacks, or no longer matches its stored hash.
    """

    def parse(i: int, rec: Mapping[str, Any]) -> MultiEntityEpisode:
        drawn = []
        for ent in rec["entities"]:
            class_id, name = record_class(dataset, ent, i)
            drawn.append(
                EpisodeEntity(
                    class_id=class_id,
                    class_name=name,
                    references=tuple(dataset.sample(k) for k in ent["references"]),
                    annotation=str(ent["annotation"]),
                    annotation_seed=int(ent["annotation_seed"]),
                )
            )
        return MultiEntityEpisode(dataset.sample(rec["target"]), tuple(drawn))

    return read_episode_records(
        path, MULTI_ENTITY_FORMAT, MULTI_ENTITY_VERSION, parse, multi_entity_hash
    )
