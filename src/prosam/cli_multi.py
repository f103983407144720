"""``prosam episodes make-multi`` and ``prosam eval multi-entity``: several classes at once."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prosam.cli_fss import (
    _add_data_args,
    _add_episode_list_args,
    _add_method_args,
    _check_limit,
    _dataset_and_classes,
    _protocol_meta,
    _run_fields,
    _save_episode_lists,
    _timing,
    _write_report,
    parse_method_options,
)
from prosam.errors import InputError

if TYPE_CHECKING:
    from prosam.engine.evaluate_multi import MultiEvalResult


def add_multi_episodes_parser(episodes_sub: argparse._SubParsersAction) -> None:
    m = episodes_sub.add_parser(
        "make-multi", help="write a seeded list of multi-entity episodes to JSON"
    )
    _add_data_args(m)
    m.add_argument("--entities", type=int, default=2, help="classes per target (default 2)")
    m.add_argument("--shots", type=int, default=1, help="references per entity")
    _add_episode_list_args(m)
    m.set_defaults(func=cmd_episodes_make_multi)


def add_multi_eval_parser(
    eval_sub: argparse._SubParsersAction, add_model_args: Callable[[argparse.ArgumentParser], None]
) -> None:
    f = eval_sub.add_parser(
        "multi-entity", help="segment several classes per target; per-class mIoU after overlaps"
    )
    _add_data_args(f)
    f.add_argument(
        "--episodes", required=True, help="episode list from `prosam episodes make-multi`"
    )
    f.add_argument("--limit", type=int, default=None, help="only the first N episodes")
    _add_method_args(f, "outer_steps=5 for cpc")
    f.add_argument(
        "--independent",
        action="store_true",
        help="fit each entity on its own even if the method can fit them jointly",
    )
    f.add_argument("--json", required=True, help="write results here")
    f.add_argument("--no-progress", action="store_true")
    add_model_args(f)
    f.set_defaults(func=cmd_eval_multi_entity)


def cmd_episodes_make_multi(args: argparse.Namespace) -> int:
    from prosam.data.multi_entity import make_multi_entity_episodes, save_multi_entity_episodes

    dataset, classes, scheme = _dataset_and_classes(args)
    if args.val_fraction and not args.val_out:
        raise InputError("--val-fraction needs --val-out")
    episodes = make_multi_entity_episodes(
        dataset,
        classes,
        args.n,
        entities=args.entities,
        shots=args.shots,
        seed=args.seed,
        annotation=args.annotation,
    )
    meta = {
        **_protocol_meta(args, scheme, classes),
        "entities": args.entities,
        "shots": args.shots,
        "annotation": args.annotation,
        "seed": args.seed,
    }
    episodes, digest = _save_episode_lists(args, episodes, meta, save_multi_entity_episodes)
    targets = len({e.target.key for e in episodes})
    used = len({c for e in episodes for c in e.class_ids})
    print(
        f"{args.out}: {len(episodes)} episodes of {args.entities} entities, {targets} target "
        f"images, {used} of {len(classes)} classes (sha256 {digest[:12]})"
    )
    return 0


def _block(result: MultiEvalResult, classes: list[int], names: dict[int, str]) -> dict[str, Any]:
    def per_class(acc: Any) -> dict[str, Any]:
        return {str(c): {**v, "name": names[c]} for c, v in acc.per_class().items()}

    return {
        "summary": result.summary(class_ids=classes),
        "per_class": per_class(result.resolved),
        "per_class_independent": per_class(result.independent),
    }


def _table(block: dict[str, Any], names: dict[int, str]) -> str:
    lines = [f"{'class':<22}{'entities':>9}{'IoU':>8}{'IoU alone':>11}"]
    for cid, row in block["per_class"].items():
        alone = block["per_class_independent"][cid]
        lines.append(
            f"{names.get(int(cid), cid)!s:<22}{row['episodes']:>9}"
            f"{100 * row['iou']:>8.1f}{100 * alone['iou']:>11.1f}"
        )
    s = block["summary"]
    lines += [
        "-" * 50,
        f"{'mIoU (FSS: pooled per class)':<31}{100 * s['miou_fss']:>8.1f}"
        f"{100 * s['miou_fss_independent']:>11.1f}",
        f"{'mean per-entity IoU':<31}{100 * s['miou_per_entity']:>8.1f}"
        f"{100 * s['miou_per_entity_independent']:>11.1f}",
        f"{'pixels claimed twice (pooled)':<31}{100 * s['overlap_fraction_pooled']:>8.2f} %",
    ]
    return "\n".join(lines)


def cmd_eval_multi_entity(args: argparse.Namespace) -> int:
    from prosam.cli import _load_model
    from prosam.data.multi_entity import load_multi_entity_episodes, multi_entity_hash
    from prosam.engine.evaluate_multi import evaluate_multi_entity
    from prosam.methods import build_method
    from prosam.sam import Predictor

    t_start = time.perf_counter()
    _check_limit(args)
    dataset, classes, scheme = _dataset_and_classes(args)
    episodes, meta = load_multi_entity_episodes(args.episodes, dataset)
    file_hash = multi_entity_hash(episodes)
    stray = {c for e in episodes for c in e.class_ids} - set(classes)
    if stray:
        raise InputError(
            f"{args.episodes}: episodes of classes {sorted(stray)} are not in the "
            f"{args.classes} classes of fold {args.fold}"
        )
    episodes = episodes[: args.limit]
    options = parse_method_options(args.method_option)
    model, cache = _load_model(args)
    method = build_method(args.method, model, checkpoint=args.checkpoint, **options)
    result = evaluate_multi_entity(
        method,
        Predictor(model, cache=cache),
        episodes,
        joint=False if args.independent else None,
        progress=not args.no_progress,
    )
    wall = time.perf_counter() - t_start
    block = _block(result, classes, dataset.class_names)
    report = {
        "command": "prosam " + " ".join(sys.argv[1:]),
        "protocol": {
            **_protocol_meta(args, scheme, classes),
            "entities": meta.get("entities"),
            "shots": meta.get("shots"),
            "annotation": meta.get("annotation"),
        },
        "method": args.method,
        "method_options": options,
        "joint": result.joint,
        **_run_fields(
            args,
            model,
            file_hash,
            multi_entity_hash(episodes),
            result.episodes,
        ),
        "num_entities": result.entities,
        "metrics_note": (
            "each entity's logits are upsampled to the original image size, every pixel goes "
            "to the entity of highest probability if > 0.5 (resolve_overlaps), and each "
            "entity's mask is scored against its class mask (ignore pixels excluded). "
            "miou_fss: per class, intersection and union summed over its entities, then the "
            "mean over classes; miou_per_entity: mean of each entity's own IoU; *_independent: "
            "the same for each entity's own logits > 0 before resolution; overlap_fraction: "
            "pixels with logits > 0 for two or more entities before resolution"
        ),
        "original_size": block,
        "timing": _timing(result, wall, cache),
        "episodes": result.records,
    }
    _write_report(args.json, report)
    print(_table(block, dataset.class_names))
    print(
        f"{result.episodes} episodes ({result.entities} entities, "
        f"{'joint' if result.joint else 'one fit per entity'}), {wall:.0f} s wall; "
        f"results in {args.json}"
    )
    return 0 if math.isfinite(block["summary"]["miou_fss"]) else 1
