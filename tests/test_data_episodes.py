from __future__ import annotations

import json
from pathlib import Path

import pytest

from prosam.data.episodes import (
    episodes_hash,
    load_episodes,
    make_episodes,
    rank_and_world_from_env,
    save_episodes,
    split_for_rank,
    validation_test_split,
)
from prosam.data.types import Dataset, Episode, Sample
from prosam.errors import InputError


def _dataset() -> Dataset:
    """20 file-less samples: class 1 in 0..9, class 2 in 5..14, class 3 in 14..19, class 4 once."""
    members = {1: range(10), 2: range(5, 15), 3: range(14, 20), 4: [19]}
    samples = []
    for i in range(20):
        classes = frozenset(c for c, idx in members.items() if i in idx)
        samples.append(Sample(f"img{i:02d}.jpg", Path(f"/nowhere/img{i:02d}.jpg"), classes))
    names = {1: "cat", 2: "dog", 3: "bus", 4: "kite", 5: "unused"}
    return Dataset(samples, names, "synthetic")


def test_make_episodes_is_seeded_and_valid() -> None:
    ds = _dataset()
    eps = make_episodes(ds, [1, 2, 3], n=200, shots=3, seed=7, annotation="point")
    assert eps == make_episodes(ds, [3, 2, 1], n=200, shots=3, seed=7, annotation="point")
    assert eps != make_episodes(ds, [1, 2, 3], n=200, shots=3, seed=8, annotation="point")
    for ep in eps:
        keys = [r.key for r in ep.references]
        assert ep.shots == 3 and len(set(keys)) == 3 and ep.target.key not in keys
        assert all(ep.class_id in s.classes for s in (*ep.references, ep.target))
        assert ep.class_name == ds.class_names[ep.class_id] and ep.annotation == "point"
    assert {e.class_id for e in eps} == {1, 2, 3}
    assert len({e.annotation_seed for e in eps}) > 190
    assert make_episodes(ds, [1], n=0) == []


def test_make_episodes_skips_small_classes_and_validates() -> None:
    ds = _dataset()
    with pytest.warns(UserWarning, match=r"\[4, 5\]"):
        eps = make_episodes(ds, [1, 4, 5], n=20)
    assert {e.class_id for e in eps} == {1}
    with pytest.warns(UserWarning), pytest.raises(InputError, match="no class"):
        make_episodes(ds, [4], n=5)
    with pytest.raises(InputError, match="annotation"):
        make_episodes(ds, [1], annotation="polygon")
    with pytest.raises(InputError):
        make_episodes(ds, [1], shots=0)


def test_json_round_trip_and_hash(tmp_path: Path) -> None:
    ds = _dataset()
    eps = make_episodes(ds, [1, 2, 3], n=50, shots=2, seed=3, annotation="box")
    meta = {"dataset": ds.description, "fold": 0, "shots": 2, "seed": 3}
    path = tmp_path / "sub" / "episodes.json"
    digest = save_episodes(path, eps, meta)
    assert digest == episodes_hash(eps) and len(digest) == 64
    loaded, loaded_meta = load_episodes(path, ds)
    assert loaded == eps and loaded_meta == meta
    assert episodes_hash(loaded) == digest
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary files left
    doc = json.loads(path.read_text())
    assert doc["episodes"][0]["target"] == eps[0].target.key
    assert doc["hash"] == digest and doc["meta"]["fold"] == 0


def test_hash_is_stable() -> None:
    ds = _dataset()
    eps = [
        Episode((ds.sample("img01.jpg"),), ds.sample("img02.jpg"), 1, "cat", "mask", 5),
        Episode(
            (ds.sample("img06.jpg"), ds.sample("img07.jpg")), ds.sample("img08.jpg"), 2, "dog",
            "scribble", 123,
        ),
    ]  # fmt: skip
    # Pinned: changing the canonical form silently would orphan every saved episode file.
    assert episodes_hash(eps) == PINNED_HASH
    assert episodes_hash(list(reversed(eps))) != PINNED_HASH
    assert episodes_hash([]) == episodes_hash(())


PINNED_HASH = "9e9ccd04658fdc89746ebc76aabcf5b208f3d9ea5e81ed428998c776e66bc6ef"


def test_load_rejects_mismatches(tmp_path: Path) -> None:
    ds = _dataset()
    eps = make_episodes(ds, [1, 2], n=5, seed=1)
    path = tmp_path / "e.json"
    save_episodes(path, eps, {})
    doc = json.loads(path.read_text())
    doc["episodes"][0]["annotation_seed"] += 1
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="hash"):
        load_episodes(path, ds)
    other = Dataset(ds.samples, {**ds.class_names, 1: "lion"}, "renamed")
    save_episodes(path, make_episodes(ds, [1], n=2), {})
    with pytest.raises(InputError, match="lion"):
        load_episodes(path, other)
    smaller = Dataset(ds.samples[:3], ds.class_names, "smaller")
    save_episodes(path, eps, {})
    with pytest.raises(InputError, match="no sample"):
        load_episodes(path, smaller)
    path.write_text("{}")
    with pytest.raises(InputError, match="not a prosam episode file"):
        load_episodes(path, ds)
    with pytest.raises(InputError, match="JSON"):
        save_episodes(path, eps, {"bad": object()})


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 7, 8, 13])
def test_split_for_rank_covers_everything_once(world: int, n: int) -> None:
    items = list(range(n))
    shares = [split_for_rank(items, r, world) for r in range(world)]
    assert sorted(x for s in shares for x in s) == items
    lengths = [len(s) for s in shares]
    assert max(lengths) - min(lengths) <= 1


def test_split_for_rank_rejects_bad_rank() -> None:
    for rank, world in [(-1, 2), (2, 2), (0, 0)]:
        with pytest.raises(InputError):
            split_for_rank([1, 2], rank, world)


def test_rank_and_world_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_and_world_from_env() == (0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank_and_world_from_env() == (2, 4)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(InputError):
        rank_and_world_from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(InputError):
        rank_and_world_from_env()


def test_validation_test_split_is_disjoint_by_target() -> None:
    ds = _dataset()
    eps = make_episodes(ds, [1, 2, 3], n=300, shots=1, seed=0)
    val, test = validation_test_split(eps, 0.3, seed=1)
    val_targets = {e.target.key for e in val}
    test_targets = {e.target.key for e in test}
    assert not val_targets & test_targets
    assert len(val) + len(test) == len(eps)
    assert sorted(map(id, val + test)) == sorted(map(id, eps))
    n_targets = len(val_targets | test_targets)
    assert len(val_targets) == round(0.3 * n_targets)
    assert validation_test_split(eps, 0.3, seed=1) == (val, test)
    assert validation_test_split(eps, 0.0)[0] == [] and validation_test_split(eps, 1.0)[1] == []
    keys = [s.key for s in ds]
    kval, ktest = validation_test_split(keys + keys, 0.5, seed=2)
    assert not set(kval) & set(ktest) and len(kval) == len(ktest) == 20
    with pytest.raises(InputError):
        validation_test_split(eps, 1.5)
