"""Paired, absent-target and distractor training episodes; extra data joined by class name."""

from __future__ import annotations

import numpy as np
import pytest

from prosam.data.folds import fold_split
from prosam.data.merge import merge_by_class_name
from prosam.data.specs import load_dataset_spec
from prosam.data.training_episodes import (
    ClassAreas,
    EpisodeMix,
    absent_episodes,
    batch_units,
    distractor_episodes,
    episode_truth,
    is_absent,
    mixed_episode_units,
    paired_episodes,
)
from prosam.errors import InputError
from tests.fixtures_coco import write_boxes_coco, write_coco_fixture


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return load_dataset_spec(f"coco:{write_coco_fixture(tmp_path_factory.mktemp('c'), images=9)}")


def test_paired_episodes_share_a_target_with_two_classes(dataset):
    pairs = paired_episodes(dataset, [1, 2, 3, 4], 30, np.random.default_rng(0))
    assert len(pairs) == 30
    for a, b in pairs:
        assert a.target is b.target and a.class_id != b.class_id
        assert {a.class_id, b.class_id} <= a.target.classes
        for ep in (a, b):
            assert ep.class_id in ep.references[0].classes
            assert ep.references[0].key != ep.target.key
        truth_a, truth_b = episode_truth(a)[0], episode_truth(b)[0]
        assert truth_a.any() and truth_b.any() and not np.array_equal(truth_a, truth_b)
    with pytest.raises(InputError, match="two training classes"):
        paired_episodes(dataset, [1], 1, np.random.default_rng(0))


def test_absent_episodes_have_empty_ground_truth(dataset):
    episodes = absent_episodes(dataset, [1, 2, 3, 4], 40, np.random.default_rng(1))
    assert len({e.class_id for e in episodes}) > 1
    for ep in episodes:
        assert is_absent(ep) and ep.class_id not in ep.target.present_classes
        assert ep.class_id in ep.references[0].classes
        fg, ignore = episode_truth(ep)
        assert fg.shape == ep.target.size and not fg.any() and not ignore.any()


def test_distractor_episodes_have_a_larger_other_class(dataset):
    areas = ClassAreas(dataset)
    episodes = distractor_episodes(dataset, [1, 2, 3, 4], 40, np.random.default_rng(2), areas=areas)
    for ep in episodes:
        own = ep.target.mask(ep.class_id)[0].mean()
        others = [ep.target.mask(c)[0].mean() for c in ep.target.classes - {ep.class_id}]
        assert own > 0 and max(others) > own
        assert areas.of(ep.target)[ep.class_id] == pytest.approx(own)


def test_mixed_units_proportions_and_batches(dataset):
    mix = EpisodeMix(paired=0.4, absent=0.2, distractor=0.2)
    units = mixed_episode_units(dataset, [1, 2, 3, 4], 50, mix, seed=5)
    assert units == mixed_episode_units(dataset, [1, 2, 3, 4], 50, mix, seed=5)
    assert units != mixed_episode_units(dataset, [1, 2, 3, 4], 50, mix, seed=6)
    pairs = [u for u in units if len(u) == 2]
    singles = [u[0] for u in units if len(u) == 1]
    assert len(pairs) == 10 and sum(is_absent(e) for e in singles) == 10
    assert sum(len(u) for u in units) == 50
    for batch_size in (1, 2, 3):
        batches = batch_units(units, batch_size)
        assert [e for b in batches for e in b] == [e for u in units for e in u]
        for a, b in pairs:  # the halves of a pair always share a batch
            assert any(a in batch and b in batch for batch in batches)
        assert all(len(b) <= max(batch_size, 2) for b in batches)
    with pytest.raises(InputError):
        EpisodeMix(paired=0.8, absent=0.3)
    with pytest.raises(InputError):
        EpisodeMix(absent=-0.1)


def test_extra_data_follows_the_main_folds(tmp_path):
    main = write_boxes_coco(
        tmp_path / "main",
        ["person", "airplane", "cow", "dog"],
        {
            "m0.jpg": [("person", (0, 0, 20, 20)), ("dog", (30, 10, 50, 30))],
            "m1.jpg": [("airplane", (5, 5, 40, 30)), ("dog", (42, 5, 58, 35))],
            "m2.jpg": [("cow", (0, 0, 30, 30)), ("dog", (35, 5, 55, 25))],
            "m3.jpg": [("person", (0, 0, 25, 35)), ("cow", (30, 5, 58, 30))],
        },
    )
    extra = write_boxes_coco(
        tmp_path / "msrc",
        ["aeroplane", "body", "face", "grass", "dog"],
        {
            "e0.jpg": [("aeroplane", (0, 0, 30, 20)), ("grass", (0, 25, 60, 40))],
            "e1.jpg": [("face", (10, 10, 20, 20))],
            "e2.jpg": [("face", (0, 0, 10, 10)), ("dog", (20, 5, 50, 35))],
            "e3.jpg": [("body", (0, 0, 20, 38)), ("dog", (30, 5, 55, 35))],
            "e4.jpg": [("dog", (10, 10, 40, 30))],
        },
    )
    base = load_dataset_spec(f"coco:{main}")
    merged, dropped = merge_by_class_name(base, load_dataset_spec(f"coco:{extra}"), prefix="x/")
    assert dropped == ["face", "grass"]
    names = {v: k for k, v in merged.class_names.items()}
    person, airplane, dog = (names[n] for n in ("person", "airplane", "dog"))
    by_key = {s.key: s for s in merged}
    assert "x/e1.jpg" not in by_key  # a face alone offers no class
    assert by_key["x/e0.jpg"].classes == {airplane}
    assert by_key["x/e2.jpg"].classes == {dog} and by_key["x/e2.jpg"].present_classes == {
        dog,
        person,
    }
    assert by_key["x/e3.jpg"].classes == {person, dog}
    fg, _ = by_key["x/e3.jpg"].mask(person)  # msrc's body, under COCO's person id
    assert fg[:38, :20].all() and fg.sum() == 20 * 38
    assert len(by_key["x/e4.jpg"].instances(dog)) == 1
    # fold 0: person and cow novel; fold 1: airplane and dog novel
    for fold in (0, 1):
        train_classes, novel = fold_split(sorted(merged.class_names), fold, num_folds=2)
        mix = EpisodeMix(paired=0.2, absent=0.3, distractor=0.0)
        units = mixed_episode_units(merged, train_classes, 40, mix, seed=fold)
        episodes = [e for u in units for e in u]
        assert {e.class_id for e in episodes} <= set(train_classes)
        assert not {e.class_id for e in episodes} & set(novel)
        for ep in episodes:
            if is_absent(ep):  # a face counts as a person: never an absent person target
                assert not (ep.class_id == person and ep.target.key == "x/e2.jpg")
        assert any(e.target.key.startswith("x/") for e in episodes)
