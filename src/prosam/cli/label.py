"""``prosam label``: label many targets like annotated references, resumably.

Each ``--ref IMAGE`` is followed by one annotation (``--ref-mask``, ``--ref-box``,
``--ref-points`` or ``--ref-scribble``) and optionally ``--class NAME`` (default
``object``); references naming the same class fit one method together. With several
classes every pixel goes to at most one of them (``--overlaps``); ``--method cpc`` fits one
method on all classes at once, calibrated once per job (saved in ``OUT/calibration.*``).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import TYPE_CHECKING

from prosam.cli.options import (
    add_checkpoint_option,
    add_method_choice,
    add_method_option_arg,
    add_model_args,
    add_quality_option,
    add_stable_option,
    finite_float,
    fraction,
    parse_method_options,
    positive_int,
)
from prosam.cli.outputs import check_output_dir
from prosam.cli.references import (
    add_reference_args,
    fit_segmenter,
    references_from_args,
)
from prosam.errors import InputError
from prosam.label.defaults import ENCODE_AHEAD_MIN_CORES
from prosam.label.targets import expand_label_targets, target_root
from prosam.methods.capabilities import UNCERTAINTY
from prosam.methods.registry import list_methods

if TYPE_CHECKING:
    pass


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` with ``0 <= I < N``."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must be I/N, e.g. 0/4; got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= I < N")
    return i, n


def parse_formats(text: str) -> list[str]:
    """Comma-separated output formats."""
    from prosam.label.writers import FORMATS

    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown format(s) {bad or text!r}; choose from {','.join(FORMATS)}"
        )
    return list(dict.fromkeys(names))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``prosam label`` to the ``prosam`` command's subparsers."""
    from prosam.label.defaults import (
        DEFAULT_MAX_PIXELS,
        DEFAULT_METHOD,
        DEFAULT_MIN_AREA_FRACTION,
        DEFAULT_SCORE_THRESHOLD,
    )

    p = sub.add_parser(
        "label",
        help="label many target images like annotated references (png, COCO, YOLO outputs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=cmd_label)
    add_reference_args(p)
    p.add_argument(
        "targets",
        nargs="*",
        help="target images, folders of images, or @LIST.txt (one path a line, relative to "
        "the list's folder)",
    )
    p.add_argument("--recursive", action="store_true", help="look into sub-folders too")
    p.add_argument(
        "--fps",
        type=float,
        default=None,
        help="video targets: label this many frames per second (default: every frame)",
    )
    p.add_argument(
        "--every", type=int, default=None, metavar="N", help="video targets: every N-th frame"
    )
    p.add_argument(
        "--overlay-video",
        action="store_true",
        help="video targets: also write OUT/overlay-video/<video>.mp4 with the masks drawn",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--root",
        default=None,
        metavar="DIR",
        help="label only files whose real path (links followed) lies under DIR; a link "
        "leading out of it is reported as a failure and never opened (the page's jobs use "
        "the page's --root)",
    )
    p.add_argument(
        "--format",
        dest="formats",
        type=parse_formats,
        default=["png", "coco"],
        metavar="png,coco,...",
        help="png, png-indexed, coco, yolo, overlay (default: png,coco)",
    )
    add_method_choice(p, default=DEFAULT_METHOD)
    add_method_option_arg(p, "max_instances=1 (one object per target)")
    add_checkpoint_option(p)
    add_stable_option(p)
    add_quality_option(p)
    p.add_argument(
        "--overlaps",
        choices=("resolve", "keep"),
        default="resolve",
        help="where two classes claim a pixel: resolve (default) gives it to the class of "
        "highest logit, so each pixel has at most one class; keep leaves each class's mask "
        "as its method gave it",
    )
    p.add_argument(
        "--uncertainty",
        action="store_true",
        help="ProSAM: record the mean uncertainty inside each mask",
    )
    p.add_argument(
        "--score-threshold",
        type=finite_float,
        default=None,
        help="a class scoring below this is 'not in this image' and gets no mask (default: "
        "the method's calibrated presence threshold"
        + "".join(
            f", {s.name} {s.presence_threshold:g}"
            for s in list_methods()
            if s.presence_threshold is not None
        )
        + f"; {DEFAULT_SCORE_THRESHOLD:g} for the others, whose score is SAM's predicted IoU)",
    )
    p.add_argument(
        "--min-area-fraction",
        type=fraction,
        default=DEFAULT_MIN_AREA_FRACTION,
        metavar="FRACTION",
        help="drop masks covering less than this fraction of the image (default %(default)s)",
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help="larger targets are reported as failures (default %(default)s)",
    )
    p.add_argument(
        "--shard",
        type=parse_shard,
        default=None,
        metavar="I/N",
        help="label every N-th target from the I-th (default: RANK/WORLD_SIZE, else 0/1)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="threads reading the next targets ahead of the model (0: inline)",
    )
    p.add_argument(
        "--encode-ahead",
        type=int,
        default=None,
        help="targets SAM's image encoder runs ahead of the matching, in a thread (0: inline; "
        f"default 1, but 0 when OpenVINO or ONNX Runtime runs the encoder on fewer than "
        f"{ENCODE_AHEAD_MIN_CORES} CPU cores)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="label with a pool of Ray actors (prosam[ray]): alone, on a Ray started here; "
        "with ADDRESS (or auto), on that cluster (paths must be readable on every node)",
    )
    p.add_argument(
        "--ray-actors", type=int, default=2, help="Ray actors, one model each (default 2)"
    )
    p.add_argument(
        "--cache-target-embeddings",
        action="store_true",
        help="also cache the targets' SAM embeddings (references' always are)",
    )
    p.add_argument(
        "--restart", action="store_true", help="discard earlier records in --out and start over"
    )
    p.add_argument(
        "--finalize",
        action="store_true",
        help="only rebuild coco.json, failures.json and review.csv from the records (after all "
        "shards)",
    )
    p.add_argument("--no-progress", action="store_true")
    add_model_args(p)


def cmd_label(args: argparse.Namespace) -> int:
    """Run (or finalize) a labelling job; status 1 when a target failed."""
    from prosam.label.job import finalize_outputs
    from prosam.label.video_targets import video_targets, write_overlay_videos

    if args.finalize:
        result = finalize_outputs(args.out, args.formats)
        print(
            f"{args.out}: {result.images} images, {result.annotations} masks, "
            f"{len(result.failures)} failed, {len(result.missing)} not labelled yet"
        )
        return 1 if result.failures or result.missing else 0

    check_output_dir(args.out)
    references, classes = references_from_args(args)
    if not args.targets:
        raise InputError("give target images, folders, videos or @list.txt")
    videos = video_targets(
        args.targets, args.out, fps=args.fps, every=args.every, progress=not args.no_progress
    )
    if args.overlay_video and not videos.frames:
        raise InputError("--overlay-video needs a video target")
    targets = expand_label_targets(videos.others, recursive=args.recursive, out=args.out)
    targets += videos.paths()
    if not targets:
        raise InputError("no target images found")
    root = target_root([*videos.others, *map(str, videos.folders)], targets)
    allowed_root = None
    if args.root is not None:
        allowed_root = os.path.realpath(args.root)
        if not os.path.isdir(allowed_root):
            raise InputError(f"--root {args.root}: not a folder")
        if args.ray is not None:
            raise InputError("--root and --ray: give the cluster only files under the root")
    able = [m.name for m in list_methods() if UNCERTAINTY in m.capabilities]
    if args.uncertainty and args.method not in able:
        raise InputError(f"--uncertainty needs a method with an uncertainty map: {', '.join(able)}")
    options = parse_method_options(args.method_option, args.method)
    if args.uncertainty:
        options["uncertainty"] = True
    seg = fit_segmenter(
        args,
        references,
        classes,
        cache_targets=args.cache_target_embeddings,
        min_area_fraction=args.min_area_fraction,
        method_options=options,
        overlaps=args.overlaps,
    )
    if args.ray is not None:
        from prosam.label.ray_job import label_paths_with_ray

        if args.shard is not None:
            raise InputError("--ray and --shard: Ray shares the work out itself")
        make = functools.partial(
            fit_segmenter,
            args,
            references,
            classes,
            cache_targets=args.cache_target_embeddings,
            min_area_fraction=args.min_area_fraction,
            method_options=options,
            overlaps=args.overlaps,
        )
        summary = label_paths_with_ray(
            make,
            targets,
            args.out,
            root=root,
            formats=args.formats,
            actors=args.ray_actors,
            address=None if args.ray == "local" else args.ray,
            max_pixels=args.max_pixels,
            restart=args.restart,
            progress=not args.no_progress,
            segmenter=seg,
        )
    else:
        summary = seg.label(
            targets,
            args.out,
            formats=args.formats,
            shard=args.shard,
            workers=args.workers,
            encode_ahead=args.encode_ahead,
            max_pixels=args.max_pixels,
            progress=not args.no_progress,
            restart=args.restart,
            root=root,
            allowed_root=allowed_root,
        )
    rate = summary.processed / summary.seconds if summary.seconds else 0.0
    i, n = summary.shard
    print(
        f"{args.out}: {summary.processed} labelled ({summary.empty} with nothing found), "
        f"{summary.skipped} already done, {summary.failed} failed"
        + (f", {summary.replaced} changed since" if summary.replaced else "")
        + (f", outputs of {summary.removed} gone targets removed" if summary.removed else "")
        + (f", {summary.elsewhere} by another process" if summary.elsewhere else "")
        + (f" [shard {i}/{n}: {summary.shard_targets} of {summary.total}]" if n > 1 else "")
        + f", {rate:.2f} img/s (SAM encoder: {seg.model.backend} {seg.model.precision}, "
        f"decoder: {seg.model.decoder_backend})"
    )
    if summary.finalized:
        estimated = "" if seg.quality_model is None else ", worst quality estimate first"
        print(
            f"masks to check{estimated}: {os.path.join(args.out, 'review.csv')} "
            f"(contact sheet: prosam review {args.out})"
        )
    if args.overlay_video and summary.finalized:
        for path in write_overlay_videos(
            args.out, videos, targets, root, fps=args.fps, every=args.every
        ):
            print(f"overlay video: {path}")
    if summary.failed:
        where = "failures.json" if summary.finalized else "failures"
        print(f"failed targets and why: {os.path.join(args.out, where)}", file=sys.stderr)
    if not summary.finalized:
        print(
            "other shards are still running: the last to finish writes coco.json "
            "(or run the same command with --finalize)"
        )
    return 1 if summary.failed else 0
