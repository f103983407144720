"""The resumable auto-labelling job: fitted methods, thousands of targets, standard outputs.

``OUT`` holds, besides the outputs of :mod:`prosam.label.writers`:

- ``job.json``: the configuration (classes, thresholds, method, references' digest); a
  rerun with a different one is refused, so records of two configurations never mix;
- ``targets.json``: the full sorted target list with each target's key (file stem, made
  unique), relative ``file_name`` and COCO image id (its 1-based position);
- ``records/<key>.json``: one per finished target, written last and atomically, holding
  everything the outputs need (mask RLE, score, uncertainty), so a target with a record is
  done and ``coco.json`` is rebuilt from records;
- ``failures/<key>.json`` per failed target and ``failures.json``, the list of them.

Killed at any point and rerun with the same command, a job skips the targets that have a
record (rewriting a half-finished target's files whole, each write being atomic) and ends
with the same files as an uninterrupted run. Failed targets are retried on a rerun.

Empty targets: a class's mask is dropped when the method's score is below
``score_threshold`` or the mask covers less than ``min_area_fraction`` of the image. The
defaults (0.0 and 1e-4) drop only empty masks and specks (10x10 pixels on a 1-megapixel
image), which SAM's upsampled logits leave where nothing matches; they filter on no score,
because SAM's predicted IoU (the score of every prosam method) says how clean a mask is,
not whether the object is present, and no threshold of it separated absent objects without
calibration on the user's data. Records keep every class's raw score, kept or not, so a
threshold can be chosen afterwards from them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from prosam.errors import InputError, ProsamError
from prosam.io import read_image, write_bytes_atomic
from prosam.label.defaults import (
    DEFAULT_CLASS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_AREA_FRACTION,
    DEFAULT_SCORE_THRESHOLD,
)
from prosam.label.writers import (
    FORMATS,
    CocoWriter,
    LabelMask,
    Writer,
    decode_mask,
    encode_mask,
    make_writer,
)
from prosam.methods.base import ReferenceMethod, Target
from prosam.sam.predictor import ImageEmbedding, Predictor
from prosam.sam.transforms import original_size_mask, postprocess_logits

RECORD_VERSION = 1


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class TargetEntry:
    """A target in the full sorted list: where it is, its output key and COCO identity."""

    index: int
    path: Path
    key: str
    file_name: str

    @property
    def image_id(self) -> int:
        return self.index + 1


def plan_targets(paths: Sequence[str | os.PathLike[str]]) -> list[TargetEntry]:
    """Sort targets by path relative to their common folder and give each a unique key.

    The key is the file stem; stems shared by several targets (compared case-insensitively,
    as some file systems do) get ``-`` and 8 hex digits of the sha1 of the relative path, so
    keys do not depend on the order, the shard or the machine. A file listed twice is
    labelled once.
    """
    resolved: dict[Path, Path] = {}
    for p in paths:
        resolved.setdefault(Path(p).resolve(), Path(p))
    if not resolved:
        return []
    try:
        root = Path(os.path.commonpath([str(r.parent) for r in resolved]))
    except ValueError:  # different drives
        root = None
    items = sorted(
        ((r.relative_to(root).as_posix() if root else r.as_posix()), given)
        for r, given in resolved.items()
    )
    groups: dict[str, int] = {}
    for rel, _ in items:
        stem = Path(rel).stem.casefold()
        groups[stem] = groups.get(stem, 0) + 1
    entries, taken = [], set()
    for i, (rel, given) in enumerate(items):
        stem = Path(rel).stem
        digest = hashlib.sha1(rel.encode()).hexdigest()
        key = stem if groups[stem.casefold()] == 1 else f"{stem}-{digest[:8]}"
        if key.casefold() in taken:
            key = f"{stem}-{digest[:16]}"
        taken.add(key.casefold())
        entries.append(TargetEntry(i, given, key, rel))
    return entries


def load_target_image(
    path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read a target as RGB, refusing images of more than ``max_pixels`` before decoding."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except Exception:  # read_image below says what is wrong
        w = h = 0
    if w * h > max_pixels:
        raise InputError(f"{path}: image is {w}x{h} = {w * h} pixels, more than {max_pixels}")
    return read_image(path)


class _TargetImages(Dataset):
    """Decodes targets (in DataLoader workers): ``(position, image tensor or None, error)``."""

    def __init__(self, entries: Sequence[TargetEntry], max_pixels: int) -> None:
        self.entries = list(entries)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = load_target_image(self.entries[i].path, self.max_pixels)
        except Exception as err:
            return i, None, failure_reason(err)
        return i, torch.from_numpy(image), None


def _identity(item: Any) -> Any:
    return item


def failure_reason(err: BaseException) -> str:
    """One line saying why a target failed: prosam's message, else the exception's type too."""
    text = " ".join(str(err).split())
    if isinstance(err, ProsamError):
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# --------------------------------------------------------------------------- prediction


@dataclass
class ClassPrediction:
    """One class's answer on one image: the mask (empty when dropped), score, uncertainty."""

    class_name: str
    mask: np.ndarray
    score: float
    kept: bool
    uncertainty: float | None = None
    instances: list[tuple[np.ndarray, float]] = field(default_factory=list)


