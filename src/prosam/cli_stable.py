"""``prosam stable train`` and ``prosam eval robustness`` (Stable-SAM)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from prosam.errors import InputError


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="coco:DIR[,DIR...] | folder:DIR | ...")
    p.add_argument("--split", default=None, help="only this split (e.g. train2017)")
    p.add_argument("--min-area", type=float, default=0.0)
    p.add_argument("--max-objects", type=int, default=None)
    p.add_argument(
        "--split-components",
        action="store_true",
        help="treat each connected component of a class mask as an object",
    )


def add_stable_parser(
    sub: argparse._SubParsersAction, add_model_args: Callable[[argparse.ArgumentParser], None]
) -> None:
    p = sub.add_parser("stable", help="Stable-SAM plugin")
    ssub = p.add_subparsers(dest="stable_command", required=True)
    t = ssub.add_parser("train", help="train the plugin with the robust training strategy")
    _add_dataset_args(t)
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


def add_robustness_parser(
    eval_sub: argparse._SubParsersAction, add_model_args: Callable[[argparse.ArgumentParser], None]
) -> None:
    r = eval_sub.add_parser("robustness", help="mIoU, boundary mIoU and mSF per prompt kind")
    _add_dataset_args(r)
    r.add_argument(
        "--exclude-data",
        default=None,
        help="drop images whose file name is in this dataset (e.g. the training set)",
    )
    r.add_argument("--exclude-split", default=None, help="split of --exclude-data")
    r.add_argument("--kinds", default=None, help="comma-separated prompt kinds (default: all)")
    r.add_argument("--b", type=int, default=20, help="random prompts per object")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--plugin", default=None, help="a `prosam stable train` checkpoint")
    r.add_argument("--json", required=True)
    r.add_argument("--md", default=None, help="also write a markdown table here")
    r.add_argument("--no-progress", action="store_true")
    add_model_args(r)
    r.set_defaults(func=cmd_eval_robustness)

    from prosam.cli_fss import _add_data_args

    m = eval_sub.add_parser(
        "reference-robustness",
        help="a reference method's mIoU and mSF under re-drawn reference annotations or "
        "prompt-embedding noise",
    )
    _add_data_args(m)
    m.add_argument("--episodes", required=True, help="episode list from `prosam episodes make`")
    m.add_argument("--method", required=True)
    m.add_argument("--checkpoint", default=None)
    m.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE")
    m.add_argument(
        "--perturb",
        default="annotation:point,annotation:noisy_box",
        help="comma-separated: annotation:KIND (point, scribble, box, noisy_box, mask) and "
        "prompt_noise:S (VRP / ProSAM only)",
    )
    m.add_argument("--b", type=int, default=5, help="draws per episode and perturbation")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--limit", type=int, default=None, help="only the first N episodes")
    m.add_argument("--json", required=True)
    m.add_argument("--md", default=None)
    m.add_argument("--no-progress", action="store_true")
    add_model_args(m)
    m.set_defaults(func=cmd_eval_reference_robustness)


def cmd_stable_train(args: argparse.Namespace) -> int:
    from prosam.cli import _load_model
    from prosam.data.specs import load_dataset_spec
    from prosam.io import write_bytes_atomic
    from prosam.sam import Predictor
    from prosam.stable import StableSamPlugin, StableTrainSettings, train_stable

    dataset = load_dataset_spec(args.data, split=args.split, min_area_fraction=args.min_area)
    model, cache = _load_model(args)
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


def cmd_eval_robustness(args: argparse.Namespace) -> int:
    import sys
    import time

    from prosam.cli import _load_model
    from prosam.data.specs import load_dataset_spec
    from prosam.data.types import Dataset
    from prosam.io import write_bytes_atomic
    from prosam.sam import Predictor
    from prosam.stable import (
        ROBUSTNESS_KINDS,
        attach_stable_plugin,
        dataset_objects,
        evaluate_robustness,
        load_stable_plugin,
        to_markdown,
    )

    t0 = time.perf_counter()
    dataset = load_dataset_spec(args.data, split=args.split, min_area_fraction=args.min_area)
    if args.exclude_data:
        exclude = {s.key for s in load_dataset_spec(args.exclude_data, split=args.exclude_split)}
        kept = [s for s in dataset if s.key not in exclude]
        dataset = Dataset(kept, dataset.class_names, f"{dataset.description} minus training")
    kinds = args.kinds.split(",") if args.kinds else list(ROBUSTNESS_KINDS)
    unknown = [k for k in kinds if k not in ROBUSTNESS_KINDS]
    if unknown:
        raise InputError(f"unknown prompt kinds {unknown}; known: {', '.join(ROBUSTNESS_KINDS)}")
    model, cache = _load_model(args)
    handle = None
    if args.plugin:
        handle = attach_stable_plugin(model, load_stable_plugin(args.plugin, model))
    items = list(
        dataset_objects(
            dataset, split_components=args.split_components, max_objects=args.max_objects
        )
    )
    report = evaluate_robustness(
        Predictor(model, cache=cache),
        items,
        kinds,
        b=args.b,
        seed=args.seed,
        progress=not args.no_progress,
    )
    if handle is not None:
        handle.detach()
    report.update(
        {
            "command": "prosam " + " ".join(sys.argv[1:]),
            "model": model.name,
            "weights_sha256": model.weights_sha256,
            "plugin": args.plugin,
            "objects": len(items),
            "wall_seconds": time.perf_counter() - t0,
        }
    )
    write_bytes_atomic(Path(args.json), json.dumps(report, indent=1, default=str).encode())
    title = f"Robustness: {model.name}" + (" + Stable-SAM plugin" if args.plugin else "")
    markdown = to_markdown(report, title=title)
    if args.md:
        write_bytes_atomic(Path(args.md), markdown.encode())
    print(markdown)
    return 0


def cmd_eval_reference_robustness(args: argparse.Namespace) -> int:
    import sys

    from prosam.cli import _load_model
    from prosam.cli_fss import _dataset_and_classes, parse_method_options
    from prosam.data.episodes import episodes_hash, load_episodes
    from prosam.engine.reference_robustness import (
        evaluate_reference_robustness,
        parse_perturbation,
        to_markdown,
    )
    from prosam.io import write_bytes_atomic
    from prosam.methods import build_method
    from prosam.sam import Predictor

    perturbations = [p for p in args.perturb.split(",") if p]
    for spec in perturbations:
        parse_perturbation(spec)  # fail before loading anything
    dataset, _, _ = _dataset_and_classes(args)
    episodes, _ = load_episodes(args.episodes, dataset)
    if args.limit is not None:
        episodes = episodes[: args.limit]
    model, cache = _load_model(args)
    options = parse_method_options(args.method_option)
    method = build_method(args.method, model, checkpoint=args.checkpoint, **options)
    report = evaluate_reference_robustness(
        method,
        Predictor(model, cache=cache),
        episodes,
        perturbations,
        b=args.b,
        seed=args.seed,
        progress=not args.no_progress,
    )
    report.update(
        {
            "command": "prosam " + " ".join(sys.argv[1:]),
            "method": args.method,
            "checkpoint": args.checkpoint,
            "method_options": options,
            "model": model.name,
            "episodes_file": args.episodes,
            "episodes_hash": episodes_hash(episodes),
        }
    )
    write_bytes_atomic(args.json, json.dumps(report, indent=1).encode())
    table = to_markdown(report, title=f"{args.method} ({model.name})")
    if args.md:
        write_bytes_atomic(args.md, (table + "\n").encode())
    print(table)
    return 0
