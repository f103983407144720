"""``prosam stable train``: train the Stable-SAM plugin."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from prosam.cli.options import add_model_args, load_model
from prosam.cli.outputs import run_log
from prosam.errors import InputError

if TYPE_CHECKING:
    from prosam.data.types import Dataset


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stable", help="Stable-SAM plugin")
    ssub = p.add_subparsers(dest="stable_command", required=True)
    t = ssub.add_parser("train", help="train the plugin with the robust training strategy")
    t.add_argument(
        "--data",
        action="append",
        required=True,
        help="coco:DIR[,DIR...] | folder:DIR | ... (repeatable: every source is used)",
    )
    t.add_argument("--split", default=None, help="only this split of every source")
    t.add_argument("--min-area", type=float, default=0.0, help="class area filter (fraction)")
    t.add_argument(
        "--objects",
        default="both",
        choices=("both", "instances", "classes", "components"),
        help="what an object is (default both: every instance, plus the class mask of classes "
        "with several instances)",
    )
    t.add_argument(
        "--min-object-area",
        type=float,
        default=0.002,
        help="objects smaller than this fraction of their image are left out (default 0.002)",
    )
    t.add_argument(
        "--folder-images",
        type=int,
        default=6,
        help="images kept per class of folder: sources, evenly spaced (video frames are "
        "near-duplicates; default 6)",
    )
    t.add_argument(
        "--exclude-images",
        default=None,
        help="file of image keys never trained on, one per line (e.g. from "
        "`prosam eval robustness --list-images`)",
    )
    t.add_argument("--max-objects", type=int, default=None, help="objects per epoch (default: all)")
    t.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="fraction of the first --data source's images held out for validation",
    )
    t.add_argument("--val-objects", type=int, default=40, help="validation objects (class masks)")
    t.add_argument(
        "--val-min-area", type=float, default=0.01, help="validation objects' minimum area"
    )
    t.add_argument("--val-b", type=int, default=3, help="prompts per validation object and kind")
    t.add_argument("--val-every", type=int, default=None, help="also validate every N objects seen")
    t.add_argument("--out", required=True)
    t.add_argument("--resume", action="store_true", help="continue from OUT/last")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--blocks", default="1", help="decoder blocks to patch, e.g. 1 or 0,1")
    t.add_argument("--offset-scale", type=float, default=2.0, help="s_p, in feature cells")
    t.add_argument("--offset-hidden", type=int, default=None)
    t.add_argument("--no-routing", action="store_true", help="DSP only (no DRP)")
    t.add_argument(
        "--occlusion",
        action="store_true",
        help="synthetic occlusion (an image-encoder pass per occluded object)",
    )
    t.add_argument("--occlusion-prob", type=float, default=0.5)
    t.add_argument("--no-progress", action="store_true")
    add_model_args(t)
    t.set_defaults(func=cmd_stable_train)


def _read_keys(path: str) -> set[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise InputError(f"--exclude-images {path}: {err.strerror}") from None
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def _sources(args: argparse.Namespace) -> list[Dataset]:
    from prosam.data.specs import load_dataset_spec
    from prosam.stable import evenly_spaced_per_class, without_keys

    exclude = _read_keys(args.exclude_images) if args.exclude_images else set()
    out = []
    for spec in args.data:
        dataset = load_dataset_spec(spec, split=args.split, min_area_fraction=args.min_area)
        if spec.startswith("folder:"):
            dataset = evenly_spaced_per_class(dataset, args.folder_images)
        out.append(without_keys(dataset, exclude))
    return out


def cmd_stable_train(args: argparse.Namespace) -> int:
    from prosam.io import write_bytes_atomic
    from prosam.sam import Predictor
    from prosam.stable import (
        StableSamPlugin,
        StableTrainSettings,
        TrainingObjects,
        dataset_objects,
        held_out_keys,
        train_stable,
        without_keys,
    )

    if not 0 < args.occlusion_prob <= 1:
        raise InputError("--occlusion-prob must be in (0, 1]")
    sources = _sources(args)
    val_keys = held_out_keys(sources[0], args.val_fraction, seed=args.seed)
    val_items = []
    if val_keys:
        val_set = without_keys(sources[0], val_keys, keep=True)
        val_items = [
            item
            for item in dataset_objects(val_set, min_pixels=16)
            if item.mask.mean() >= args.val_min_area
        ][: args.val_objects]
        sources[0] = without_keys(sources[0], val_keys)
    objects = TrainingObjects(
        sources,
        mode=args.objects,
        min_area_fraction=args.min_object_area,
        progress=not args.no_progress,
    )
    model, cache = load_model(args)
    blocks = tuple(int(b) for b in args.blocks.split(",") if b)
    plugin = StableSamPlugin.for_sam(
        model,
        blocks=blocks,
        offset_scale=args.offset_scale,
        offset_hidden=args.offset_hidden,
        routing=not args.no_routing,
    )
    settings = StableTrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        occlusion=args.occlusion,
        occlusion_prob=args.occlusion_prob,
        max_objects_per_epoch=args.max_objects,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = run_log(out / "train.log")

    counts = ", ".join(f"{n} from {name}" for name, n in objects.counts().items())
    log(f"Stable-SAM plugin: {plugin.count_parameters():,} trainable parameters")
    log(f"training objects: {len(objects)} ({counts}); validation objects: {len(val_items)}")
    summary = train_stable(
        plugin,
        Predictor(model, cache=cache),
        objects,
        settings,
        out,
        val_items=val_items or None,
        val_b=args.val_b,
        val_every=args.val_every,
        resume=args.resume,
        config={
            "data": args.data,
            "split": args.split,
            "objects": args.objects,
            "min_object_area": args.min_object_area,
            "folder_images": args.folder_images,
            "exclude_images": args.exclude_images,
            "val_fraction": args.val_fraction,
            "val_objects": len(val_items),
        },
        progress=not args.no_progress,
        log=log,
    )
    summary["object_counts"] = objects.counts()
    write_bytes_atomic(out / "summary.json", json.dumps(summary, indent=1, default=str).encode())
    log(
        f"checkpoints in {out} ({summary['objects_seen']} objects seen, {summary['seconds']:.0f} s)"
    )
    return 0
