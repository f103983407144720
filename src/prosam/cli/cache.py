"""``prosam cache info|prune``: what the cache holds, and least-recently-used eviction."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="show or prune the cache (embeddings, features, weights)")
    actions = p.add_subparsers(dest="action", required=True)
    help_root = (
        "cache root (default: $PROSAM_CACHE or the user cache directory); its size limit is "
        "$PROSAM_CACHE_LIMIT (default 2G)"
    )
    info = actions.add_parser("info", help="entries and size of each cache folder")
    info.add_argument("--cache-dir", default=None, help=help_root)
    info.set_defaults(func=cmd_info)
    prune = actions.add_parser(
        "prune",
        help="evict the least recently used embeddings and features (never weights) down to a size",
    )
    prune.add_argument(
        "--max-size",
        default=None,
        metavar="SIZE",
        help="e.g. 500M, 2G, 0 for all (default: the cache's limit)",
    )
    prune.add_argument("--cache-dir", default=None, help=help_root)
    prune.set_defaults(func=cmd_prune)


def cmd_info(args: argparse.Namespace) -> int:
    """Print each folder of the cache with its entries and size, and the limit."""
    from prosam.core.files import cache_root
    from prosam.core.lru import cache_limit, cache_usage, format_size

    root = cache_root(args.cache_dir)
    usage = cache_usage(root)
    for folder in usage:
        kept = "" if folder.evictable else " (kept: never evicted)"
        print(f"{folder.name}: {folder.files} files, {format_size(folder.bytes)}{kept}")
    evictable = sum(f.bytes for f in usage if f.evictable)
    print(
        f"{root}: {format_size(evictable)} of embeddings and features, limit "
        f"{format_size(cache_limit())}"
    )
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Evict least-recently-used entries down to ``--max-size`` (default: the limit)."""
    from prosam.core.files import cache_root
    from prosam.core.lru import cache_limit, format_size, parse_size, prune_cache
    from prosam.io import remove_stale_temporaries

    root = cache_root(args.cache_dir)
    limit = cache_limit() if args.max_size is None else parse_size(args.max_size)
    removed, freed = prune_cache(root, limit)
    if root.is_dir():
        remove_stale_temporaries(root)
    print(f"{root}: evicted {removed} entries ({format_size(freed)}), kept <= {format_size(limit)}")
    return 0
