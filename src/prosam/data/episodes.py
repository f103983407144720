"""Seeded few-shot episodes, their JSON files, and splitting work across ranks.

An episode file stores sample keys (relative image file names), never pixels, so it is only
meaningful together with the dataset it was drawn from; :func:`load_episodes` checks every
key and class name against that dataset and the stored hash against the episodes.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from prosam.data.types import ANNOTATION_KINDS, Dataset, Episode, Sample
from prosam.errors import InputError
from prosam.io import write_bytes_atomic
from prosam.prompts import simulate_annotation

T = TypeVar("T")

EPISODE_FORMAT = "prosam-episodes"
EPISODE_VERSION = 1
#: Format tag of multi-entity episode files (:mod:`prosam.data.multi_entity`).
MULTI_ENTITY_FORMAT = "prosam-multi-entity-episodes"


def make_episodes(
    dataset: Dataset,
    classes: Iterable[int],
    n: int = 1000,
    shots: int = 1,
    seed: int = 0,
    annotation: str = "mask",
) -> list[Episode]:
    """Draw ``n`` episodes: a class uniformly, then a target and ``shots`` distinct references.

    References are distinct samples of that class, none of them the target. Classes with
    fewer than ``shots + 1`` samples are skipped with a warning. The same dataset, arguments
    and seed give the same episodes (numpy ``PCG64``); each episode gets its own
    ``annotation_seed`` drawn from the same stream.
    """
    if annotation not in ANNOTATION_KINDS:
        raise InputError(f"unknown annotation {annotation!r}; one of {', '.join(ANNOTATION_KINDS)}")
    if shots < 1 or n < 0:
        raise InputError(f"need shots >= 1 and n >= 0, got shots={shots}, n={n}")
    requested = sorted({int(c) for c in classes})
    eligible = [c for c in requested if len(dataset.samples_with_class(c)) > shots]
    skipped = sorted(set(requested) - set(eligible))
    if skipped:
        warnings.warn(
            f"{len(skipped)} classes have fewer than {shots + 1} samples and were skipped: "
            f"{skipped}",
            stacklevel=2,
        )
    if not eligible and n:
        raise InputError(f"no class has {shots + 1} or more samples in {dataset.description}")
    rng = np.random.default_rng(seed)
    episodes: list[Episode] = []
    for _ in range(n):
        class_id = eligible[int(rng.integers(len(eligible)))]
        pool = dataset.samples_with_class(class_id)
        t = int(rng.integers(len(pool)))
        picks = rng.choice(len(pool) - 1, size=shots, replace=False)
        refs = tuple(pool[int(i) + (int(i) >= t)] for i in picks)
        episodes.append(
            Episode(
                references=refs,
                target=pool[t],
                class_id=class_id,
                class_name=dataset.class_names.get(class_id, ""),
                annotation=annotation,
                annotation_seed=int(rng.integers(2**31 - 1)),
            )
        )
    return episodes


def _record(ep: Episode) -> dict[str, Any]:
    return {
        "references": [s.key for s in ep.references],
        "target": ep.target.key,
        "class_id": ep.class_id,
        "class_name": ep.class_name,
        "annotation": ep.annotation,
        "annotation_seed": ep.annotation_seed,
    }


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def records_hash(records: Sequence[Mapping[str, Any]]) -> str:
    """sha256 hex digest of a list of episode records' canonical JSON."""
    return hashlib.sha256(_canonical(list(records))).hexdigest()


def episodes_hash(episodes: Iterable[Episode]) -> str:
    """sha256 hex digest of the episodes' canonical JSON (keys, classes, annotations)."""
    return records_hash([_record(e) for e in episodes])


def write_episode_file(
    path: str | os.PathLike[str],
    fmt: str,
    version: int,
    records: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
) -> str:
    """Atomically write episode ``records`` with their format tag, ``meta``, count and hash.

    Returns the records' hash (:func:`records_hash`), which is stored in the file too.
    """
    digest = records_hash(records)
    doc = {
        "format": fmt,
        "version": version,
        "meta": dict(meta),
        "count": len(records),
        "hash": digest,
        "episodes": list(records),
    }
    try:
        text = json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError) as err:
        raise InputError(f"episode meta is not JSON-serialisable ({err})") from err
    write_bytes_atomic(path, (text + "\n").encode("utf-8"))
    return digest


_FORMAT_NAMES = {
    EPISODE_FORMAT: "prosam episode file",
    MULTI_ENTITY_FORMAT: "prosam multi-entity episode file",
}


def read_episode_file(path: str | os.PathLike[str], fmt: str, version: int) -> dict[str, Any]:
    """The JSON document of an episode file of format ``fmt`` and ``version``.

    :class:`InputError` if it is missing, unreadable, of another format or version.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such file") from err
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable episode file ({err})") from err
    found = doc.get("format") if isinstance(doc, dict) else None
    if found != fmt:
        wanted = _FORMAT_NAMES.get(fmt, fmt)
        other = f" (it is a {_FORMAT_NAMES[found]})" if found in _FORMAT_NAMES else ""
        raise InputError(f"{path}: not a {wanted}{other}")
    if doc.get("version") != version:
        raise InputError(f"{path}: episode file version {doc.get('version')} is not supported")
    return doc


def check_class(dataset: Dataset, class_id: int, name: str) -> None:
    """:class:`InputError` unless ``dataset`` knows ``class_id`` (by ``name``, when given)."""
    known = dataset.class_names.get(class_id)
    if known is None or (name and name != known):
        raise InputError(
            f"class {class_id} {name!r}, but the dataset {dataset.description} calls it {known!r}"
        )


def record_class(dataset: Dataset, rec: Mapping[str, Any], episode: int) -> tuple[int, str]:
    """A record's ``(class_id, class_name)``, checked against ``dataset`` (:func:`check_class`)."""
    class_id = int(rec["class_id"])
    name = str(rec.get("class_name", ""))
    try:
        check_class(dataset, class_id, name)
    except InputError as err:
        raise InputError(f"episode {episode} has {err}") from None
    return class_id, name


