"""``prosam episodes make`` and ``prosam eval fss``: the few-shot benchmark protocol."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from prosam.errors import InputError

if TYPE_CHECKING:
    from prosam.data.types import Dataset, Episode
    from prosam.engine.evaluate import EvalResult
    from prosam.engine.evaluate_multi import MultiEvalResult
    from prosam.metrics import FSSAccumulator
    from prosam.sam import EmbeddingCache, FrozenSam

ANNOTATIONS = ("point", "scribble", "box", "mask")

T = TypeVar("T")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", required=True, help="coco:DIR[,DIR...] | folder:DIR | pascal:ROOT | coco20i:ROOT"
    )
    p.add_argument("--split", default=None, help="only this split (e.g. val2017)")
    p.add_argument(
        "--min-area",
        type=float,
        default=0.0,
        help="skip (image, class) pairs whose mask covers less than this fraction",
    )
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument(
        "--scheme",
        choices=["interleaved", "contiguous"],
        default=None,
        help="fold scheme; default interleaved (COCO-20i) for COCO data, "
        "contiguous (PASCAL-5i) otherwise",
    )
    p.add_argument("--classes", choices=["novel", "base", "all"], default="novel")


def _add_episode_list_args(m: argparse.ArgumentParser) -> None:
    """The ``--annotation`` to ``--val-out`` options of the ``episodes make*`` commands."""
    m.add_argument("--annotation", choices=ANNOTATIONS, default="mask")
    m.add_argument("--n", type=int, default=1000, help="number of episodes (default 1000)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", required=True)
    m.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="move this fraction of target images to a validation list",
    )
    m.add_argument("--val-out", default=None, help="where the validation episodes go")


def _add_method_args(f: argparse.ArgumentParser, example: str) -> None:
    """``--method``, ``--checkpoint`` and ``--method-option`` (its help showing ``example``)."""
    f.add_argument("--method", required=True)
    f.add_argument("--checkpoint", default=None)
    f.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"method option, e.g. {example} (repeatable)",
    )


def add_episodes_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("episodes", help="seeded episode lists")
    esub = p.add_subparsers(dest="episodes_command", required=True)
    m = esub.add_parser("make", help="write a seeded list of episodes to JSON")
    _add_data_args(m)
    m.add_argument("--shots", type=int, default=1)
    _add_episode_list_args(m)
    m.set_defaults(func=cmd_episodes_make)
    from prosam.cli_multi import add_multi_episodes_parser

    add_multi_episodes_parser(esub)


def add_eval_parser(
    sub: argparse._SubParsersAction, add_model_args: Callable[[argparse.ArgumentParser], None]
) -> None:
    p = sub.add_parser("eval", help="evaluate a method")
    vsub = p.add_subparsers(dest="eval_command", required=True)
    f = vsub.add_parser("fss", help="few-shot segmentation protocol (FSS mIoU, FB-IoU)")
    _add_data_args(f)
    f.add_argument("--shots", type=int, default=None, help="default 1 (or the episode file's)")
    f.add_argument(
        "--annotation",
        choices=ANNOTATIONS,
        default=None,
        help="default mask (or the episode file's)",
    )
    _add_method_args(f, "backbone=efficientnet_lite0 for geometric")
    f.add_argument("--episodes", default=None, help="episode list from `prosam episodes make`")
    f.add_argument("--n", type=int, default=1000, help="episodes to draw without --episodes")
    f.add_argument("--limit", type=int, default=None, help="only the first N episodes")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--boundary", action="store_true", help="also compute boundary IoU")
    f.add_argument("--json", required=True, help="write results here")
    f.add_argument("--no-progress", action="store_true")
    add_model_args(f)
    f.set_defaults(func=cmd_eval_fss)
    from prosam.cli_stable import add_robustness_parser

    add_robustness_parser(vsub, add_model_args)
    from prosam.cli_multi import add_multi_eval_parser

    add_multi_eval_parser(vsub, add_model_args)


def _dataset_and_classes(args: argparse.Namespace) -> tuple[Dataset, list[int], str]:
    from prosam.data.folds import fold_split
    from prosam.data.specs import load_dataset_spec

    dataset = load_dataset_spec(args.data, split=args.split, min_area_fraction=args.min_area)
    scheme = args.scheme or ("interleaved" if args.data.startswith("coco") else "contiguous")
    order = sorted(dataset.class_names)
    base, novel = fold_split(order, args.fold, num_folds=args.folds, scheme=scheme)
    classes = {"novel": novel, "base": base, "all": order}[args.classes]
    return dataset, list(classes), scheme


def _protocol_meta(args: argparse.Namespace, scheme: str, classes: list[int]) -> dict[str, Any]:
    return {
        "data": args.data,
        "split": args.split,
        "min_area_fraction": args.min_area,
        "fold": args.fold,
        "folds": args.folds,
        "scheme": scheme,
        "class_set": args.classes,
        "classes": classes,
    }


def _save_episode_lists(
    args: argparse.Namespace,
    episodes: list[T],
    meta: dict[str, Any],
    save: Callable[[str, list[T], dict[str, Any]], str],
) -> tuple[list[T], str]:
    """Save ``--out`` (and ``--val-out``, with ``--val-fraction``): test episodes and hash."""
    from prosam.data.episodes import validation_test_split

    if args.val_fraction:
        val, test = validation_test_split(episodes, args.val_fraction, seed=args.seed)
        digest = save(args.val_out, val, {**meta, "role": "validation"})
        print(f"{args.val_out}: {len(val)} validation episodes (sha256 {digest[:12]})")
        episodes = test
    digest = save(args.out, episodes, {**meta, "role": "test"})
    return episodes, digest


def cmd_episodes_make(args: argparse.Namespace) -> int:
    from prosam.data.episodes import make_episodes, save_episodes

    dataset, classes, scheme = _dataset_and_classes(args)
    if args.val_fraction and not args.val_out:
        raise InputError("--val-fraction needs --val-out")
    episodes = make_episodes(
        dataset, classes, n=args.n, shots=args.shots, seed=args.seed, annotation=args.annotation
    )
    meta = {
        **_protocol_meta(args, scheme, classes),
        "shots": args.shots,
        "annotation": args.annotation,
        "seed": args.seed,
    }
    episodes, digest = _save_episode_lists(args, episodes, meta, save_episodes)
    print(
        f"{args.out}: {len(episodes)} episodes over {len(classes)} classes (sha256 {digest[:12]})"
    )
    return 0


def parse_method_options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to keyword arguments; values are JSON when they parse as JSON."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--method-option needs KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _check_meta(name: str, given: Any, stored: Any) -> Any:
    if given is not None and stored is not None and given != stored:
        raise InputError(f"--{name} {given} contradicts the episode file ({stored})")
    return stored if stored is not None else given


def _load_or_make_episodes(
    args: argparse.Namespace, dataset: Dataset, classes: list[int]
) -> tuple[list[Episode], str]:
    from prosam.data.episodes import episodes_hash, load_episodes, make_episodes

    if args.episodes:
        episodes, meta = load_episodes(args.episodes, dataset)
        args.shots = _check_meta("shots", args.shots, meta.get("shots"))
        args.annotation = _check_meta("annotation", args.annotation, meta.get("annotation"))
        stray = {e.class_id for e in episodes} - set(classes)
        if stray:
            raise InputError(
                f"{args.episodes}: episodes of classes {sorted(stray)} are not in the "
                f"{args.classes} classes of fold {args.fold}"
            )
        return episodes, episodes_hash(episodes)
    args.shots = args.shots or 1
    args.annotation = args.annotation or "mask"
    episodes = make_episodes(
        dataset, classes, n=args.n, shots=args.shots, seed=args.seed, annotation=args.annotation
    )
    return episodes, episodes_hash(episodes)


def _table(report: dict[str, Any], names: dict[int, str]) -> str:
    o, w = report["original_size"], report["working_resolution"]
    lines = [f"{'class':<22}{'episodes':>9}{'IoU orig':>10}{'IoU work':>10}"]
    for cid, row in o["per_class"].items():
        wrow = w["per_class"][cid]
        lines.append(
            f"{names.get(int(cid), cid)!s:<22}{row['episodes']:>9}"
            f"{100 * row['iou']:>10.1f}{100 * wrow['iou']:>10.1f}"
        )
    s, ws = o["summary"], w["summary"]
    lines += [
        "-" * 51,
        f"{'mIoU (FSS: pooled per class, mean over classes)':<51}",
        f"{'':<31}{100 * s['miou_fss']:>10.1f}{100 * ws['miou_fss']:>10.1f}",
        f"{'FB-IoU':<31}{100 * s['fb_iou']:>10.1f}{100 * ws['fb_iou']:>10.1f}",
        f"{'mean per-episode IoU':<31}{100 * s['miou_per_episode']:>10.1f}"
        f"{100 * ws['miou_per_episode']:>10.1f}",
    ]
    return "\n".join(lines)


def _check_limit(args: argparse.Namespace) -> None:
    """:class:`InputError` for a ``--limit`` below 1."""
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be >= 1, got {args.limit}")


def _run_fields(
    args: argparse.Namespace,
    model: FrozenSam,
    file_hash: str,
    evaluated_hash: str,
    num_episodes: int,
) -> dict[str, Any]:
    """The report fields ``checkpoint`` to ``num_episodes`` (the checkpoint hashed after
    resolving a bundled name)."""
    from prosam.core.checkpoint import checkpoint_files
    from prosam.core.files import sha256_file
    from prosam.pretrained import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint) if args.checkpoint else None
    return {
        "checkpoint": args.checkpoint,
        "checkpoint_sha256": sha256_file(checkpoint_files(checkpoint)[0]) if checkpoint else None,
        "model": model.name,
        "sam_variant": model.variant,
        "weights_sha256": model.weights_sha256,
        "episodes_file": args.episodes,
        "episodes_hash": file_hash,
        "episodes_limit": args.limit,
        "evaluated_episodes_hash": evaluated_hash,
        "num_episodes": num_episodes,
    }


def _timing(
    result: EvalResult | MultiEvalResult, wall: float, cache: EmbeddingCache | None
) -> dict[str, Any]:
    """The report's ``timing`` field."""
    return {
        "wall_seconds": wall,
        "inputs_seconds": result.seconds_inputs,
        "method_seconds": result.seconds_method,
        "method_ms_per_episode": 1000 * result.seconds_method / max(result.episodes, 1),
        "embedding_cache_hits": cache.hits if cache else None,
        "embedding_cache_misses": cache.misses if cache else None,
    }


