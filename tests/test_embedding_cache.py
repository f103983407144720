from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import torch

from prosam.sam import EmbeddingCache, Predictor


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 60, 3), dtype=np.uint8)


def _counting_compute(calls: list[int], value: float = 1.0):
    def compute():
        calls.append(1)
        return {"embedding": torch.full((1, 4, 2, 2), value)}, {"note": "x"}

    return compute


def test_second_request_is_a_hit_and_skips_the_encoder(tmp_path):
    cache = EmbeddingCache(tmp_path, "model-a")
    calls: list[int] = []
    first, _ = cache.get_or_compute(_image(), _counting_compute(calls))
    second, meta = cache.get_or_compute(_image(), _counting_compute(calls))
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    assert torch.equal(first["embedding"], second["embedding"])
    assert meta["model"] == "model-a" and meta["note"] == "x"


def test_key_depends_on_pixels_model_and_not_on_array_identity(tmp_path):
    a, b = EmbeddingCache(tmp_path, "model-a"), EmbeddingCache(tmp_path, "model-b")
    img = _image()
    assert a.key(img) == a.key(img.copy())
    assert a.key(img) != b.key(img)
    changed = img.copy()
    changed[0, 0, 0] ^= 1
    assert a.key(img) != a.key(changed)
    assert a.key(img) != a.key(img.reshape(60, 40, 3))


def test_truncated_or_foreign_entries_are_recomputed(tmp_path):
    cache = EmbeddingCache(tmp_path, "m")
    calls: list[int] = []
    cache.get_or_compute(_image(), _counting_compute(calls, 1.0))
    path = cache.path(cache.key(_image()))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    tensors, _ = cache.get_or_compute(_image(), _counting_compute(calls, 2.0))
    assert len(calls) == 2 and float(tensors["embedding"].mean()) == 2.0
    # An entry written for another key (e.g. a copied file) is not trusted either.
    other = cache.key(_image(1))
    cache.path(other).parent.mkdir(parents=True, exist_ok=True)
    cache.path(other).write_bytes(path.read_bytes())
    assert cache.get(other) is None and not cache.path(other).exists()
    path.write_bytes(b"garbage")
    assert cache.get(cache.key(_image())) is None


def _writer(root: str, value: float, rounds: int) -> None:
    cache = EmbeddingCache(root, "m")
    key = cache.key(_image())
    for _ in range(rounds):
        cache.put(key, {"embedding": torch.full((1, 64, 32, 32), value)})


def test_concurrent_writers_never_leave_a_corrupt_entry(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), v, 30)) for v in (1.0, 2.0)]
    for p in procs:
        p.start()
    cache = EmbeddingCache(tmp_path, "m")
    key = cache.key(_image())
    seen = set()
    while any(p.is_alive() for p in procs):
        found = cache.get(key)
        if found is not None:
            values = found[0]["embedding"].unique().tolist()
            assert len(values) == 1  # a whole entry from one writer, never a mix
            seen.add(values[0])
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert cache.get(key) is not None
    assert not [f for f in Path(tmp_path).rglob("*.tmp")]  # no temporary files left behind
    assert seen <= {1.0, 2.0}


def test_predictor_uses_the_cache(tiny_sam, tmp_path):
    cache = EmbeddingCache(tmp_path, "tiny")
    predictor = Predictor(tiny_sam, cache=cache)
    first = predictor.embed(_image())
    second = predictor.embed(_image())
    assert (cache.misses, cache.hits) == (1, 1)
    assert torch.equal(first.embedding, second.embedding)
    assert first.geometry == second.geometry
    uncached = Predictor(tiny_sam).embed(_image())
    torch.testing.assert_close(uncached.embedding, second.embedding)
