"""The resumable auto-labelling job: fitted methods, thousands of targets, standard outputs.

``OUT`` holds, besides the outputs of :mod:`prosam.label.writers`:

- ``job.json``: the configuration (classes, thresholds, method, references' digest); a
  rerun with a different one is refused, so records of two configurations never mix;
- ``targets.json``: the full sorted target list with each target's key (its path relative
  to the target root, without suffix: see :mod:`prosam.label.targets`), relative
  ``file_name`` and COCO image id (its 1-based position);
- ``records/<key>.json``: one per finished target, written last and atomically, holding
  everything the outputs need (mask RLE, score, uncertainty) and the sha256, size and mtime
  of the file labelled, so a target with a record is done and ``coco.json`` is rebuilt
  from records;
- ``calibration.safetensors`` + ``calibration.json``: for a method fitted on every class
  at once (``cpc``), its fitted calibration, made once per job and reloaded by reruns and
  other shards (:mod:`prosam.label.joint`; ``calibration.lock`` lets one process fit it
  while the others wait); its sha256 is in ``job.json``;
- ``failures/<key>.json`` per failed target and ``failures.json``, the list of them;
- ``review.csv``: every written mask, worst quality estimate first
  (:mod:`prosam.label.review`), rebuilt from the records like ``coco.json``;
- ``locks/<key>.lock`` while a process labels that target: two processes on one output
  folder (the same command run twice) share the work instead of both doing all of it.

Killed at any point and rerun with the same command, a job skips the targets that have a
record (rewriting a half-finished target's files whole, each write being atomic) and ends
with the same files as an uninterrupted run. A rerun follows the files: a target whose
file changed (another sha256) is labelled again and its old outputs replaced; outputs of a
target that is no longer a target (deleted, or its key changed) are removed with its
record; a per-target output that went missing is rewritten from the record without
predicting; failed targets are retried; temporary files a killed run left are removed.
Files under ``OUT`` are never targets.

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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout
from PIL import Image

from prosam.core.checkpoint import checkpoint_files
from prosam.core.prefetch import map_ahead
from prosam.errors import InputError, failure_reason
from prosam.io import inside, quiet_pillow, read_image, remove_stale_temporaries
from prosam.label.defaults import (
    DEFAULT_CLASS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_AREA_FRACTION,
    DEFAULT_SCORE_THRESHOLD,
    default_encode_ahead,
)
from prosam.label.joint import CALIBRATION_STEM, joint_of
from prosam.label.prediction import (
    ClassPrediction,
    check_overlaps,
    label_masks,
    predict_classes,
)
from prosam.label.progress import progress_bar
from prosam.label.records import (
    RECORD_VERSION,
    FinalizeSummary,
    failure_path,
    make_record,
    read_json,
    record_masks,
    record_path,
    stored_keys,
    valid_record,
    write_dataset_files,
    write_json,
)
from prosam.label.review import job_review_rows, write_review_csv
from prosam.label.targets import (
    FileStamp,
    TargetEntry,
    check_target_file,
    plan_targets,
    same_file,
    stamp_file,
    target_root,
    without_output,
)
from prosam.label.writers import FORMATS, Writer, make_writer
from prosam.methods.base import ReferenceMethod
from prosam.quality import QualityModel
from prosam.sam.predictor import ImageEmbedding, Predictor

__all__ = [
    "ClassPrediction",
    "LabelJob",
    "LabelSummary",
    "TargetEntry",
    "finalize_outputs",
    "load_target_image",
    "plan_targets",
    "predict_classes",
]


def load_target_image(
    path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read a target as RGB, refusing images of more than ``max_pixels`` before decoding."""
    try:
        with quiet_pillow(), Image.open(path) as img:
            w, h = img.size
    except Exception:  # read_image below says what is wrong
        w = h = 0
    if w * h > max_pixels:
        raise InputError(f"{path}: image is {w}x{h} = {w * h} pixels, more than {max_pixels}")
    return read_image(path)


Loaded = tuple[int, "np.ndarray | None", "FileStamp | None", "str | None"]
#: A target ready to label: position, image, SAM embedding, file stamp, error.
Prepared = tuple[
    int, "np.ndarray | None", "ImageEmbedding | None", "FileStamp | None", "str | None"
]


