"""Per-target records: what a finished target leaves in ``OUT/records``, and the files
(``coco.json``, ``failures.json``) rebuilt from them."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prosam.errors import InputError
from prosam.io import inside, write_bytes_atomic
from prosam.label.prediction import ClassPrediction
from prosam.label.targets import FileStamp, TargetEntry
from prosam.label.video import frame_of
from prosam.label.writers import CocoWriter, LabelMask, decode_mask, encode_mask

RECORD_VERSION = 3
#: Decimals kept of a record's scores: beyond them, floating-point summation order (the
#: number of threads, another CPU) would make runs that agree on every mask differ in bytes.
SCORE_DECIMALS = 6


def rounded(value: Any) -> Any:
    """Floats (also inside lists and dicts) rounded to :data:`SCORE_DECIMALS`."""
    if isinstance(value, float):
        return round(value, SCORE_DECIMALS) + 0.0  # + 0.0: no "-0.0" in the file
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_bytes_atomic(path, (json.dumps(data, indent=1) + "\n").encode())


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or ``None`` when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def make_record(
    entry: TargetEntry,
    size: tuple[int, int],
    predictions: Sequence[ClassPrediction],
    formats: Sequence[str],
    stamp: FileStamp,
) -> dict[str, Any]:
    """What a finished target leaves in ``records/<key>.json``; ``stamp`` identifies the
    file that was labelled; a video frame (:func:`prosam.label.video.frame_of`) also keeps
    its video, frame index and time."""
    frame = frame_of(entry.path)
    video = (
        {}
        if frame is None
        else {"video": {"file": frame.video, "frame_id": frame.frame_id, "time": frame.time}}
    )
    return {
        "version": RECORD_VERSION,
        "key": entry.key,
        "file_name": entry.file_name,
        "source": str(entry.path),
        "file": stamp.as_dict(),
        "height": int(size[0]),
        "width": int(size[1]),
        "classes": [
            {
                "class": p.class_name,
                "score": rounded(p.score),
                "kept": p.kept,
                "area": int(p.mask.sum()),
                "uncertainty": rounded(p.uncertainty),
                "quality": rounded(p.quality),
                "reason": p.reason,
                "signals": rounded(p.signals),
                "rle": encode_mask(p.mask) if p.kept else None,
                "instances": [
                    {"score": rounded(float(s)), "rle": encode_mask(m)} for m, s in p.instances
                ],
            }
            for p in predictions
        ],
        "formats": sorted(formats),
        **video,
    }


def record_masks(record: Mapping[str, Any], *, decode: bool = True) -> list[LabelMask]:
    """The kept masks of a record (decoded to arrays, or as RLE with ``decode=False``)."""
    return [
        LabelMask(
            c["class"],
            decode_mask(c["rle"]) if decode else c["rle"],
            c["score"],
            {"uncertainty": c["uncertainty"], "quality": c["quality"], "reason": c["reason"]},
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
    """What :func:`write_dataset_files` found: images with records, failures, targets missing."""

    images: int
    annotations: int
    failures: list[dict[str, Any]]
    missing: list[str]


def write_dataset_files(
    out_dir: str | os.PathLike[str], formats: Sequence[str] = ("coco",)
) -> FinalizeSummary:
    """Write ``failures.json`` and (with ``"coco"`` in ``formats``) ``coco.json`` from the
    records of the targets in ``targets.json``, in target order; deterministic, so any
    shard, a rerun or a separate step writes the same files."""
    out = Path(out_dir)
    job = read_json(out / "job.json")
    targets = read_json(out / "targets.json")
    if job is None or targets is None:
        raise InputError(f"{out}: no job.json / targets.json; run the labelling job first")
    coco = CocoWriter(out, job["classes"]) if "coco" in formats else None
    failures, missing = [], []
    video_ids: dict[str, int] = {}
    for t in targets:
        record = valid_record(out, t["key"], t["file_name"])
        if record is not None:
            if coco is not None:
                fields = None
                if isinstance(record.get("video"), dict):
                    video = record["video"]
                    if video["file"] not in video_ids:
                        video_ids[video["file"]] = len(video_ids) + 1
                        coco.videos.append(
                            {"id": video_ids[video["file"]], "file_name": Path(video["file"]).name}
                        )
                    fields = {
                        "video_id": video_ids[video["file"]],
                        "frame_id": video["frame_id"],
                        "time": video["time"],
                    }
                coco.add(
                    t["key"],
                    (record["height"], record["width"]),
                    record_masks(record, decode=False),
                    file_name=t["file_name"],
                    image_id=t["image_id"],
                    image_fields=fields,
                )
            continue
        failure = read_json(failure_path(out, t["key"]))
        if failure is not None and failure.get("file_name") == t["file_name"]:
            failures.append(failure)
        else:
            missing.append(t["file_name"])
    if coco is not None:
        coco.finalize()
    write_json(out / "failures.json", failures)
    return FinalizeSummary(
        len(coco.images) if coco else 0, len(coco.annotations) if coco else 0, failures, missing
    )


def record_path(out: Path, key: str) -> Path:
    """Where the record of target ``key`` is."""
    return inside(out, out / "records" / f"{key}.json")


def failure_path(out: Path, key: str) -> Path:
    """Where the failure of target ``key`` is."""
    return inside(out, out / "failures" / f"{key}.json")


def stored_keys(out: Path, folder: str) -> list[str]:
    """The keys of the files under ``OUT/<folder>`` (``"records"`` or ``"failures"``)."""
    root = out / folder
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.json"))


def valid_record(out: Path, key: str, file_name: str) -> dict[str, Any] | None:
    """The record of target ``key`` if it is one of this version, for ``file_name``."""
    record = read_json(record_path(out, key))
    if (
        isinstance(record, dict)
        and record.get("version") == RECORD_VERSION
        and record.get("file_name") == file_name
    ):
        return record
    return None
