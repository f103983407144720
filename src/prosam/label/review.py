"""The review queue of a labelling job: which masks to look at first.

``OUT/review.csv`` (written with ``coco.json`` when the job finishes) lists every answer the
job gave, one row per target and class. First the "not in this image" answers, nearest the
presence threshold first (a true object called absent is the worst mask a job can give,
and the user can overrule it); then every written class mask, worst first: by quality
estimate (expected IoU) ascending, then the masks without an estimate (a method with no
quality model) by the method's score ascending. Columns: ``rank``, ``file_name``,
``class``, ``answer`` (``found`` or ``absent``), ``instances`` (objects in the class mask, 1
for a method without instances, 0 for an absent answer), ``estimate``, ``score`` (the
method's), ``reason`` (what lowers the estimate most, or why the class was called absent),
``key``. File names that are not valid UTF-8 are written as their bytes.

``prosam review OUT`` renders the queue as a contact sheet, ``OUT/review.html``: one
thumbnail per row, in the queue's order, the class's mask drawn over the image and the
estimate and reason under it, linking to the job's full-size overlay where there is one.
Thumbnails go to ``OUT/review/``; every link is relative, so the folder can be moved or
served as it is.
"""

from __future__ import annotations

import csv
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image

from prosam.errors import InputError
from prosam.io import read_image, write_bytes_atomic, write_image
from prosam.label.records import read_json, valid_record
from prosam.label.writers import decode_mask
from prosam.visualize import draw_legend, overlay_masks

REVIEW_FILE = "review.csv"
SHEET_FILE = "review.html"
THUMBS_FOLDER = "review"
COLUMNS = (
    "rank", "file_name", "class", "answer", "instances", "estimate", "score", "reason", "key"
)  # fmt: skip
FOUND, ABSENT = "found", "absent"


@dataclass
class ReviewRow:
    """One written class mask in the review queue."""

    rank: int
    file_name: str
    class_name: str
    instances: int
    estimate: float | None
    score: float
    reason: str
    key: str
    answer: str = FOUND

    def as_row(self) -> list[str]:
        """The CSV cells, in :data:`COLUMNS` order."""
        estimate = "" if self.estimate is None else f"{self.estimate:.4f}"
        return [
            str(self.rank),
            self.file_name,
            self.class_name,
            self.answer,
            str(self.instances),
            estimate,
            f"{self.score:.4f}",
            self.reason,
            self.key,
        ]


def absent_row(
    file_name: str, class_name: str, score: float, threshold: float | None, key: str
) -> ReviewRow:
    """The review row of a "not in this image" answer, saying why it was given."""
    if isinstance(threshold, (int, float)) and score < threshold:
        why = f"not in this image: score {score:.3f} < threshold {threshold:.3f}"
    else:
        why = "no mask large enough was found"
    return ReviewRow(0, file_name, class_name, 0, None, score, why, key, ABSENT)


def review_order(rows: Sequence[ReviewRow]) -> list[ReviewRow]:
    """``rows`` worst first (absent answers by score descending, then masks by estimate
    ascending, then the rest by score ascending; ties in the order given), ranked from 1."""
    indexed = list(enumerate(rows))
    indexed.sort(
        key=lambda t: (
            t[1].answer != ABSENT,
            -t[1].score if t[1].answer == ABSENT else 0.0,
            t[1].estimate is None,
            t[1].estimate if t[1].estimate is not None else t[1].score,
            t[0],
        )
    )
    ordered = [r for _, r in indexed]
    for rank, row in enumerate(ordered, 1):
        row.rank = rank
    return ordered


def job_review_rows(out_dir: str | os.PathLike[str]) -> list[ReviewRow]:
    """The review queue of the finished targets of the job in ``out_dir``."""
    out = Path(out_dir)
    targets = read_json(out / "targets.json")
    if not isinstance(targets, list):
        raise InputError(f"{out}: no targets.json; run the labelling job first")
    job = read_json(out / "job.json")
    threshold = job.get("score_threshold") if isinstance(job, dict) else None
    rows = []
    for t in targets:
        record = valid_record(out, t["key"], t["file_name"])
        if record is None:
            continue
        for c in record["classes"]:
            if not c["kept"]:
                rows.append(
                    absent_row(t["file_name"], c["class"], float(c["score"]), threshold, t["key"])
                )
                continue
            rows.append(
                ReviewRow(
                    0,
                    t["file_name"],
                    c["class"],
                    max(1, len(c.get("instances", []))),
                    c.get("quality"),
                    float(c["score"]),
                    c.get("reason") or "",
                    t["key"],
                )
            )
    return review_order(rows)


