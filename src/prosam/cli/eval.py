"""``prosam eval fss|multi-entity|robustness|reference-robustness``: benchmark a method."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prosam.cli.options import (
    ANNOTATIONS,
    add_data_args,
    add_method_args,
    add_method_choice,
    add_model_args,
    add_object_data_args,
    add_stable_option,
    attach_stable_from_args,
    check_limit,
    dataset_and_classes,
    load_model,
    parse_method_options,
)
from prosam.cli.reports import protocol_meta, run_fields, timing, write_report
from prosam.errors import InputError

if TYPE_CHECKING:
    from prosam.data.types import Dataset, Episode
    from prosam.evaluation.evaluate_multi import MultiEvalResult
    from prosam.metrics import FSSAccumulator


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a method")
    vsub = p.add_subparsers(dest="eval_command", required=True)
    f = vsub.add_parser("fss", help="few-shot segmentation protocol (FSS mIoU, FB-IoU)")
    add_data_args(f)
    f.add_argument("--shots", type=int, default=None, help="default 1 (or the episode file's)")
    f.add_argument(
        "--annotation",
        choices=ANNOTATIONS,
        default=None,
        help="default mask (or the episode file's)",
    )
    add_method_args(f, "backbone=efficientnet_lite0 for geometric")
    f.add_argument("--episodes", default=None, help="episode list from `prosam episodes make`")
    f.add_argument("--n", type=int, default=1000, help="episodes to draw without --episodes")
    f.add_argument("--limit", type=int, default=None, help="only the first N episodes")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--boundary", action="store_true", help="also compute boundary IoU")
    f.add_argument(
        "--wrong-reference",
        action="store_true",
        help="also predict each target from a reference of another class: reference gain "
        "and prediction overlap",
    )
    f.add_argument("--json", required=True, help="write results here")
    f.add_argument("--no-progress", action="store_true")
    add_model_args(f)
    add_stable_option(f)
    f.set_defaults(func=cmd_eval_fss)

    _add_robustness(vsub)

    _add_multi_entity(vsub)


def _add_multi_entity(eval_sub: argparse._SubParsersAction) -> None:
    f = eval_sub.add_parser(
        "multi-entity", help="segment several classes per target; per-class mIoU after overlaps"
    )
    add_data_args(f)
    f.add_argument(
        "--episodes", required=True, help="episode list from `prosam episodes make-multi`"
    )
    f.add_argument("--limit", type=int, default=None, help="only the first N episodes")
    add_method_args(f, "outer_steps=5 for cpc")
    f.add_argument(
        "--independent",
        action="store_true",
        help="fit each entity on its own even if the method can fit them jointly",
    )
    f.add_argument("--json", required=True, help="write results here")
    f.add_argument("--no-progress", action="store_true")
    add_model_args(f)
    f.set_defaults(func=cmd_eval_multi_entity)


def _add_robustness(eval_sub: argparse._SubParsersAction) -> None:
    r = eval_sub.add_parser("robustness", help="mIoU, boundary mIoU and mSF per prompt kind")
    add_object_data_args(r)
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
    r.add_argument(
        "--list-images",
        default=None,
        metavar="FILE",
        help="write the evaluated objects' image keys here (for `prosam stable train "
        "--exclude-images`)",
    )
    r.add_argument(
        "--dry-run", action="store_true", help="choose the objects (and --list-images), no more"
    )
    r.add_argument("--no-progress", action="store_true")
    add_model_args(r)
    r.set_defaults(func=cmd_eval_robustness)

    m = eval_sub.add_parser(
        "reference-robustness",
        help="a reference method's mIoU and mSF under re-drawn reference annotations or "
        "prompt-embedding noise",
    )
    add_data_args(m)
    m.add_argument("--episodes", required=True, help="episode list from `prosam episodes make`")
    add_method_choice(m, required=True)
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


def _fss_table(report: dict[str, Any], names: dict[int, str]) -> str:
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
    dep = report.get("reference_dependence")
    if dep:
        lines += [
            f"{'mIoU, wrong-class reference':<31}{100 * dep['miou_fss_wrong_reference']:>10.1f}",
            f"{'reference gain (points)':<31}{100 * dep['reference_gain']:>10.1f}",
            f"{'prediction overlap (IoU)':<31}{dep['prediction_overlap']:>10.2f}",
        ]
    return "\n".join(lines)


def cmd_eval_fss(args: argparse.Namespace) -> int:
    from prosam.data.episodes import episodes_hash
    from prosam.evaluation.evaluate import evaluate_episodes
    from prosam.methods import build_method
    from prosam.sam import Predictor

    t_start = time.perf_counter()
    check_limit(args)
    dataset, classes, scheme = dataset_and_classes(args)
    episodes, digest = _load_or_make_episodes(args, dataset, classes)
    episodes = episodes[: args.limit]
    model, cache = load_model(args)
    attach_stable_from_args(args, model)
    method = build_method(
        args.method, model, checkpoint=args.checkpoint, **parse_method_options(args.method_option)
    )
    result = evaluate_episodes(
        method,
        Predictor(model, cache=cache),
        episodes,
        boundary=args.boundary,
        progress=not args.no_progress,
        wrong_reference=args.wrong_reference,
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
            **protocol_meta(args, scheme, classes),
            "shots": args.shots,
            "annotation": args.annotation,
        },
        "method": args.method,
        "method_options": parse_method_options(args.method_option),
        "stable_plugin": args.stable,
        **run_fields(
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
        "reference_dependence": result.reference_dependence(classes) or None,
        "timing": timing(result, wall, cache),
        "episodes": result.records,
    }
    write_report(args.json, report)
    print(_fss_table(report, dataset.class_names))
    print(f"{result.episodes} episodes, {wall:.0f} s wall; results in {args.json}")
    if not math.isfinite(report["original_size"]["summary"]["miou_fss"]):
        return 1
    return 0


def _multi_entity_block(
    result: MultiEvalResult, classes: list[int], names: dict[int, str]
) -> dict[str, Any]:
    def per_class(acc: Any) -> dict[str, Any]:
        return {str(c): {**v, "name": names[c]} for c, v in acc.per_class().items()}

    return {
        "summary": result.summary(class_ids=classes),
        "per_class": per_class(result.resolved),
        "per_class_independent": per_class(result.independent),
    }


def _multi_entity_table(block: dict[str, Any], names: dict[int, str]) -> str:
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
    from prosam.data.multi_entity import load_multi_entity_episodes, multi_entity_hash
    from prosam.evaluation.evaluate_multi import evaluate_multi_entity
    from prosam.methods import build_method
    from prosam.sam import Predictor

    t_start = time.perf_counter()
    check_limit(args)
    dataset, classes, scheme = dataset_and_classes(args)
    episodes, meta = load_multi_entity_episodes(args.episodes, dataset)
    file_hash = multi_entity_hash(episodes)
    stray = {c for e in episodes for c in e.class_ids} - set(classes)
    if stray:
        raise InputError(
            f"{args.episodes}: episodes of classes {sorted(stray)} are not in the "
            f"{args.classes} classes of fold {args.fold}"
        )
    episodes = episodes[: args.limit]
    options = parse_method_options(args.method_option, args.method)
    model, cache = load_model(args)
    method = build_method(args.method, model, checkpoint=args.checkpoint, **options)
    result = evaluate_multi_entity(
        method,
        Predictor(model, cache=cache),
        episodes,
        joint=False if args.independent else None,
        progress=not args.no_progress,
    )
    wall = time.perf_counter() - t_start
    block = _multi_entity_block(result, classes, dataset.class_names)
    report = {
        "command": "prosam " + " ".join(sys.argv[1:]),
        "protocol": {
            **protocol_meta(args, scheme, classes),
            "entities": meta.get("entities"),
            "shots": meta.get("shots"),
            "annotation": meta.get("annotation"),
        },
        "method": args.method,
        "method_options": options,
        "joint": result.joint,
        **run_fields(
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
        "timing": timing(result, wall, cache),
        "episodes": result.records,
    }
    write_report(args.json, report)
    print(_multi_entity_table(block, dataset.class_names))
    print(
        f"{result.episodes} episodes ({result.entities} entities, "
        f"{'joint' if result.joint else 'one fit per entity'}), {wall:.0f} s wall; "
        f"results in {args.json}"
    )
    return 0 if math.isfinite(block["summary"]["miou_fss"]) else 1


def cmd_eval_robustness(args: argparse.Namespace) -> int:
    import sys
    import time

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
    model, cache = load_model(args)
    handle = None
    if args.plugin:
        handle = attach_stable_plugin(model, load_stable_plugin(args.plugin, model))
    items = list(
        dataset_objects(
            dataset, split_components=args.split_components, max_objects=args.max_objects
        )
    )
    image_keys = sorted({item.key.split("#")[0] for item in items})
    if args.list_images:
        write_bytes_atomic(Path(args.list_images), "".join(k + "\n" for k in image_keys).encode())
    if args.dry_run:
        if handle is not None:
            handle.detach()
        print(f"{len(items)} objects in {len(image_keys)} images")
        return 0
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
            "object_keys": [item.key for item in items],
            "wall_seconds": time.perf_counter() - t0,
        }
    )
    write_report(args.json, report)
    title = f"Robustness: {model.name}" + (" + Stable-SAM plugin" if args.plugin else "")
    markdown = to_markdown(report, title=title)
    if args.md:
        write_bytes_atomic(Path(args.md), markdown.encode())
    print(markdown)
    return 0


def cmd_eval_reference_robustness(args: argparse.Namespace) -> int:
    import sys

    from prosam.data.episodes import episodes_hash, load_episodes
    from prosam.evaluation.reference_robustness import (
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
    dataset, _, _ = dataset_and_classes(args)
    episodes, _ = load_episodes(args.episodes, dataset)
    if args.limit is not None:
        episodes = episodes[: args.limit]
    model, cache = load_model(args)
    options = parse_method_options(args.method_option, args.method)
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
    write_report(args.json, report)
    table = to_markdown(report, title=f"{args.method} ({model.name})")
    if args.md:
        write_bytes_atomic(args.md, (table + "\n").encode())
    print(table)
    return 0
