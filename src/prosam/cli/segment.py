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
    attach_stable_from_args,
    load_model,
    parse_method_options,
)
from prosam.cli.outputs import check_output_dir
from prosam.cli.references import (
    add_reference_args,
    fit_segmenter,
    reference_annotation,
    references_from_args,
)
from prosam.errors import InputError, failure_reason
from prosam.io import inside
from prosam.label.classes import safe_name
from prosam.label.defaults import DEFAULT_METHOD, default_score_threshold
from prosam.label.targets import TargetEntry, expand_label_targets, plan_targets, target_root

if TYPE_CHECKING:
    from prosam.label.review import ReviewRow
    from prosam.methods import ReferenceMethod
    from prosam.quality import QualityModel
    from prosam.sam import Predictor


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
        type=float,
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
    from prosam.io import read_image
    from prosam.label.api import annotation_to_mask, reference_from_annotation
    from prosam.methods import Reference, build_method
    from prosam.quality import resolve_quality_model
    from prosam.sam import Predictor

    check_output_dir(args.out)
    options = parse_method_options(args.method_option)
    references, classes = references_from_args(args)
    out = Path(args.out)
    names = list(dict.fromkeys(classes))
    entries = plan_outputs(
        args.targets, out, instances=args.instances, classes=names if len(names) > 1 else None
    )
    if len(references) > 1:
        return _segment_several(args, references, classes, entries, out, options)
    ref_image = read_image(references[0]["image"])
    annotation = reference_annotation(references[0])
    if isinstance(annotation, str):
        annotation = {"mask": annotation}
    drawn = None  # rasterised now, so that a bad annotation is refused before the model loads
    if 0 not in annotation.get("labels", ()):
        drawn = annotation_to_mask(annotation, ref_image.shape[:2])
    quality = resolve_quality_model(args.quality_model, args.method)
    model, cache = load_model(args)
    attach_stable_from_args(args, model)
    predictor = Predictor(model, cache=cache)
    method = build_method(args.method, model, checkpoint=args.checkpoint, **options)
    try:
        if drawn is None:
            reference = reference_from_annotation(ref_image, annotation, predictor)
        else:
            reference = Reference(ref_image, drawn[0], predictor.embed(ref_image), drawn[1])
    except InputError as err:
        raise InputError(f"{references[0]['image']}: {err}") from None
    method.fit([reference])
    threshold = (
        default_score_threshold(args.method)
        if args.score_threshold is None
        else args.score_threshold
    )

    def one(entry: TargetEntry) -> list[ReviewRow]:
        row = _segment_one(method, predictor, entry, out, args.instances, threshold, quality)
        return [] if row is None else [row]

    return _run_targets(entries, one, out, args.no_progress, threshold, quality is not None)


def _run_targets(
    entries: Sequence[TargetEntry],
    segment_one: Callable[[TargetEntry], list[ReviewRow]],
    out: Path,
    no_progress: bool,
    threshold: float,
    estimated: bool,
) -> int:
    """Segment every target with ``segment_one`` (its review rows; none: nothing found),
    write ``review.csv``, print the summary; status 1 when a target failed."""
    from prosam.label.progress import progress_bar
    from prosam.label.review import review_order, write_review_csv

    failed = absent = 0
    rows: list[ReviewRow] = []
    t0 = time.perf_counter()
    bar = progress_bar(len(entries), 0, not no_progress, "segment")
    try:
        for entry in entries:
            try:
                found = segment_one(entry)
                absent += not found
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
        print(f"masks to check{', worst first' if estimated else ''}: {review}")
    return 1 if failed else 0


def _segment_several(
    args: argparse.Namespace,
    references: Sequence[dict[str, Any]],
    classes: Sequence[str],
    entries: Sequence[TargetEntry],
    out: Path,
    options: dict[str, Any],
) -> int:
    """Several references (of one class or several): a :class:`~prosam.label.api.Segmenter`
    (each pixel to at most one class; ``cpc`` fitted on all classes at once; ``options`` go
    to the method), one mask per class and target: ``OUT/<key>.png`` for one class,
    ``OUT/<class>/<key>.png`` for more."""
    from prosam.io import write_mask_png
    from prosam.label.review import ReviewRow
    from prosam.label.writers import write_instance_png

    seg = fit_segmenter(args, list(references), list(classes), method_options=options)
    names = seg.classes

    def one(entry: TargetEntry) -> list[ReviewRow]:
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
        return rows

    threshold = seg.score_threshold
    return _run_targets(
        entries, one, out, args.no_progress, threshold, seg.quality_model is not None
    )


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


def _segment_one(
    method: ReferenceMethod,
    predictor: Predictor,
    entry: TargetEntry,
    out_dir: Path,
    instances: bool,
    threshold: float,
    quality: QualityModel | None,
) -> ReviewRow | None:
    """Segment one target, write ``OUT/<key>.png`` (and ``-instances.png``); an empty mask
    when the method's score is under ``threshold``. Returns the mask's review row (with its
    quality estimate when ``quality`` is given), ``None`` when the object was not found."""
    from prosam.io import read_image, write_mask_png
    from prosam.label.review import ReviewRow
    from prosam.label.writers import write_instance_png
    from prosam.methods import Target
    from prosam.quality import mask_signals
    from prosam.sam.transforms import original_size_mask

    out = out_dir / entry.key
    image = read_image(entry.path)
    embedded = predictor.embed(image)
    result = method.predict(Target(image, embedded))
    mask = original_size_mask(result.low_res_logits, embedded.geometry)
    found = result.score >= threshold
    if not found:
        mask[:] = False
    write_mask_png(inside(out_dir, out.with_name(f"{out.name}.png")), mask)
    if instances:
        objects = [
            (original_size_mask(i.low_res_logits, embedded.geometry) & mask, i.score)
            for i in result.instances
        ] or [(mask, result.score)]
        write_instance_png(
            inside(out_dir, out.with_name(f"{out.name}-instances.png")), objects, mask.shape
        )
    if not found or not mask.any():
        return None
    estimate, reason = None, ""
    if quality is not None:
        signals = mask_signals(result, mask)
        estimate, reason = quality.estimate(signals), quality.reason(signals)
    return ReviewRow(
        0,
        entry.file_name,
        "object",
        max(1, len(result.instances)),
        estimate,
        result.score,
        reason,
        entry.key,
    )