def _read_target(
    entries: Sequence[TargetEntry], max_pixels: int, allowed_root: Path | None, i: int
) -> Loaded:
    """Target ``i`` read (in a prefetch thread): ``(position, image, file stamp, error)``."""
    path = entries[i].path
    try:
        check_target_file(path, allowed_root)
        image = load_target_image(path, max_pixels)
        stamp = stamp_file(path)
    except Exception as err:
        return i, None, None, failure_reason(err)
    return i, image, stamp, None


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
    replaced: int = 0
    removed: int = 0
    elsewhere: int = 0
    seconds: float = 0.0
    finalized: bool = False
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no target failed."""
        return self.failed == 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JobPlan:
    """The targets of a job (sorted, keyed), and this shard's still to label."""

    entries: list[TargetEntry]
    pending: list[TargetEntry]
    summary: LabelSummary


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
        quality: the model estimating each kept mask's IoU (``None``: no estimate).
        overlaps: ``"resolve"`` (each pixel to at most one class) or ``"keep"``
            (:data:`prosam.label.prediction.OVERLAP_RULES`).
        max_pixels: larger targets are failures, checked before decoding.
        shard: ``(i, n)`` labels ``targets[i::n]`` of the sorted list; default ``RANK`` and
            ``WORLD_SIZE`` from the environment (torchrun), else ``(0, 1)``.
        workers: threads reading and decoding the next targets while the model runs
            (0: each target read when it is due).
        encode_ahead: targets whose SAM embedding a thread computes while the current one
            is matched and decoded (0: each embedding computed when it is due; ``None``:
            :func:`~prosam.label.defaults.default_encode_ahead`: 1, but 0 with an ONNX
            runtime's encoder on fewer than 4 cores). With
            several processes on one shard, a target another process claims meanwhile may
            have been encoded for nothing.
        fingerprint: configuration to store in ``job.json`` and check on reruns (method,
            checkpoint, references' digest...).
        restart: discard this shard's records and failures (and a different ``job.json``).
        allowed_root: when given, a target whose real path (links followed) lies outside
            this folder is a failure and is never opened (``prosam label --root``).
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
        quality: QualityModel | None = None,
        overlaps: str = "resolve",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        shard: tuple[int, int] | None = None,
        workers: int = 2,
        encode_ahead: int | None = None,
        progress: bool = True,
        fingerprint: Mapping[str, Any] | None = None,
        restart: bool = False,
        allowed_root: str | os.PathLike[str] | None = None,
    ) -> None:
        self.allowed_root = None if allowed_root is None else Path(allowed_root).resolve()
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
        self.quality = quality
        self.overlaps = check_overlaps(overlaps)
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
        if encode_ahead is None:
            model = predictor.model
            encode_ahead = default_encode_ahead(model.backend, model.device.type)
        if encode_ahead < 0:
            raise InputError(f"encode_ahead must be >= 0, got {encode_ahead}")
        self.encode_ahead = encode_ahead
        self.progress = progress
        self.restart = restart
        self.config = {
            "version": RECORD_VERSION,
            "classes": self.classes,
            "score_threshold": self.score_threshold,
            "min_area_fraction": self.min_area_fraction,
            "quality_model": None if quality is None else quality.digest(),
            "overlaps": self.overlaps,
            **dict(fingerprint or {}),
        }

    # -- configuration files

    def _check_config(self, *, before_calibration: bool = False) -> None:
        """Refuse a job folder that holds another configuration, else write ``job.json``.
        ``before_calibration``: compare all but the calibration and write nothing (a run
        that will be refused must not first spend minutes calibrating)."""
        path = self.out / "job.json"
        old = read_json(path)
        new = json.loads(json.dumps(self.config))  # tuples as lists, as read back
        if before_calibration and isinstance(old, dict):
            old = {k: v for k, v in old.items() if k != "calibration"}
            new.pop("calibration", None)
        if old is not None and old != new and not self.restart:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            hint = (
                f"; it ran SAM's encoder at {old.get('encoder') or 'fp32'}, this run at "
                f"{new.get('encoder') or 'fp32'}: resume it with the --precision it ran at"
                if diff == ["encoder"]
                else ""
            )
            raise InputError(
                f"{self.out} holds a labelling job with another configuration (differs in: "
                f"{', '.join(diff)}); use another output folder or restart the job{hint}"
            )
        if not before_calibration:
            write_json(path, self.config)

    def prepare_methods(self) -> None:
        """Load or fit (and save) the calibration of jointly fitted classes
        (:mod:`prosam.label.joint`); its sha256 joins the configuration. Every process of
        a job calls it before labelling: the first fits, the others load."""
        joint = joint_of(self.methods)
        if not joint:
            return
        if self.restart:
            for path in checkpoint_files(self.out / CALIBRATION_STEM):
                self._unlink(path)
        base = {k: v for k, v in self.config.items() if k != "calibration"}
        key = hashlib.sha256(json.dumps(base, sort_keys=True, default=str).encode()).hexdigest()
        # One process fits, the others of the same job (shards) wait and load its result.
        # (The lock file stays: removing it while another process waits on it would let a
        # third one take a second lock.)
        with FileLock(self.out / f"{CALIBRATION_STEM}.lock"):
            self.config["calibration"] = [j.prepare(self.out, key) for j in joint]

    def _write_targets(self, entries: Sequence[TargetEntry]) -> None:
        write_json(
            self.out / "targets.json",
            [{"key": e.key, "file_name": e.file_name, "image_id": e.image_id} for e in entries],
        )

    # -- per target

    def _fail(self, entry: TargetEntry, reason: str) -> dict[str, Any]:
        failure = {"file_name": entry.file_name, "source": str(entry.path), "reason": reason}
        write_json(failure_path(self.out, entry.key), failure)
        return failure

    def _finish(
        self,
        entry: TargetEntry,
        size: tuple[int, int],
        preds: Sequence[ClassPrediction],
        image: np.ndarray,
        stamp: FileStamp,
    ) -> None:
        masks = label_masks(preds)
        for writer in self.writers:
            writer.add(entry.key, size, masks, file_name=entry.file_name, image=image)
        # The record comes last: a target with a record has all its files.
        record = make_record(entry, size, preds, self._formats(), stamp)
        write_json(record_path(self.out, entry.key), record)
        self._unlink(failure_path(self.out, entry.key))

    def _formats(self) -> list[str]:
        return [_writer_name(w) for w in self.writers]

    def _unlink(self, path: Path) -> None:
        """Remove ``path`` if it is there, and the folders under ``OUT`` that leaves empty."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        folder = path.parent
        with contextlib.suppress(OSError):  # not empty, or removed by another shard
            while folder != self.out and folder.is_relative_to(self.out):
                folder.rmdir()
                folder = folder.parent

    def _remove_outputs(self, key: str, formats: Sequence[str]) -> None:
        """Remove the per-target files of ``key`` in ``formats`` (a target that failed half-way,
        changed, or is gone)."""
        writers = {_writer_name(w): w for w in self.writers}
        for name in formats:
            writer: Any = writers.get(name)
            if writer is None and name in FORMATS:
                writer = make_writer(name, self.out, self.classes)
            for path in writer.paths(key) if hasattr(writer, "paths") else []:
                self._unlink(path)

    def _remove_orphans(self, entries: Sequence[TargetEntry]) -> int:
        """Remove the records, outputs and failures of files that are no longer targets (or
        no longer under that key); the number of records removed."""
        planned = {e.key: e.file_name for e in entries}
        removed = 0
        for key in stored_keys(self.out, "records"):
            record = read_json(record_path(self.out, key))
            file_name = record.get("file_name") if isinstance(record, dict) else None
            if key in planned and file_name == planned[key]:
                continue
            formats = record.get("formats", []) if isinstance(record, dict) else []
            self._remove_outputs(key, [f for f in formats if isinstance(f, str)])
            self._unlink(record_path(self.out, key))
            removed += 1
        for key in stored_keys(self.out, "failures"):
            failure = read_json(failure_path(self.out, key))
            file_name = failure.get("file_name") if isinstance(failure, dict) else None
            if key not in planned or file_name != planned[key]:
                self._unlink(failure_path(self.out, key))
        return removed

    def _backfill(self, entry: TargetEntry, record: dict[str, Any]) -> bool:
        """Write the per-target files a record lacks: formats asked for since, and files that
        went missing; from the record, without predicting."""
        have = set(record.get("formats", []))
        todo = [
            w
            for w in self.writers
            if _writer_name(w) not in have
            or any(not p.is_file() for p in (w.paths(entry.key) if hasattr(w, "paths") else []))
        ]
        if not todo:
            return False
        size = (record["height"], record["width"])
        masks = record_masks(record)
        image = None
        if any(_writer_name(w) == "overlay" for w in todo):
            image = load_target_image(entry.path, self.max_pixels)
        for writer in todo:
            writer.add(entry.key, size, masks, file_name=entry.file_name, image=image)
        if not have >= {_writer_name(w) for w in todo}:
            record["formats"] = sorted(have | {_writer_name(w) for w in todo})
            write_json(record_path(self.out, entry.key), record)
        return True

    def _loader(self, entries: Sequence[TargetEntry]) -> Iterator[Prepared]:
        """Targets read ``workers`` ahead and embedded ``encode_ahead`` ahead, in threads."""
        read = partial(_read_target, entries, self.max_pixels, self.allowed_root)
        loaded = map_ahead(read, range(len(entries)), self.workers)
        return map_ahead(self._embedded, loaded, self.encode_ahead)

    def _embedded(self, item: Loaded) -> Prepared:
        pos, image, stamp, error = item
        if error is not None or image is None:
            return pos, None, None, None, error
        try:
            return pos, image, self.predictor.embed(image), stamp, None
        except Exception as err:
            return pos, None, None, None, failure_reason(err)

    # -- the run

    def run(
        self,
        targets: Sequence[str | os.PathLike[str]],
        *,
        root: str | os.PathLike[str] | None = None,
    ) -> LabelSummary:
        """Label the shard's targets not labelled yet; finalize when every target is done.

        ``root``: the target root keys are relative to (default: the folder common to the
        targets' folders; see :mod:`prosam.label.targets`). The three steps are
        :meth:`plan`, :meth:`label_entries` and :meth:`complete`; a distributed runner
        (:mod:`prosam.label.ray_job`) plans and completes here and labels elsewhere.
        """
        t0 = time.perf_counter()
        plan = self.plan(targets, root=root)
        self.label_entries(plan.pending, plan.summary)
        return self.complete(plan, started=t0)

    def plan(
        self,
        targets: Sequence[str | os.PathLike[str]],
        *,
        root: str | os.PathLike[str] | None = None,
    ) -> JobPlan:
        """Check and write the job's files (``job.json``, ``targets.json``), remove the
        outputs of targets gone, and list the shard's targets still to label."""
        if root is None:
            root = target_root([], targets)
        entries = plan_targets(without_output(targets, self.out, root), root=root)
        if not entries:
            raise InputError("no targets to label")
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_config(before_calibration=True)
        self.prepare_methods()
        self._check_config()
        remove_stale_temporaries(self.out)
        self._write_targets(entries)
        i, n = self.shard
        mine = entries[i::n]
        summary = LabelSummary(len(entries), self.shard, len(mine))
        summary.removed = self._remove_orphans(entries)
        if self.restart:
            for e in mine:
                self._unlink(record_path(self.out, e.key))
                self._unlink(failure_path(self.out, e.key))
        pending = []
        for e in mine:
            record = valid_record(self.out, e.key, e.file_name)
            if record is None or not same_file(record.get("file"), e.path):
                pending.append(e)  # new, changed or failed: its old files go when it is claimed
                continue
            summary.skipped += 1
            try:
                summary.backfilled += self._backfill(e, record)
            except Exception as err:
                summary.failures.append(self._fail(e, f"{e.path}: {failure_reason(err)}"))
        return JobPlan(entries, pending, summary)

    def label_entries(self, entries: Sequence[TargetEntry], summary: LabelSummary) -> None:
        """Label ``entries`` (planned targets), counting into ``summary``; a target another
        process holds or finished meanwhile is left to it."""
        i, n = self.shard
        desc = f"label {i}/{n}" if n > 1 else "label"
        bar = progress_bar(summary.shard_targets, summary.skipped, self.progress, desc)
        try:
            for pos, image, embedded, stamp, error in self._loader(entries):
                entry = entries[pos]
                with self._claim(entry) as claimed:
                    if claimed:
                        self._label_one(entry, (image, embedded, stamp), error, summary, bar)
                    else:
                        summary.elsewhere += 1
                bar.update(1)
                bar.set_postfix(failed=len(summary.failures), empty=summary.empty, refresh=False)
        finally:
            bar.close()

    def complete(self, plan: JobPlan, *, started: float | None = None) -> LabelSummary:
        """Finish the writers, and finalize (``coco.json``, ``failures.json``, review) when
        every target of the job is done; return the summary."""
        summary = plan.summary
        summary.failed = len(summary.failures)
        for writer in self.writers:
            writer.finalize()
        if self._all_done(plan.entries):
            self.finalize()
            summary.finalized = True
        if started is not None:
            summary.seconds = time.perf_counter() - started
        return summary

    @contextlib.contextmanager
    def _claim(self, entry: TargetEntry) -> Iterator[bool]:
        """Whether this process may label ``entry`` now: another process on the same output
        folder that holds its lock is labelling it. Killed, a process's locks are released."""
        path = inside(self.out, self.out / "locks" / f"{entry.key}.lock")
        lock = FileLock(path, timeout=0)
        for attempt in range(10):
            # Another process removes the lock folder when it empties, at any moment: make
            # it again (mkdir itself may see it vanish) and retry.
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                lock.acquire()
            except Timeout:
                claimed = False
                break
            except (FileExistsError, FileNotFoundError):
                if attempt == 9:
                    raise
                continue
            claimed = True
            break
        try:
            yield claimed
        finally:
            if claimed:
                lock.release()
                self._unlink(path)  # after the record: a later claimant finds the target done

    def _label_one(
        self,
        entry: TargetEntry,
        target: tuple[np.ndarray | None, ImageEmbedding | None, FileStamp | None],
        error: str | None,
        summary: LabelSummary,
        bar: Any,
    ) -> None:
        """Label one claimed target (or record why it failed), replacing an older record."""
        record = read_json(record_path(self.out, entry.key))
        if isinstance(record, dict):
            current = valid_record(self.out, entry.key, entry.file_name)
            if current is not None and same_file(current.get("file"), entry.path):
                summary.elsewhere += 1  # another process labelled it meanwhile
                return
            self._remove_outputs(
                entry.key, [f for f in record.get("formats", []) if isinstance(f, str)]
            )
            self._unlink(record_path(self.out, entry.key))
            summary.replaced += current is not None
        if error is None:
            image, embedded, stamp = target
            assert image is not None and embedded is not None and stamp is not None
            try:
                preds = predict_classes(
                    self.methods,
                    self.predictor,
                    image,
                    embedded=embedded,
                    score_threshold=self.score_threshold,
                    min_area_fraction=self.min_area_fraction,
                    quality=self.quality,
                    overlaps=self.overlaps,
                )
                self._finish(entry, image.shape[:2], preds, image, stamp)
            except Exception as err:  # any one target's problem: the job goes on
                error = failure_reason(err)
                self._remove_outputs(entry.key, self._formats())
            else:
                summary.processed += 1
                summary.empty += not any(p.kept for p in preds)
        if error is not None:
            if str(entry.path) not in error:
                error = f"{entry.path}: {error}"
            summary.failures.append(self._fail(entry, error))
            bar.write(f"skipped: {error}", file=sys.stderr)

    def _all_done(self, entries: Sequence[TargetEntry]) -> bool:
        return all(
            record_path(self.out, e.key).is_file() or failure_path(self.out, e.key).is_file()
            for e in entries
        )

    def finalize(self) -> FinalizeSummary:
        """Write ``coco.json`` (if asked for) and ``failures.json`` from all records."""
        return finalize_outputs(self.out, self.format_names)


def finalize_outputs(
    out_dir: str | os.PathLike[str], formats: Sequence[str] = ("coco",)
) -> FinalizeSummary:
    """Write the files built from every record: ``failures.json``, ``coco.json`` (with
    ``"coco"`` in ``formats``) and the review queue ``review.csv``
    (:mod:`prosam.label.review`); deterministic, so any shard, a rerun or a separate step
    writes the same files."""
    summary = write_dataset_files(out_dir, formats)
    write_review_csv(out_dir, job_review_rows(out_dir))
    return summary


def _writer_name(writer: Any) -> str:
    return getattr(writer, "name", type(writer).__name__)