def uncertainty_in_mask(
    extras: Mapping[str, Any],
    mask: np.ndarray,
    embedded: ImageEmbedding,
    low_res_shape: tuple[int, ...],
) -> float | None:
    """Mean of a method's ``uncertainty`` map over ``mask`` at the original size (None when
    the method gives no map or the mask is empty)."""
    u = extras.get("uncertainty")
    if not isinstance(u, torch.Tensor) or not mask.any():
        return None
    u = u.float().reshape(1, 1, *u.shape[-2:])
    size = embedded.geometry.original_size
    if tuple(u.shape[-2:]) == tuple(low_res_shape[-2:]):
        u = postprocess_logits(u, embedded.geometry)
    elif tuple(u.shape[-2:]) != tuple(size):
        u = torch.nn.functional.interpolate(u, size, mode="bilinear", align_corners=False)
    values = u[0, 0].cpu().numpy()[mask]
    return float(values.mean())


@torch.inference_mode()
def predict_classes(
    methods: Mapping[str, ReferenceMethod],
    predictor: Predictor,
    image: np.ndarray,
    *,
    embedded: ImageEmbedding | None = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    min_area_fraction: float = DEFAULT_MIN_AREA_FRACTION,
) -> list[ClassPrediction]:
    """Embed ``image`` once and predict every class's mask at the image's size."""
    embedded = predictor.embed(image) if embedded is None else embedded
    target = Target(image, embedded)
    h, w = image.shape[:2]
    out = []
    for name, method in methods.items():
        result = method.predict(target)
        low_res = result.low_res_logits
        mask = original_size_mask(low_res, embedded.geometry, predictor.mask_threshold)
        area = int(mask.sum())
        kept = area > 0 and area >= min_area_fraction * h * w and result.score >= score_threshold
        if not kept:
            mask = np.zeros_like(mask)
        unc = uncertainty_in_mask(result.extras, mask, embedded, tuple(low_res.shape[-2:]))
        instances = []
        if kept:
            for inst in result.instances:
                m = original_size_mask(
                    inst.low_res_logits, embedded.geometry, predictor.mask_threshold
                )
                if m.any():
                    instances.append((m & mask, float(inst.score)))
        out.append(ClassPrediction(name, mask, float(result.score), kept, unc, instances))
    return out


def label_masks(predictions: Sequence[ClassPrediction]) -> list[LabelMask]:
    """The kept predictions as writer input."""
    return [
        LabelMask(p.class_name, p.mask, p.score, {"uncertainty": p.uncertainty}, p.instances)
        for p in predictions
        if p.kept
    ]


# --------------------------------------------------------------------------- records


def _write_json(path: Path, data: Any) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=1) + "\n").encode())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def make_record(
    entry: TargetEntry,
    size: tuple[int, int],
    predictions: Sequence[ClassPrediction],
    formats: Sequence[str],
) -> dict[str, Any]:
    """What a finished target leaves in ``records/<key>.json``."""
    return {
        "version": RECORD_VERSION,
        "key": entry.key,
        "file_name": entry.file_name,
        "source": str(entry.path),
        "height": int(size[0]),
        "width": int(size[1]),
        "classes": [
            {
                "class": p.class_name,
                "score": p.score,
                "kept": p.kept,
                "area": int(p.mask.sum()),
                "uncertainty": p.uncertainty,
                "rle": encode_mask(p.mask) if p.kept else None,
                "instances": [{"score": s, "rle": encode_mask(m)} for m, s in p.instances],
            }
            for p in predictions
        ],
        "formats": sorted(formats),
    }


