"""Multi-entity episodes, their files, the evaluator and the CLI (synthetic COCO, tiny SAM)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prosam.cli import main
from prosam.data.episodes import make_episodes, save_episodes, validation_test_split
from prosam.data.multi_entity import (
    MultiEntityEpisode,
    load_multi_entity_episodes,
    make_multi_entity_episodes,
    multi_entity_hash,
    save_multi_entity_episodes,
)
from prosam.data.specs import load_dataset_spec
from prosam.errors import InputError
from prosam.evaluation.evaluate_multi import evaluate_multi_entity, has_entity_api
from prosam.methods.base import MethodOutput
from prosam.methods.cpc.method import EntityPrediction
from prosam.sam import Predictor
from tests.fixtures_coco import write_coco_fixture

ALL = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    # every image shows 2 or 3 of the 4 classes
    return write_coco_fixture(tmp_path_factory.mktemp("coco"), images=10)


@pytest.fixture(scope="module")
def dataset(coco_root):
    return load_dataset_spec(f"coco:{coco_root}")


def _check_valid(ep: MultiEntityEpisode, entities: int, shots: int) -> None:
    ids = ep.class_ids
    assert len(ids) == entities and len(set(ids)) == entities and list(ids) == sorted(ids)
    for ent in ep.entities:
        keys = [r.key for r in ent.references]
        assert ent.shots == shots and len(set(keys)) == shots and ep.target.key not in keys
        assert ent.class_id in ep.target.classes
        assert all(ent.class_id in r.classes for r in ent.references)


def test_make_is_seeded_valid_and_spreads_targets(dataset):
    eps = make_multi_entity_episodes(dataset, ALL, 25, entities=2, shots=2, seed=3)
    assert eps == make_multi_entity_episodes(dataset, [4, 3, 2, 1], 25, entities=2, shots=2, seed=3)
    assert eps != make_multi_entity_episodes(dataset, ALL, 25, entities=2, shots=2, seed=4)
    for ep in eps:
        _check_valid(ep, 2, 2)
        assert all(e.annotation == "mask" for e in ep.entities)
    # all 10 images qualify: each is a target once before any is drawn again
    assert len({e.target.key for e in eps[:10]}) == 10
    assert len({e.target.key for e in eps[10:20]}) == 10
    three = make_multi_entity_episodes(dataset, ALL, 6, entities=3, seed=0, annotation="box")
    for ep in three:
        _check_valid(ep, 3, 1)
        assert len(ep.target.classes) == 3
    assert make_multi_entity_episodes(dataset, ALL, 0, entities=9) == []
    # a multi-entity episode splits by target like single-entity ones
    val, test = validation_test_split(eps, 0.3, seed=0)
    assert len(val) + len(test) == 25
    assert not {e.target.key for e in val} & {e.target.key for e in test}


def test_impossible_requests_are_refused(dataset):
    with pytest.raises(InputError, match=r"shows 4 of the 4 requested.*most any image shows is 3"):
        make_multi_entity_episodes(dataset, ALL, 5, entities=4)
    with pytest.raises(InputError, match="shows 2 of the 1 requested"):
        make_multi_entity_episodes(dataset, [1], 5, entities=2)
    with pytest.raises(InputError, match="annotation"):
        make_multi_entity_episodes(dataset, ALL, 5, annotation="polygon")
    with pytest.raises(InputError, match="entities >= 1"):
        make_multi_entity_episodes(dataset, ALL, 5, entities=0)


def test_json_round_trip_hash_and_checks(dataset, tmp_path):
    eps = make_multi_entity_episodes(dataset, ALL, 8, entities=2, seed=1, annotation="point")
    path = tmp_path / "multi.json"
    digest = save_multi_entity_episodes(path, eps, {"fold": 0, "entities": 2})
    assert digest == multi_entity_hash(eps) and len(digest) == 64
    loaded, meta = load_multi_entity_episodes(path, dataset)
    assert loaded == eps and meta == {"fold": 0, "entities": 2}
    doc = json.loads(path.read_text())
    assert doc["count"] == 8 and doc["hash"] == digest
    assert doc["episodes"][0]["entities"][0]["references"] == [
        r.key for r in eps[0].entities[0].references
    ]
    doc["episodes"][0]["entities"][0]["annotation_seed"] += 1
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="stored hash"):
        load_multi_entity_episodes(path, dataset)
    doc["episodes"][0]["entities"][0]["class_name"] = "giraffe"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="calls it"):
        load_multi_entity_episodes(path, dataset)
    single = tmp_path / "single.json"
    save_episodes(single, make_episodes(dataset, [1], n=2), {})
    with pytest.raises(
        InputError, match=r"multi-entity episode file \(it is a prosam episode file\)"
    ):
        load_multi_entity_episodes(single, dataset)


# ---------------------------------------------------------------------------- evaluator


class Everything:
    """Predicts every pixel for every entity, one entity at a time (no entity API)."""

    name = "everything"

    def __init__(self) -> None:
        self.fits: list[int] = []

    def fit(self, references):
        assert all(r.annotation.any() for r in references)
        self.fits.append(len(references))

    def predict(self, target):
        return MethodOutput(torch.full((1, 32, 32), 10.0), 0.5)


class FirstWins(Everything):
    """Joint API: entity 0 claims every pixel, the others none."""

    name = "first_wins"
    capabilities = frozenset({"multi_entity"})  # declared, as every method does

    def fit_entities(self, entities):
        self.fits.append(len(entities))

    def predict_entities(self, target):
        logits = torch.full((self.fits[-1], 1, 32, 32), -10.0)
        logits[0] = 10.0
        e = logits.shape[0]
        return EntityPrediction(logits, logits, torch.zeros(32, 32), torch.ones(e), torch.ones(e))


def _expected(eps, winner_only: bool) -> tuple[float, float]:
    """FSS mIoU and mean per-entity IoU when entity 0 (or, if not ``winner_only``, every
    entity) predicts the whole image."""
    pooled: dict[int, list[int]] = {}
    ious = []
    for ep in eps:
        for j, ent in enumerate(ep.entities):
            fg, ignore = ep.target.mask(ent.class_id)
            fg = fg & ~ignore
            everything = j == 0 or not winner_only
            inter = int(fg.sum()) if everything else 0
            union = int((~ignore).sum()) if everything else int(fg.sum())
            pooled.setdefault(ent.class_id, [0, 0])
            pooled[ent.class_id][0] += inter
            pooled[ent.class_id][1] += union
            ious.append(inter / union)
    return float(np.mean([i / u for i, u in pooled.values()])), float(np.mean(ious))


def test_evaluator_on_known_predictions(dataset, tiny_sam):
    eps = make_multi_entity_episodes(dataset, ALL, 5, entities=2, shots=2, seed=2)
    predictor = Predictor(tiny_sam)
    method = Everything()
    assert not has_entity_api(method)
    result = evaluate_multi_entity(method, predictor, eps, progress=False)
    assert method.fits == [2] * 10 and not result.joint  # one fit per entity, 2 shots each
    s = result.summary()
    # equal logits everywhere: ties go to entity 0, which takes the whole image
    miou, per_entity = _expected(eps, winner_only=True)
    assert s["miou_fss"] == pytest.approx(miou)
    assert s["miou_per_entity"] == pytest.approx(per_entity)
    miou_alone, per_entity_alone = _expected(eps, winner_only=False)
    assert s["miou_fss_independent"] == pytest.approx(miou_alone)
    assert s["miou_per_entity_independent"] == pytest.approx(per_entity_alone)
    assert s["overlap_fraction_pooled"] == 1.0 and s["num_entities"] == 10
    first = result.records[0]
    assert first["target"] == eps[0].target.key and first["overlap_fraction"] == 1.0
    h, w = eps[0].target.size
    assert [r["pixels"] for r in first["entities"]] == [h * w, 0]

    joint = FirstWins()
    assert has_entity_api(joint)
    result = evaluate_multi_entity(joint, predictor, eps, progress=False)
    assert joint.fits == [2] * 5 and result.joint
    s = result.summary()
    assert s["miou_fss"] == pytest.approx(miou) and s["overlap_fraction_pooled"] == 0.0
    assert s["miou_fss_independent"] == pytest.approx(miou)
    forced = evaluate_multi_entity(FirstWins(), predictor, eps, joint=False, progress=False)
    assert not forced.joint and forced.summary()["overlap_fraction_pooled"] == 1.0
    with pytest.raises(InputError, match="fit_entities"):
        evaluate_multi_entity(Everything(), predictor, eps, joint=True, progress=False)


# ---------------------------------------------------------------------------------- CLI


def _data_args(coco_root):
    return ["--data", f"coco:{coco_root}", "--fold", "0", "--folds", "2", "--classes", "all"]


def test_cli_make_multi_and_eval_end_to_end(coco_root, tmp_path, capsys):
    def make(out, *extra):
        return main(
            ["episodes", "make-multi", *_data_args(coco_root), "--n", "6", "--out", str(out)]
            + [str(x) for x in extra]
        )

    assert make(tmp_path / "a.json") == 0 and make(tmp_path / "b.json") == 0
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    assert make(tmp_path / "t.json", "--val-fraction", "0.5", "--val-out", tmp_path / "v.json") == 0
    test = json.loads((tmp_path / "t.json").read_text())
    val = json.loads((tmp_path / "v.json").read_text())
    assert test["count"] + val["count"] == 6 and val["meta"]["role"] == "validation"
    assert not {e["target"] for e in test["episodes"]} & {e["target"] for e in val["episodes"]}
    assert test["meta"]["entities"] == 2
    capsys.readouterr()
    assert make(tmp_path / "x.json", "--entities", "5") == 2
    assert "shows 5 of the 4 requested classes" in capsys.readouterr().err

    out = tmp_path / "res.json"
    common = [
        "eval",
        "multi-entity",
        *_data_args(coco_root),
        "--episodes",
        str(tmp_path / "a.json"),
        "--model",
        "tiny",
        "--no-progress",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--json",
        str(out),
    ]
    cpc = ["--method", "cpc", "--method-option", "num_sets=2", "--method-option", "outer_steps=1"]
    assert main([*common, *cpc, "--limit", "2"]) == 0
    report = json.loads(out.read_text())
    assert report["num_episodes"] == 2 and report["num_entities"] == 4 and report["joint"]
    assert report["episodes_hash"] == json.loads((tmp_path / "a.json").read_text())["hash"]
    assert report["evaluated_episodes_hash"] != report["episodes_hash"]
    assert (
        report["method_options"] == {"num_sets": 2, "outer_steps": 1}
        and report["protocol"]["entities"] == 2
    )
    s = report["original_size"]["summary"]
    assert 0.0 <= s["miou_fss"] <= 1.0 and 0.0 <= s["overlap_fraction_pooled"] <= 1.0
    assert "mIoU (FSS" in capsys.readouterr().out

    code = main([*common, "--method", "persam", "--limit", "1"])
    assert code == 0 and not json.loads(out.read_text())["joint"]
    capsys.readouterr()
    novel = [a if a != "all" else "novel" for a in common]
    assert main([*novel, "--method", "persam"]) == 2
    assert "not in the novel classes" in capsys.readouterr().err
    single = tmp_path / "single.json"
    assert main(["episodes", "make", *_data_args(coco_root), "--n", "2", "--out", str(single)]) == 0
    wrong = [a if a != str(tmp_path / "a.json") else str(single) for a in common]
    assert main([*wrong, "--method", "persam"]) == 2
    assert "not a prosam multi-entity episode file" in capsys.readouterr().err


def test_eval_fss_limit(coco_root, tmp_path):
    episodes = tmp_path / "ep.json"
    args = ["episodes", "make", *_data_args(coco_root), "--n", "5", "--out", str(episodes)]
    assert main(args) == 0
    out = tmp_path / "r.json"
    code = main(
        [
            "eval",
            "fss",
            *_data_args(coco_root),
            "--method",
            "persam",
            "--episodes",
            str(episodes),
            "--limit",
            "2",
            "--json",
            str(out),
            "--model",
            "tiny",
            "--no-progress",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["num_episodes"] == 2 and report["episodes_limit"] == 2
    assert report["episodes_hash"] == json.loads(episodes.read_text())["hash"]
    assert report["evaluated_episodes_hash"] != report["episodes_hash"]