def _write_report(path: str, report: dict[str, Any]) -> None:
    """Write ``report`` to ``path`` as indented JSON, atomically."""
    from prosam.io import write_bytes_atomic

    text = json.dumps(report, indent=1, default=lambda v: None if v != v else v)
    write_bytes_atomic(Path(path), text.encode())


def cmd_eval_fss(args: argparse.Namespace) -> int:
    from prosam.cli import _load_model
    from prosam.data.episodes import episodes_hash
    from prosam.engine.evaluate import evaluate_episodes
    from prosam.methods import build_method
    from prosam.sam import Predictor

    t_start = time.perf_counter()
    _check_limit(args)
    dataset, classes, scheme = _dataset_and_classes(args)
    episodes, digest = _load_or_make_episodes(args, dataset, classes)
    episodes = episodes[: args.limit]
    model, cache = _load_model(args)
    method = build_method(
        args.method, model, checkpoint=args.checkpoint, **parse_method_options(args.method_option)
    )
    result = evaluate_episodes(
        method,
        Predictor(model, cache=cache),
        episodes,
        boundary=args.boundary,
        progress=not args.no_progress,
    )
    wall = time.perf_counter() - t_start

    def block(acc: FSSAccumulator) -> dict[str, Any]:
        summary = acc.summary(class_ids=classes)
        per_class = {
            str(c): {**v, "name": dataset.class_names[c]} for c, v in acc.per_class().items()
        }
        return {"summary": summary, "per_class": per_class}

    report = {
        "command": "prosam " + " ".join(sys.argv[1:]),
        "protocol": {
            **_protocol_meta(args, scheme, classes),
            "shots": args.shots,
            "annotation": args.annotation,
        },
        "method": args.method,
        "method_options": parse_method_options(args.method_option),
        **_run_fields(
            args,
            model,
            digest,
            episodes_hash(episodes),
            result.episodes,
        ),
        "metrics_note": (
            "miou_fss: per class, intersection and union summed over its episodes, IoU = "
            "sum(I)/sum(U), then the mean over classes; fb_iou: mean of pooled foreground "
            "and background IoU; miou_per_episode: mean of each episode's own IoU"
        ),
        "original_size": block(result.original),
        "working_resolution": block(result.working),
        "timing": _timing(result, wall, cache),
        "episodes": result.records,
    }
    _write_report(args.json, report)
    print(_table(report, dataset.class_names))
    print(f"{result.episodes} episodes, {wall:.0f} s wall; results in {args.json}")
    if not math.isfinite(report["original_size"]["summary"]["miou_fss"]):
        return 1
    return 0
