"""``prosam stable train``: train the Stable-SAM plugin."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from prosam.cli.options import (
    add_model_args,
    add_object_data_args,
    load_model,
)

if TYPE_CHECKING:
    pass


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stable", help="Stable-SAM plugin")
    ssub = p.add_subparsers(dest="stable_command", required=True)
    t = ssub.add_parser("train", help="train the plugin with the robust training strategy")
    add_object_data_args(t)
    t.add_argument("--out", required=True)
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--blocks", default="1", help="decoder blocks to patch, e.g. 1 or 0,1")
    t.add_argument("--offset-scale", type=float, default=2.0, help="s_p, in feature cells")
    t.add_argument("--offset-hidden", type=int, default=None)
    t.add_argument("--no-routing", action="store_true", help="DSP only (no DRP)")
    t.add_argument("--occlusion", action="store_true", help="synthetic occlusion (slow on CPU)")
    t.add_argument("--no-progress", action="store_true")
    add_model_args(t)
    t.set_defaults(func=cmd_stable_train)


def cmd_stable_train(args: argparse.Namespace) -> int:
    from prosam.data.specs import load_dataset_spec
    from prosam.io import write_bytes_atomic
    from prosam.sam import Predictor
    from prosam.stable import StableSamPlugin, StableTrainSettings, train_stable

    dataset = load_dataset_spec(args.data, split=args.split, min_area_fraction=args.min_area)
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
        split_components=args.split_components,
        max_objects_per_epoch=args.max_objects,
    )
    print(f"Stable-SAM plugin: {plugin.count_parameters():,} trainable parameters")
    summary = train_stable(
        plugin,
        Predictor(model, cache=cache),
        dataset,
        settings,
        args.out,
        config={"data": args.data, "split": args.split},
        progress=not args.no_progress,
    )
    write_bytes_atomic(
        Path(args.out) / "summary.json", json.dumps(summary, indent=1, default=str).encode()
    )
    print(f"checkpoints in {args.out}")
    return 0
