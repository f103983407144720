"""``prosam segment``: segment targets like an annotated reference."""

from __future__ import annotations

import argparse
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
from prosam.errors import InputError
from prosam.label.targets import expand_label_targets

if TYPE_CHECKING:
    pass


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
    from prosam.io import read_image, write_mask_png
    from prosam.label.api import reference_from_annotation
    from prosam.label.writers import write_instance_png
    from prosam.methods import Target, build_method
    from prosam.sam import Predictor
    from prosam.sam.transforms import original_size_mask

    read_image(args.ref)  # a bad reference is refused before the model loads
    targets = expand_label_targets(args.targets)
    model, cache = load_model(args)
    attach_stable_from_args(args, model)
    predictor = Predictor(model, cache=cache)
    method = build_method(args.method, model, checkpoint=args.checkpoint)
    method.fit(
        [reference_from_annotation(args.ref, reference_annotation_from_args(args), predictor)]
    )
    out = Path(args.out)
    failed = 0
    for path in targets:
        try:
            image = read_image(path)
        except InputError as err:
            print(f"skipped: {err}")
            failed += 1
            continue
        embedded = predictor.embed(image)
        result = method.predict(Target(image, embedded))
        mask = original_size_mask(result.low_res_logits, embedded.geometry)
        write_mask_png(out / f"{path.stem}.png", mask)
        found = ""
        if args.instances:
            objects = [
                (original_size_mask(i.low_res_logits, embedded.geometry) & mask, i.score)
                for i in result.instances
            ] or [(mask, result.score)]
            write_instance_png(out / f"{path.stem}-instances.png", objects, mask.shape)
            found = f", {len(objects)} object(s)"
        print(
            f"{out / (path.stem + '.png')}: {int(mask.sum())} px, score {result.score:.3f}{found}"
        )
    return 1 if failed else 0
