"""``prosam episodes make|make-multi``: seeded episode lists for the few-shot protocol."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from prosam.cli.options import (
    add_data_args,
    add_episode_list_args,
    dataset_and_classes,
)
from prosam.cli.reports import protocol_meta, save_episode_lists
from prosam.errors import InputError

if TYPE_CHECKING:
    pass


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("episodes", help="seeded episode lists")
    esub = p.add_subparsers(dest="episodes_command", required=True)
    m = esub.add_parser("make", help="write a seeded list of episodes to JSON")
    add_data_args(m)
    m.add_argument("--shots", type=int, default=1)
    add_episode_list_args(m)
    m.set_defaults(func=cmd_episodes_make)

    _add_make_multi(esub)


def _add_make_multi(episodes_sub: argparse._SubParsersAction) -> None:
    m = episodes_sub.add_parser(
        "make-multi", help="write a seeded list of multi-entity episodes to JSON"
    )
    add_data_args(m)
    m.add_argument("--entities", type=int, default=2, help="classes per target (default 2)")
    m.add_argument("--shots", type=int, default=1, help="references per entity")
    add_episode_list_args(m)
    m.set_defaults(func=cmd_episodes_make_multi)


def cmd_episodes_make(args: argparse.Namespace) -> int:
    from prosam.data.episodes import make_episodes, save_episodes

    dataset, classes, scheme = dataset_and_classes(args)
    if args.val_fraction and not args.val_out:
        raise InputError("--val-fraction needs --val-out")
    episodes = make_episodes(
        dataset, classes, n=args.n, shots=args.shots, seed=args.seed, annotation=args.annotation
    )
    meta = {
        **protocol_meta(args, scheme, classes),
        "shots": args.shots,
        "annotation": args.annotation,
        "seed": args.seed,
    }
    episodes, digest = save_episode_lists(args, episodes, meta, save_episodes)
    print(
        f"{args.out}: {len(episodes)} episodes over {len(classes)} classes (sha256 {digest[:12]})"
    )
    return 0


def cmd_episodes_make_multi(args: argparse.Namespace) -> int:
    from prosam.data.multi_entity import make_multi_entity_episodes, save_multi_entity_episodes

    dataset, classes, scheme = dataset_and_classes(args)
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
        **protocol_meta(args, scheme, classes),
        "entities": args.entities,
        "shots": args.shots,
        "annotation": args.annotation,
        "seed": args.seed,
    }
    episodes, digest = save_episode_lists(args, episodes, meta, save_multi_entity_episodes)
    targets = len({e.target.key for e in episodes})
    used = len({c for e in episodes for c in e.class_ids})
    print(
        f"{args.out}: {len(episodes)} episodes of {args.entities} entities, {targets} target "
        f"images, {used} of {len(classes)} classes (sha256 {digest[:12]})"
    )
    return 0
