"""The cache's size limit: LRU eviction of embeddings and features, never of weights."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from prosam.cli import main
from prosam.core.lru import cache_usage, parse_size, prune_cache
from prosam.errors import InputError
from prosam.sam import EmbeddingCache


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("1024", 1024), ("500M", 500 * 1024**2), ("2G", 2 * 1024**3), ("1.5k", 1536),
     ("3MiB", 3 * 1024**2), ("2gb", 2 * 1024**3)],
)  # fmt: skip
def test_sizes_parse(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1", "2X", "lots", "1,5G"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(InputError, match="not a size"):
        parse_size(text)


def _entry(path, n_bytes: int, age_s: float):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * n_bytes)
    t = 1_700_000_000 - age_s
    os.utime(path, (t, t))
    return path


def test_prune_evicts_the_least_recently_used_and_never_weights(tmp_path):
    old = _entry(tmp_path / "embeddings" / "aa" / "old.safetensors", 100, 300)
    mid = _entry(tmp_path / "features-matching" / "mid.safetensors", 100, 200)
    new = _entry(tmp_path / "embeddings" / "bb" / "new.safetensors", 100, 100)
    weights = _entry(tmp_path / "weights" / "sam.safetensors", 1000, 900)
    assert prune_cache(tmp_path, 250) == (1, 100)
    assert not old.exists() and mid.exists() and new.exists() and weights.exists()
    assert prune_cache(tmp_path, 0) == (2, 200)
    assert weights.exists()
    usage = {u.name: (u.files, u.bytes, u.evictable) for u in cache_usage(tmp_path)}
    assert usage["weights"] == (1, 1000, False) and usage["embeddings"][:2] == (0, 0)


def test_the_embedding_cache_stays_under_its_limit_keeping_what_was_used(tmp_path):
    tensors = {"embedding": torch.zeros(64)}  # about 400 bytes a file
    cache = EmbeddingCache(tmp_path / "embeddings", "m", limit_root=tmp_path, limit_bytes=2000)
    images = [np.full((4, 4, 3), i, np.uint8) for i in range(12)]
    keys = [cache.key(img) for img in images]
    cache.put(keys[0], tensors)
    for i, key in enumerate(keys[1:], start=1):
        os.utime(cache.path(keys[0]), (1e9 + i, 1e9 + i))  # the others are older still...
        assert cache.get(keys[0]) is not None  # ...but the first is used again each time
        cache.put(key, tensors)
        total = sum(p.stat().st_size for p in tmp_path.rglob("*.safetensors"))
        assert total <= 2000
    assert cache.get(keys[0]) is not None and cache.get(keys[-1]) is not None
    assert cache.get(keys[1]) is None  # evicted long ago


def test_cache_info_and_prune_commands(tmp_path, capsys):
    _entry(tmp_path / "embeddings" / "a.safetensors", 3000, 30)
    _entry(tmp_path / "embeddings" / "b.safetensors", 3000, 20)
    _entry(tmp_path / "weights" / "w.pt", 5000, 99)
    assert main(["cache", "info", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "embeddings: 2 files, 5.9 KiB" in out and "weights: 1 files, 4.9 KiB (kept" in out
    assert main(["cache", "prune", "--max-size", "4k", "--cache-dir", str(tmp_path)]) == 0
    assert "evicted 1 entries (2.9 KiB)" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["b.safetensors", "w.pt"]
    assert main(["cache", "prune", "--max-size", "lots", "--cache-dir", str(tmp_path)]) == 2
