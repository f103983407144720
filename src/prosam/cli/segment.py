"""``prosam segment``: segment targets like an annotated reference."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prosam.cli.options import (
    POINTS_HELP,
    add_checkpoint_option,
    add_method_choice,
    add_model_args,
    add_stable_option,
    attach_stable_from_args,
    load_model,
    parse_box,
    parse_points,
)
from prosam.cli.outputs import check_output_dir
from prosam.errors import InputError, ProsamError
from prosam.label.targets import expand_label_targets

if TYPE_CHECKING:
    from prosam.methods import ReferenceMethod
    from prosam.sam import Predictor


def add_parser(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser("segment", help="segment targets like an annotated reference image")
    p.add_argument("--ref", required=True, help="reference image")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--ref-mask", help="reference mask (0/255 or palette PNG)")
    group.add_argument("--ref-box", type=parse_box, metavar="X0,Y0,X1,Y1")
    group.add_argument(
        "--ref-points",
        type=parse_points,
        action="append",
        metavar="X,Y[,L][;X,Y[,L]...]",
        help=POINTS_HELP,
    )
    group.add_argument("--ref-scribble", help="image of the scribble (non-zero = drawn)")
    p.add_argument("targets", nargs="+", help="target images or folders")
    p.add_argument("--out", required=True, help="output folder: OUT/<target stem>.png")
    add_method_choice(p, default="persam")
    p.add_argument(
        "--instances",
        action="store_true",
        help="also write OUT/<target stem>-instances.png: 0 background, i the i-th object "
        "(best first; a method without instances gives its mask as object 1)",
    )
    add_checkpoint_option(p)
    add_stable_option(p)
    add_model_args(p)
    p.set_defaults(func=cmd_segment)


def reference_annotation_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The reference annotation the options give, as ``prosam.label.api`` takes it."""
    if args.ref_mask:
        return {"mask": args.ref_mask}
    if args.ref_scribble:
        return {"scribble": args.ref_scribble}
    if args.ref_box is not None:
        return {"box": list(args.ref_box)}
    clicks = [p for group in args.ref_points for p in group]
    return {"points": [[x, y] for x, y, _ in clicks], "labels": [label for *_, label in clicks]}


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment every target like the reference; status 1 when a target failed."""
    from prosam.io import read_image
    from prosam.label.api import annotation_to_mask, reference_from_annotation
    from prosam.methods import Reference, build_method
    from prosam.sam import Predictor

    check_output_dir(args.out)
    ref_image = read_image(args.ref)
    annotation = reference_annotation_from_args(args)
    drawn = None  # rasterised now, so that a bad annotation is refused before the model loads
    if 0 not in annotation.get("labels", ()):
        drawn = annotation_to_mask(annotation, ref_image.shape[:2])
    targets = expand_label_targets(args.targets)
    model, cache = load_model(args)
    attach_stable_from_args(args, model)
    predictor = Predictor(model, cache=cache)
    method = build_method(args.method, model, checkpoint=args.checkpoint)
    try:
        if drawn is None:
            reference = reference_from_annotation(ref_image, annotation, predictor)
        else:
            reference = Reference(ref_image, drawn[0], predictor.embed(ref_image), drawn[1])
    except InputError as err:
        raise InputError(f"{args.ref}: {err}") from None
    method.fit([reference])
    out = Path(args.out)
    failed = 0
    for path in targets:
        try:
            written = _segment_one(method, predictor, path, out, instances=args.instances)
        except Exception as err:  # one target's problem: the others are still segmented
            reason = " ".join(str(err).split())
            if not isinstance(err, ProsamError):
                reason = f"{type(err).__name__}: {reason}"
            if str(path) not in reason:
                reason = f"{path}: {reason}"
            print(f"skipped: {reason}", file=sys.stderr)
            failed += 1
            continue
        print(written)
    return 1 if failed else 0


def _segment_one(
    method: ReferenceMethod, predictor: Predictor, path: Path, out: Path, *, instances: bool
) -> str:
    """Segment one target, write its mask (and instances); the line that says so."""
    from prosam.io import read_image, write_mask_png
    from prosam.label.writers import write_instance_png
    from prosam.methods import Target
    from prosam.sam.transforms import original_size_mask

    image = read_image(path)
    embedded = predictor.embed(image)
    result = method.predict(Target(image, embedded))
    mask = original_size_mask(result.low_res_logits, embedded.geometry)
    write_mask_png(out / f"{path.stem}.png", mask)
    found = ""
    if instances:
        objects = [
            (original_size_mask(i.low_res_logits, embedded.geometry) & mask, i.score)
            for i in result.instances
        ] or [(mask, result.score)]
        write_instance_png(out / f"{path.stem}-instances.png", objects, mask.shape)
        found = f", {len(objects)} object(s)"
    return f"{out / (path.stem + '.png')}: {int(mask.sum())} px, score {result.score:.3f}{found}"