def write_review_csv(out_dir: str | os.PathLike[str], rows: Sequence[ReviewRow]) -> Path:
    """Write ``OUT/review.csv`` atomically; its path."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(r.as_row() for r in rows)
    path = Path(out_dir) / REVIEW_FILE
    # a file name that is not UTF-8 is kept as its bytes, so it still names the file
    write_bytes_atomic(path, buffer.getvalue().encode("utf-8", "surrogateescape"))
    return path


def thumbnail_name(row: ReviewRow, classes: Sequence[str]) -> str:
    """The thumbnail's path under ``OUT``, relative, with forward slashes."""
    return f"{THUMBS_FOLDER}/{row.key}.{classes.index(row.class_name) + 1}.jpg"


def _thumbnail(out: Path, row: ReviewRow, classes: Sequence[str], side: int) -> np.ndarray:
    record = valid_record(out, row.key, row.file_name)
    if record is None:
        raise InputError(f"{row.file_name}: no record; rerun the labelling job")
    entry = next(c for c in record["classes"] if c["class"] == row.class_name)
    mask = decode_mask(entry["rle"])
    image = read_image(record["source"])
    if image.shape[:2] != mask.shape:
        raise InputError(f"{record['source']}: the image changed since it was labelled")
    scale = min(1.0, side / max(mask.shape))
    if scale < 1.0:
        size = (max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    index = classes.index(row.class_name)
    layers = [mask if i == index else np.zeros_like(mask) for i in range(index + 1)]
    return draw_legend(overlay_masks(image, layers), [(row.class_name, index)])


def _readable(text: str) -> str:
    """``text`` with the undecodable bytes of a non-UTF-8 file name shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _href(relative: str) -> str:
    """A relative link to a file whose name may hold undecodable bytes."""
    return quote(relative, errors="surrogateescape")


def write_contact_sheet(
    out_dir: str | os.PathLike[str], *, limit: int | None = None, side: int = 256
) -> Path:
    """Write ``OUT/review.html`` and its thumbnails for the job in ``out_dir`` (the first
    ``limit`` rows of the queue, all by default); its path."""
    out = Path(out_dir)
    job = read_json(out / "job.json")
    if not isinstance(job, dict):
        raise InputError(f"{out}: no job.json; run the labelling job first")
    if side < 16:
        raise InputError(f"the thumbnail side must be at least 16 pixels, got {side}")
    classes = job.get("classes")
    if not isinstance(classes, list) or not classes:
        raise InputError(f"{out}/job.json names no classes; rerun the labelling job")
    rows = job_review_rows(out)
    shown = rows if limit is None else rows[: max(0, limit)]
    cards = []
    for row in shown:
        name = thumbnail_name(row, classes)
        shown_name = _readable(row.file_name)
        try:
            if row.answer == ABSENT:
                picture = f'<div class="absent">{html.escape(row.class_name)}: not found</div>'
            else:
                write_image(out / name, _thumbnail(out, row, classes, side), quality=85)
                source = _href(name)
                picture = f'<img src="{source}" alt="{html.escape(shown_name)}" loading="lazy">'
        except (OSError, InputError) as err:
            picture = f'<div class="missing">{html.escape(_readable(str(err)))}</div>'
        overlay = out / "overlay" / f"{row.key}.jpg"
        if overlay.is_file():
            picture = f'<a href="{_href(f"overlay/{row.key}.jpg")}">{picture}</a>'
        if row.answer == ABSENT:
            estimate = "absent"
        else:
            estimate = "no estimate" if row.estimate is None else f"estimate {row.estimate:.2f}"
        cards.append(
            "<figure>"
            + picture
            + f"<figcaption><b>#{row.rank}</b> {html.escape(row.class_name)} · {estimate}"
            + f"<br>{html.escape(row.reason)}<br><small>{html.escape(shown_name)}</small>"
            + "</figcaption></figure>"
        )
    title = f"prosam review: {html.escape(out.name)}"
    summary = (
        f"{sum(r.answer == FOUND for r in rows)} masks and "
        f"{sum(r.answer == ABSENT for r in rows)} 'not in this image' answers: the answers "
        "nearest the threshold first, then the masks worst first by quality estimate"
        + ("" if len(shown) == len(rows) else f"; the first {len(shown)} shown")
        + f"; the list is in {REVIEW_FILE}."
    )
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; background: #fafafa; }}
main {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; width: {side}px; background: #fff; padding: 4px; border: 1px solid #ddd; }}
figure img {{ max-width: 100%; display: block; }}
figcaption {{ font-size: 13px; padding-top: 4px; overflow-wrap: anywhere; }}
.missing {{ color: #a00; font-size: 12px; }}
.absent {{ color: #555; background: #eee; padding: 2em 0; text-align: center; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p>{html.escape(summary)}</p>
<main>
{chr(10).join(cards)}
</main>
</body>
</html>
"""
    path = out / SHEET_FILE
    write_bytes_atomic(path, page.encode())
    return path
