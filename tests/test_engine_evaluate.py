from __future__ import annotations

import numpy as np
import pytest
import torch

from prosam.data.episodes import make_episodes
from prosam.data.specs import load_dataset_spec
from prosam.evaluation.evaluate import evaluate_episodes, resize_nearest, working_resolution_logits
from prosam.evaluation.references import reference_annotation
from prosam.methods.base import MethodOutput
from prosam.sam import Predictor
from prosam.sam.transforms import geometry_for
from tests.fixtures_coco import write_coco_fixture


class Everything:
    """Predicts the whole image: the IoU of each episode is |mask| / |valid pixels|."""

    name = "everything"

    def __init__(self) -> None:
        self.fitted = 0

    def fit(self, references):
        assert references and all(r.annotation.any() for r in references)
        self.fitted += 1

    def predict(self, target):
        return MethodOutput(torch.full((1, 32, 32), 10.0), 1.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = write_coco_fixture(tmp_path_factory.mktemp("coco"))
    return load_dataset_spec(f"coco:{root}")


def test_pooled_metrics_of_a_known_predictor(dataset, tiny_sam):
    episodes = make_episodes(dataset, [1, 2], n=6, seed=1)
    method = Everything()
    result = evaluate_episodes(method, Predictor(tiny_sam), episodes, progress=False)
    assert method.fitted == 6 and result.episodes == 6
    per_class: dict[int, list[int]] = {}
    for ep in episodes:
        fg, ignore = ep.target.mask(ep.class_id)
        valid = (~ignore).sum()
        per_class.setdefault(ep.class_id, [0, 0])
        per_class[ep.class_id][0] += int((fg & ~ignore).sum())
        per_class[ep.class_id][1] += int(valid)
    expected = np.mean([i / u for i, u in per_class.values()])
    assert result.original.summary()["miou_fss"] == pytest.approx(expected)
    assert [r["target"] for r in result.records] == [e.target.key for e in episodes]
    for ep, rec in zip(episodes, result.records, strict=True):  # the whole image predicted
        fg, ignore = ep.target.mask(ep.class_id)
        assert (rec["intersection"], rec["union"]) == ((fg & ~ignore).sum(), (~ignore).sum())
        assert rec["iou"] == pytest.approx(rec["intersection"] / rec["union"])


def test_working_resolution_crops_the_padding():
    g = geometry_for((48, 64), 128)  # input 96 x 128
    low = torch.zeros(1, 32, 32)
    low[:, 24:, :] = 10.0  # positive only in the padded band (rows >= 96 of 128)
    out = working_resolution_logits(low, g)
    assert out.shape == (1, 96, 128)
    # Only bilinear spill from the padding reaches the last two image rows.
    assert out[:, :94].max() == 0 and (out[:, 94:] > 0).all()


def test_resize_nearest_keeps_binary_masks():
    mask = np.zeros((4, 6), bool)
    mask[1:3, 2:4] = True
    out = resize_nearest(mask, (8, 12))
    assert out.dtype == bool and out.sum() == 16


def test_ranks_split_the_episodes(dataset, tiny_sam, monkeypatch):
    episodes = make_episodes(dataset, [1, 2, 3], n=7, seed=2)
    seen = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        r = evaluate_episodes(Everything(), Predictor(tiny_sam), episodes, progress=False)
        seen += [rec["target"] + str(rec["class_id"]) for rec in r.records]
    assert sorted(seen) == sorted(e.target.key + str(e.class_id) for e in episodes)


def test_reference_annotations_are_reproducible_and_per_reference(dataset):
    sample = dataset.samples_with_class(1)[0]
    a1, mask = reference_annotation(sample, 1, "point", seed=5, index=0)
    a2, _ = reference_annotation(sample, 1, "point", seed=5, index=0)
    b, _ = reference_annotation(sample, 1, "point", seed=5, index=1)
    assert np.array_equal(a1, a2) and not np.array_equal(a1, b)
    assert (a1 <= mask).all()
    full, mask = reference_annotation(sample, 1, "mask", seed=5)
    assert np.array_equal(full, mask)


class RowsFromReference:
    """Predicts the top rows of the low-res grid, as many as the reference's annotated
    fraction says: the prediction depends on the reference and nothing else."""

    name = "rows"

    def fit(self, references):
        self.rows = 1 + int(31 * references[0].annotation.mean())

    def predict(self, target):
        logits = torch.full((1, 32, 32), -10.0)
        logits[:, : self.rows] = 10.0
        return MethodOutput(logits, 1.0)


def test_wrong_reference_episodes_take_the_next_other_class(dataset):
    from prosam.errors import InputError
    from prosam.evaluation.evaluate import wrong_reference_episodes

    episodes = make_episodes(dataset, [1, 2, 3], n=9, seed=4)
    wrong = wrong_reference_episodes(episodes)
    for i, (ep, other) in enumerate(zip(episodes, wrong, strict=True)):
        assert other.class_id != ep.class_id
        later = [episodes[(i + k) % 9] for k in range(1, 9)]
        assert other is next(e for e in later if e.class_id != ep.class_id)
    with pytest.raises(InputError, match="two classes"):
        wrong_reference_episodes(make_episodes(dataset, [1], n=3, seed=0))


def test_reference_dependence_of_blind_and_reading_methods(dataset, tiny_sam):
    from prosam.evaluation.evaluate import wrong_reference_episodes
    from prosam.evaluation.references import episode_inputs
    from prosam.metrics import mask_iou
    from prosam.sam.transforms import original_size_mask

    predictor = Predictor(tiny_sam)
    episodes = make_episodes(dataset, [1, 2, 3], n=8, seed=3)
    blind = evaluate_episodes(
        Everything(), predictor, episodes, progress=False, wrong_reference=True
    )
    dep = blind.reference_dependence()
    assert dep["reference_gain"] == pytest.approx(0.0) and dep["prediction_overlap"] == 1.0
    assert dep["miou_fss_wrong_reference"] == pytest.approx(dep["miou_fss"])
    assert evaluate_episodes(Everything(), predictor, episodes, progress=False).wrong is None

    method = RowsFromReference()
    result = evaluate_episodes(method, predictor, episodes, progress=False, wrong_reference=True)
    overlaps, wrong_ious = [], []
    for ep, other in zip(episodes, wrong_reference_episodes(episodes), strict=True):
        refs, target, truth, ignore = episode_inputs(ep, predictor)
        masks = []
        for references in (refs, episode_inputs(other, predictor)[0]):
            method.fit(references)
            logits = method.predict(target).low_res_logits
            masks.append(original_size_mask(logits, target.embedded.geometry))
        overlaps.append(mask_iou(masks[0], masks[1]))
        wrong_ious.append(mask_iou(masks[1], truth, ignore))
    assert [r["prediction_overlap"] for r in result.records] == pytest.approx(overlaps)
    assert [r["iou_wrong_reference"] for r in result.records] == pytest.approx(wrong_ious)
    dep = result.reference_dependence()
    assert (
        dep["prediction_overlap"] == pytest.approx(np.mean(overlaps))
        and dep["prediction_overlap"] < 1
    )
    assert dep["reference_gain"] == pytest.approx(
        dep["miou_fss"] - result.wrong.summary()["miou_fss"]
    )
