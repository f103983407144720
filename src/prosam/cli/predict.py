"""``prosam predict``: segment one image from clicks and/or a box."""

from __future__ import annotations

import argparse
import time
import warnings
from typing import TYPE_CHECKING

import numpy as np

from prosam.cli.options import (
    add_model_args,
    add_stable_option,
    attach_stable_from_args,
    load_model,
    parse_box,
    parse_point,
)
from prosam.cli.outputs import check_output_file
from prosam.errors import InputError, ProsamWarning

if TYPE_CHECKING:
    pass


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment one image from points and/or a box")
    p.add_argument("image")
    p.add_argument(
        "--point",
        action="append",
        type=parse_point,
        default=[],
        metavar="X,Y[,L]",
        help="a prompt point in pixels; label 1 (default) foreground, 0 background",
    )
    p.add_argument("--box", type=parse_box, default=None, metavar="X0,Y0,X1,Y1")
    p.add_argument("--out", required=True, help="output mask PNG (0/255, the image's size)")
    add_stable_option(p)
    p.add_argument(
        "--multimask",
        choices=["auto", "on", "off"],
        default="auto",
        help="three candidates and keep the best-scoring one; auto = on for a "
        "single point, off otherwise (SAM's recommendation)",
    )
    add_model_args(p)
    p.set_defaults(func=cmd_predict)


def _prompts_on_image(
    points: np.ndarray, box: np.ndarray | None, size: tuple[int, int]
) -> np.ndarray | None:
    """Refuse clicks outside the image; the box clipped to it (said in one line)."""
    from prosam.prompts.user_prompts import check_points_inside, clip_box, clip_notice

    check_points_inside(points.tolist(), size)
    if box is None:
        return None
    clipped, changed = clip_box(box.tolist(), size)
    if changed:
        warnings.warn(clip_notice("--box", box.tolist(), clipped, size), ProsamWarning, 2)
    return np.array(clipped, dtype=np.float64)


def cmd_predict(args: argparse.Namespace) -> int:
    from prosam.io import read_image, write_mask_png
    from prosam.sam import Predictor

    if not args.point and args.box is None:
        raise InputError("give --box X0,Y0,X1,Y1 and/or one or more --point X,Y[,LABEL]")
    check_output_file(args.out, (".png",), "predict writes a PNG mask")
    image = read_image(args.image)
    points = np.array([p[:2] for p in args.point], dtype=np.float64).reshape(-1, 2)
    labels = np.array([p[2] for p in args.point], dtype=np.int64)
    box = np.array(args.box, dtype=np.float64) if args.box is not None else None
    try:
        box = _prompts_on_image(points, box, image.shape[:2])
    except InputError as err:
        raise InputError(f"{args.image}: {err}") from None
    multimask = {"on": True, "off": False}.get(args.multimask, len(points) == 1 and box is None)
    model, cache = load_model(args)
    attach_stable_from_args(args, model)
    predictor = Predictor(model, cache=cache)
    t0 = time.perf_counter()
    try:
        embedded = predictor.embed(image)
    except InputError as err:
        raise InputError(f"{args.image}: {err}") from None
    prediction = predictor.predict(
        embedded,
        points=points if len(points) else None,
        point_labels=labels if len(points) else None,
        box=box,
        multimask_output=multimask,
    )
    mask, score = prediction.best()
    write_mask_png(args.out, mask)
    print(
        f"{args.out}: {int(mask.sum())} foreground pixels, predicted IoU {score:.3f} "
        f"({time.perf_counter() - t0:.2f} s)"
    )
    return 0