def record_masks(record: Mapping[str, Any], *, decode: bool = True) -> list[LabelMask]:
    """The kept masks of a record (decoded to arrays, or as RLE with ``decode=False``)."""
    return [
        LabelMask(
            c["class"],
            decode_mask(c["rle"]) if decode else c["rle"],
            c["score"],
            {"uncertainty": c["uncertainty"]},
            [
                (decode_mask(i["rle"]) if decode else i["rle"], i["score"])
                for i in c.get("instances", [])
            ],
        )
        for c in record["classes"]
        if c["kept"]
    ]


@dataclass
class FinalizeSummary:
    """What :func:`finalize_outputs` found: images with records, failures, targets missing."""

    images: int
    annotations: int
    failures: list[dict[str, Any]]
    missing: list[str]


def finalize_outputs(
    out_dir: str | os.PathLike[str], formats: Sequence[str] = ("coco",)
) -> FinalizeSummary:
    """Write ``failures.json`` and (with ``"coco"`` in ``formats``) ``coco.json`` from the
    records of the targets in ``targets.json``, in target order; deterministic, so any
    shard, a rerun or a separate step writes the same files."""
    out = Path(out_dir)
    job = _read_json(out / "job.json")
    targets = _read_json(out / "targets.json")
    if job is None or targets is None:
        raise InputError(f"{out}: no job.json / targets.json; run the labelling job first")
    coco = CocoWriter(out, job["classes"]) if "coco" in formats else None
    failures, missing = [], []
    for t in targets:
        record = _valid_record(out, t["key"], t["file_name"])
        if record is not None:
            if coco is not None:
                coco.add(
                    t["key"],
                    (record["height"], record["width"]),
                    record_masks(record, decode=False),
                    file_name=t["file_name"],
                    image_id=t["image_id"],
                )
            continue
        failure = _read_json(out / "failures" / f"{t['key']}.json")
        if failure is not None and failure.get("file_name") == t["file_name"]:
            failures.append(failure)
        else:
            missing.append(t["file_name"])
    if coco is not None:
        coco.finalize()
    _write_json(out / "failures.json", failures)
    return FinalizeSummary(
        len(coco.images) if coco else 0, len(coco.annotations) if coco else 0, failures, missing
    )


def _valid_record(out: Path, key: str, file_name: str) -> dict[str, Any] | None:
    record = _read_json(out / "records" / f"{key}.json")
    if (
        isinstance(record, dict)
        and record.get("version") == RECORD_VERSION
        and record.get("file_name") == file_name
    ):
        return record
    return None


# --------------------------------------------------------------------------- the job