def read_episode_records(
    path: str | os.PathLike[str],
    fmt: str,
    version: int,
    parse: Callable[[int, Mapping[str, Any]], T],
    digest: Callable[[list[T]], str],
) -> tuple[list[T], dict[str, Any]]:
    """``(items, meta)`` of an episode file: ``parse(index, record)`` each, hash checked."""
    doc = read_episode_file(path, fmt, version)
    try:
        items = [parse(i, rec) for i, rec in enumerate(doc["episodes"])]
    except InputError as err:
        raise InputError(f"{path}: {err}") from err
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: malformed episode record ({err!r})") from err
    if digest(items) != doc.get("hash"):
        raise InputError(f"{path}: episodes do not match the stored hash (edited or corrupt)")
    return items, dict(doc.get("meta", {}))


def save_episodes(
    path: str | os.PathLike[str], episodes: Sequence[Episode], meta: Mapping[str, Any]
) -> str:
    """Write episodes and ``meta`` (dataset description, fold, shots, seed...) to a JSON file.

    The write is atomic. Returns the episodes' hash, which is stored in the file too.
    """
    records = [_record(e) for e in episodes]
    return write_episode_file(path, EPISODE_FORMAT, EPISODE_VERSION, records, meta)


def load_episodes(
    path: str | os.PathLike[str], dataset: Dataset
) -> tuple[list[Episode], dict[str, Any]]:
    """Read an episode file against ``dataset``; returns ``(episodes, meta)``.

    :class:`InputError` if the file is not an episode file, names a sample or class the
    dataset lacks, or no longer matches its stored hash.
    """

    def parse(i: int, rec: Mapping[str, Any]) -> Episode:
        class_id, name = record_class(dataset, rec, i)
        return Episode(
            references=tuple(dataset.sample(k) for k in rec["references"]),
            target=dataset.sample(rec["target"]),
            class_id=class_id,
            class_name=name,
            annotation=str(rec["annotation"]),
            annotation_seed=int(rec["annotation_seed"]),
        )

    return read_episode_records(path, EPISODE_FORMAT, EPISODE_VERSION, parse, episodes_hash)


def split_for_rank(items: Sequence[T], rank: int, world: int) -> list[T]:
    """This rank's share of ``items``: ``items[rank::world]``.

    Every item goes to exactly one rank and none is dropped or repeated, so shares may differ
    in length by one when ``len(items)`` is not a multiple of ``world`` (gather with padding
    or per-rank counts, not a fixed-size all-gather).
    """
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"rank {rank} is not in 0..{world - 1}")
    return list(items[rank::world])


def rank_and_world_from_env() -> tuple[int, int]:
    """``(rank, world_size)`` from ``RANK`` and ``WORLD_SIZE``; ``(0, 1)`` when unset."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InputError(
            f"the environment sets RANK={os.environ.get('RANK', '')!r} and "
            f"WORLD_SIZE={os.environ.get('WORLD_SIZE', '')!r}: both must be whole numbers "
            "(or unset them; --shard I/N does the same)"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return rank, world


def _target_key(item: object) -> str:
    if isinstance(item, Sample):
        return item.key
    target = getattr(item, "target", None)  # an Episode, a MultiEntityEpisode...
    if isinstance(target, Sample):
        return target.key
    return str(item)


def validation_test_split(
    items: Sequence[T], fraction: float, seed: int = 0
) -> tuple[list[T], list[T]]:
    """Split episodes (single- or multi-entity, or samples, or keys) into ``(validation, test)``
    by target image.

    About ``fraction`` of the distinct target images (rounded) go to validation, with all
    their items; no target image is in both parts. Items keep their order. Only targets are
    kept apart: a validation episode may still use a test target as a reference.
    """
    if not 0.0 <= fraction <= 1.0:
        raise InputError(f"fraction must be in [0, 1], got {fraction}")
    keys = sorted({_target_key(it) for it in items})
    order = np.random.default_rng(seed).permutation(len(keys))
    n_val = round(fraction * len(keys))
    val_keys = {keys[int(i)] for i in order[:n_val]}
    val = [it for it in items if _target_key(it) in val_keys]
    test = [it for it in items if _target_key(it) not in val_keys]
    return val, test


def reference_annotation(
    sample: Sample, class_id: int, kind: str, seed: int, index: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The simulated annotation of ``sample``'s class mask and the mask itself.

    Reference ``index`` of an episode draws from ``default_rng([seed, index])`` so each of
    the k references gets its own, reproducible annotation.
    """
    mask, _ = sample.mask(class_id)
    rng = np.random.default_rng([seed, index])
    return simulate_annotation(mask, kind, rng), mask  # type: ignore[arg-type]
