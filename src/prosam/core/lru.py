"""The cache's size limit: what each cache folder holds, and least-recently-used eviction.

Every cached entry (SAM embeddings, backbone features) is one ``.safetensors`` file; its
mtime is refreshed each time it is used, so the oldest mtime is the least recently used.
Weights (``<cache root>/weights``) are never evicted: they are fetched, not recomputed.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from prosam.errors import InputError

#: Environment variable holding the limit, e.g. ``2G``, ``500M`` or a number of bytes.
LIMIT_ENV = "PROSAM_CACHE_LIMIT"
DEFAULT_LIMIT_BYTES = 2 * 1024**3
ENTRY_SUFFIX = ".safetensors"
KEPT_FOLDERS = frozenset({"weights"})

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """Bytes of a size such as ``"500M"``, ``"2G"``, ``"1.5g"``, ``"0"`` (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)i?[bB]?\s*", text)
    if not match:
        raise InputError(f"not a size: {text!r} (e.g. 500M, 2G, 0)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def cache_limit() -> int:
    """The cache's size limit in bytes: ``$PROSAM_CACHE_LIMIT``, else 2 GiB."""
    text = os.environ.get(LIMIT_ENV)
    return parse_size(text) if text else DEFAULT_LIMIT_BYTES


def format_size(n: int) -> str:
    """``n`` bytes for people: ``512 B``, ``3.2 MiB``, ``1.0 GiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


@dataclass(frozen=True)
class FolderUsage:
    """One folder of the cache: its name, how many files and bytes, whether it is evictable."""

    name: str
    files: int
    bytes: int
    evictable: bool


def cache_usage(root: str | os.PathLike[str]) -> list[FolderUsage]:
    """What each top-level folder of the cache ``root`` holds, by name."""
    usage = []
    base = Path(root)
    folders = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    for folder in folders:
        sizes = [_size(p) for p in folder.rglob("*") if p.is_file()]
        usage.append(
            FolderUsage(folder.name, len(sizes), sum(sizes), folder.name not in KEPT_FOLDERS)
        )
    return usage


def evictable_entries(root: str | os.PathLike[str]) -> list[tuple[float, int, Path]]:
    """``(mtime, bytes, path)`` of the cache's evictable entries, least recently used first."""
    base = Path(root)
    entries = []
    if not base.is_dir():
        return entries
    for folder in base.iterdir():
        if not folder.is_dir() or folder.name in KEPT_FOLDERS:
            continue
        for path in folder.rglob(f"*{ENTRY_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                entries.append((stat.st_mtime, stat.st_size, path))
    return sorted(entries)


def prune_cache(root: str | os.PathLike[str], max_bytes: int) -> tuple[int, int]:
    """Evict least-recently-used entries until the evictable ones total at most
    ``max_bytes``; ``(entries removed, bytes freed)``."""
    entries = evictable_entries(root)
    total = sum(size for _, size, _ in entries)
    removed = freed = 0
    for _, size, path in entries:
        if total <= max_bytes:
            break
        with contextlib.suppress(FileNotFoundError):  # evicted by another process meanwhile
            path.unlink()
            removed += 1
            freed += size
        total -= size
    return removed, freed


def touch(path: str | os.PathLike[str]) -> None:
    """Mark a cache entry as just used (a read-only cache stays as it is)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