@dataclass
class LabelSummary:
    """What one run of a :class:`LabelJob` did (over its shard)."""

    total: int
    shard: tuple[int, int]
    shard_targets: int
    skipped: int = 0
    processed: int = 0
    empty: int = 0
    failed: int = 0
    backfilled: int = 0
    seconds: float = 0.0
    finalized: bool = False
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no target failed."""
        return self.failed == 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LabelJob:
    """Label targets with fitted methods (one per class), resumably, into standard formats.

    Args:
        methods: ``{class_name: fitted method}`` (insertion order = class order), or one
            fitted method for the single class ``"object"``.
        predictor: embeds targets (give one without an embedding cache for big jobs).
        out_dir: the output folder.
        formats: names from :data:`prosam.label.writers.FORMATS`, or extra writer objects
            (fed per target, finalized at the end of each run).
        score_threshold, min_area_fraction: when a class's mask counts as empty (module doc).
        max_pixels: larger targets are failures, checked before decoding.
        shard: ``(i, n)`` labels ``targets[i::n]`` of the sorted list; default ``RANK`` and
            ``WORLD_SIZE`` from the environment (torchrun), else ``(0, 1)``.
        workers: DataLoader processes decoding targets while the model runs (0: inline).
        fingerprint: configuration to store in ``job.json`` and check on reruns (method,
            checkpoint, references' digest...).
        restart: discard this shard's records and failures (and a different ``job.json``).
    """

    def __init__(
        self,
        methods: Mapping[str, ReferenceMethod] | ReferenceMethod,
        predictor: Predictor,
        out_dir: str | os.PathLike[str],
        *,
        formats: Sequence[str | Writer] = ("png", "coco"),
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        min_area_fraction: float = DEFAULT_MIN_AREA_FRACTION,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        shard: tuple[int, int] | None = None,
        workers: int = 2,
        progress: bool = True,
        fingerprint: Mapping[str, Any] | None = None,
        restart: bool = False,
    ) -> None:
        self.methods = dict(methods) if isinstance(methods, Mapping) else {DEFAULT_CLASS: methods}
        if not self.methods:
            raise InputError("give at least one fitted method")
        self.classes = list(self.methods)
        self.predictor = predictor
        self.out = Path(out_dir)
        self.format_names = [f for f in formats if isinstance(f, str)]
        unknown = sorted(set(self.format_names) - set(FORMATS))
        if unknown:
            raise InputError(f"unknown format(s) {unknown}; choose from {', '.join(FORMATS)}")
        self.writers: list[Writer] = [
            make_writer(f, self.out, self.classes)
            for f in dict.fromkeys(self.format_names)
            if f != "coco"
        ]
        self.writers += [f for f in formats if not isinstance(f, str)]
        self.score_threshold = float(score_threshold)
        self.min_area_fraction = float(min_area_fraction)
        self.max_pixels = int(max_pixels)
        if shard is None:
            from prosam.data.episodes import rank_and_world_from_env

            shard = rank_and_world_from_env()
        i, n = shard
        if n < 1 or not 0 <= i < n:
            raise InputError(f"shard {i}/{n}: need 0 <= i < n")
        self.shard = (int(i), int(n))
        if workers < 0:
            raise InputError(f"workers must be >= 0, got {workers}")
        self.workers = workers
        self.progress = progress
        self.restart = restart
        self.config = {
            "version": RECORD_VERSION,
            "classes": self.classes,
            "score_threshold": self.score_threshold,
            "min_area_fraction": self.min_area_fraction,
            **dict(fingerprint or {}),
        }

    # -- configuration files

    def _check_config(self) -> None:
        path = self.out / "job.json"
        old = _read_json(path)
        new = json.loads(json.dumps(self.config))  # tuples as lists, as read back
        if old is not None and old != new and not self.restart:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise InputError(
                f"{self.out} holds a labelling job with another configuration (differs in: "
                f"{', '.join(diff)}); use another output folder or restart the job"
            )
        _write_json(path, self.config)

    def _write_targets(self, entries: Sequence[TargetEntry]) -> None:
        _write_json(
            self.out / "targets.json",
            [{"key": e.key, "file_name": e.file_name, "image_id": e.image_id} for e in entries],
        )

    # -- per target

    def _record_path(self, entry: TargetEntry) -> Path:
        return self.out / "records" / f"{entry.key}.json"

    def _failure_path(self, entry: TargetEntry) -> Path:
        return self.out / "failures" / f"{entry.key}.json"

    def _fail(self, entry: TargetEntry, reason: str) -> dict[str, Any]:
        failure = {"file_name": entry.file_name, "source": str(entry.path), "reason": reason}
        _write_json(self._failure_path(entry), failure)
        return failure

    def _finish(
        self,
        entry: TargetEntry,
        size: tuple[int, int],
        preds: Sequence[ClassPrediction],
        image: np.ndarray,
    ) -> None:
        masks = label_masks(preds)
        for writer in self.writers:
            writer.add(entry.key, size, masks, file_name=entry.file_name, image=image)
        # The record comes last: a target with a record has all its files.
        _write_json(self._record_path(entry), make_record(entry, size, preds, self._formats()))
        with contextlib.suppress(FileNotFoundError):
            self._failure_path(entry).unlink()

    def _formats(self) -> list[str]:
        return [getattr(w, "name", type(w).__name__) for w in self.writers]

    def _remove_outputs(self, key: str, formats: Sequence[str]) -> None:
        """Remove the per-target files of ``key`` in ``formats`` (a target that failed half-way,
        or one that is gone), and the folders that leaves empty."""
        writers: dict[str, Any] = {getattr(w, "name", ""): w for w in self.writers}
        for name in formats:
            writer = writers.get(name)
            if writer is None and name in FORMATS:
                writer = make_writer(name, self.out, self.classes)
            for path in writer.paths(key) if hasattr(writer, "paths") else []:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                folder = path.parent
                while folder != self.out and folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
                    folder = folder.parent

    def _backfill(self, entry: TargetEntry, record: dict[str, Any]) -> bool:
        """Write per-target formats a record lacks (a rerun that asks for more formats)."""
        have = set(record.get("formats", []))
        todo = [w for w in self.writers if getattr(w, "name", type(w).__name__) not in have]
        if not todo:
            return False
        size = (record["height"], record["width"])
        masks = record_masks(record)
        image = None
        if any(getattr(w, "name", "") == "overlay" for w in todo):
            image = load_target_image(entry.path, self.max_pixels)
        for writer in todo:
            writer.add(entry.key, size, masks, file_name=entry.file_name, image=image)
        record["formats"] = sorted(have | {getattr(w, "name", type(w).__name__) for w in todo})
        _write_json(self._record_path(entry), record)
        return True

    def _loader(
        self, entries: Sequence[TargetEntry]
    ) -> Iterator[tuple[int, torch.Tensor | None, str | None]]:
        dataset = _TargetImages(entries, self.max_pixels)
        if self.workers == 0 or len(entries) <= 1:
            return (dataset[i] for i in range(len(dataset)))
        loader = DataLoader(
            dataset,
            batch_size=None,
            shuffle=False,
            num_workers=min(self.workers, len(entries)),
            collate_fn=_identity,
        )
        return iter(loader)

    # -- the run

    def run(self, targets: Sequence[str | os.PathLike[str]]) -> LabelSummary:
        """Label the shard's targets not labelled yet; finalize when every target is done."""
        t0 = time.perf_counter()
        entries = plan_targets(targets)
        if not entries:
            raise InputError("no targets to label")
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_config()
        self._write_targets(entries)
        i, n = self.shard
        mine = entries[i::n]
        summary = LabelSummary(len(entries), self.shard, len(mine))
        if self.restart:
            for e in mine:
                for p in (self._record_path(e), self._failure_path(e)):
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
        pending = []
        for e in mine:
            record = _valid_record(self.out, e.key, e.file_name)
            if record is None:
                pending.append(e)
                continue
            summary.skipped += 1
            try:
                summary.backfilled += self._backfill(e, record)
            except Exception as err:
                summary.failures.append(self._fail(e, f"{e.path}: {failure_reason(err)}"))
        desc = f"label {i}/{n}" if n > 1 else "label"
        bar = _progress(len(mine), summary.skipped, self.progress, desc)
        try:
            for pos, tensor, error in self._loader(pending):
                entry = pending[pos]
                if error is None:
                    assert tensor is not None
                    image = tensor.numpy()
                    try:
                        preds = predict_classes(
                            self.methods,
                            self.predictor,
                            image,
                            score_threshold=self.score_threshold,
                            min_area_fraction=self.min_area_fraction,
                        )
                        self._finish(entry, image.shape[:2], preds, image)
                    except Exception as err:  # any one target's problem: the job goes on
                        error = f"{entry.path}: {failure_reason(err)}"
                        self._remove_outputs(entry.key, self._formats())
                    else:
                        summary.processed += 1
                        summary.empty += not any(p.kept for p in preds)
                if error is not None:
                    if str(entry.path) not in error:
                        error = f"{entry.path}: {error}"
                    summary.failures.append(self._fail(entry, error))
                    bar.write(f"skipped: {error}", file=sys.stderr)
                bar.update(1)
                bar.set_postfix(failed=len(summary.failures), empty=summary.empty, refresh=False)
        finally:
            bar.close()
        summary.failed = len(summary.failures)
        for writer in self.writers:
            writer.finalize()
        if self._all_done(entries):
            self.finalize()
            summary.finalized = True
        summary.seconds = time.perf_counter() - t0
        return summary

    def _all_done(self, entries: Sequence[TargetEntry]) -> bool:
        return all(
            self._record_path(e).is_file() or self._failure_path(e).is_file() for e in entries
        )

    def finalize(self) -> FinalizeSummary:
        """Write ``coco.json`` (if asked for) and ``failures.json`` from all records."""
        return finalize_outputs(self.out, self.format_names)


class _NoBar:
    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, **kwargs: Any) -> None: ...

    def write(self, text: str, file: Any = None) -> None:
        print(text, file=file)

    def close(self) -> None: ...


def _progress(total: int, initial: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, unit="img", desc=desc, dynamic_ncols=True, smoothing=0.1
    )
