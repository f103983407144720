"""``prosam segment``: segment targets like an annotated reference."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prosam.cli.options import (
    add_checkpoint_option,
    add_method_choice,
    add_method_option_arg,
    add_model_args,
    add_quality_option,
    add_stable_option,
    finite_float,
    parse_method_options,
)
from prosam.cli.outputs import check_output_dir
from prosam.cli.references import (
    add_reference_args,
    fit_segmenter,
    references_from_args,
)
from prosam.errors import InputError, failure_reason
from prosam.io import inside
from prosam.label.classes import safe_name
from prosam.label.defaults import DEFAULT_METHOD
from prosam.label.targets import (
    TargetEntry,
    check_target_file,
    expand_label_targets,
    plan_targets,
    target_root,
)

if TYPE_CHECKING:
    from prosam.label.review import ReviewRow


def add_parser(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "segment",
        help="segment targets like annotated reference images (one or several classes)",
    )
    add_reference_args(p)
    p.add_argument("targets", nargs="+", help="target images or folders")
    p.add_argument(
        "--out",
        required=True,
        help="output folder: OUT/<target path>.png, the path relative to the folder common "
        "to the targets (a/x.jpg and b/x.jpg give OUT/a/x.png and OUT/b/x.png); with "
        "several classes OUT/<class>/<target path>.png, each pixel in at most one class",
    )
    add_method_choice(p, default=DEFAULT_METHOD)
    add_method_option_arg(p, "max_instances=1 (one object per target)")
    p.add_argument(
        "--score-threshold",
        type=finite_float,
        default=None,
        help="a target scoring below this gets an empty mask: the object is not in it "
        "(default: the method's calibrated presence threshold, as in `prosam label`)",
    )
    p.add_argument(
        "--instances",
        action="store_true",
        help="also write OUT/<target path>-instances.png: 0 background, i the i-th object "
        "(best first; a method without instances gives its mask as object 1)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_checkpoint_option(p)
    add_stable_option(p)
    add_quality_option(p)
    add_model_args(p)
    p.set_defaults(func=cmd_segment)


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment every target like the references; status 1 when a target failed."""

    check_output_dir(args.out)
    options = parse_method_options(args.method_option, args.method)
    references, classes = references_from_args(args)
    out = Path(args.out)
    names = list(dict.fromkeys(classes))
    entries = plan_outputs(
        args.targets, out, instances=args.instances, classes=names if len(names) > 1 else None
    )
    return _segment_all(args, references, classes, entries, out, options)


def _run_targets(
    entries: Sequence[TargetEntry],
    segment_one: Callable[[TargetEntry], list[ReviewRow]],
    out: Path,
    no_progress: bool,
    threshold: float,
) -> int:
    """Segment every target with ``segment_one`` (its review rows; none: nothing found),
    write ``review.csv``, print the summary; status 1 when a target failed."""
    from prosam.label.progress import progress_bar
    from prosam.label.review import ABSENT, review_order, write_review_csv

    failed = absent = 0
    rows: list[ReviewRow] = []
    t0 = time.perf_counter()
    bar = progress_bar(len(entries), 0, not no_progress, "segment")
    try:
        for entry in entries:
            try:
                found = segment_one(entry)
                absent += all(r.answer == ABSENT for r in found)
                rows += found
            except Exception as err:  # one target's problem: the others are still segmented
                reason = failure_reason(err)
                if str(entry.path) not in reason:
                    reason = f"{entry.path}: {reason}"
                bar.write(f"skipped: {reason}", file=sys.stderr)
                failed += 1
            bar.update(1)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    done = len(entries) - failed
    review = write_review_csv(out, review_order(rows))
    print(
        f"{out}: {done} segmented, {failed} failed"
        + (f", {absent} without the object (score under {threshold:g})" if absent else "")
        + (f", {done / seconds:.2f} img/s" if seconds > 0 and done else "")
    )
    if rows:
        print(f"answers to check ('not in this image' first, then masks worst first): {review}")
    return 1 if failed else 0


def _segment_all(
    args: argparse.Namespace,
    references: Sequence[dict[str, Any]],
    classes: Sequence[str],
    entries: Sequence[TargetEntry],
    out: Path,
    options: dict[str, Any],
) -> int:
    """Segment every target through a :class:`~prosam.label.api.Segmenter`, the path
    ``prosam label`` and the page take (presence threshold, minimum area, each pixel to at
    most one class; ``cpc`` fitted on all classes at once; ``options`` go to the method):
    one mask per class and target, ``OUT/<key>.png`` for one class, ``OUT/<class>/<key>.png``
    for more; every answer, found or absent, goes to ``review.csv``."""
    from prosam.io import write_mask_png
    from prosam.label.review import ReviewRow, absent_row
    from prosam.label.writers import write_instance_png

    seg = fit_segmenter(args, list(references), list(classes), method_options=options)
    names = seg.classes
    threshold = seg.score_threshold

    def one(entry: TargetEntry) -> list[ReviewRow]:
        check_target_file(entry.path)
        (result,) = seg.predict([entry.path])
        rows = []
        for c in names:
            base = out / safe_name(c) / entry.key if len(names) > 1 else out / entry.key
            mask = result.masks[c]
            write_mask_png(inside(out, base.with_name(f"{base.name}.png")), mask)
            objects = result.instances.get(c) or [(mask, result.scores[c])]
            if args.instances:
                write_instance_png(
                    inside(out, base.with_name(f"{base.name}-instances.png")), objects, mask.shape
                )
            if mask.any():
                rows.append(
                    ReviewRow(
                        0, entry.file_name, c, len(objects), result.quality.get(c),
                        result.scores[c], result.reasons.get(c) or "", entry.key,
                    )
                )  # fmt: skip
            else:
                score = float(result.scores[c])
                rows.append(absent_row(entry.file_name, c, score, threshold, entry.key))
        return rows

    return _run_targets(entries, one, out, args.no_progress, threshold)


def plan_outputs(
    items: Sequence[str],
    out: Path,
    *,
    instances: bool,
    classes: Sequence[str] | None = None,
) -> list[TargetEntry]:
    """The targets ``items`` name, each keyed by its path relative to their common folder
    (``OUT/<key>.png``, or ``OUT/<class>/<key>.png`` for each of ``classes``); a folder's
    files under ``out`` are left out."""
    paths = expand_label_targets(items, out=out)
    if not paths:
        raise InputError("no target images found")
    entries = plan_targets(paths, root=target_root(items, paths))
    sources = {e.path.resolve() for e in entries}
    folders = [out / safe_name(c) for c in classes] if classes else [out]
    for e in entries:
        for folder in folders:
            mask = folder / f"{e.key}.png"
            if mask.resolve() in sources:
                raise InputError(f"--out {out}: the mask of {e.path} would overwrite {mask}")
    keys = {e.key.casefold() for e in entries}
    clash = [e.key for e in entries if instances and f"{e.key}-instances".casefold() in keys]
    if clash:
        raise InputError(
            f"--instances would write {clash[0]}-instances.png over the mask of the target "
            f"{clash[0]}-instances; rename that file"
        )
    return entries
