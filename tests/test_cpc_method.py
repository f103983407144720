"""CPCMethod end to end on the tiny SAM: baselines, determinism, multi-entity resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prosam.errors import InputError
from prosam.methods.base import Reference, ReferenceMethod, Target
from prosam.methods.cpc import (
    CPCMethod,
    EncoderPromptSource,
    build_cpc,
)
from prosam.methods.overlaps import SUPPRESSED_LOGIT, resolve_overlaps
from prosam.sam import Predictor

FAST = {"num_sets": 4, "outer_steps": 2}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def episode(tiny_sam):
    rng = np.random.default_rng(0)
    predictor = Predictor(tiny_sam)
    refs = []
    for size, box in [((60, 90), (15, 30, 30, 85)), ((80, 64), (10, 40, 5, 30))]:
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        ann = np.zeros(size, bool)
        ann[box[0] : box[1], box[2] : box[3]] = True
        refs.append(Reference(image, ann, predictor.embed(image)))
    image = rng.integers(0, 256, (50, 120, 3), dtype=np.uint8)
    return refs, Target(image, predictor.embed(image))


@pytest.mark.parametrize("kind", ["cpc", "cpc_uniform", "cpc_best_single"])
def test_end_to_end_returns_low_res_logits(tiny_sam, episode, kind):
    refs, target = episode
    method = build_cpc(kind, tiny_sam, **FAST)
    assert isinstance(method, ReferenceMethod) and method.name == kind
    method.fit(refs)
    out = method.predict(target)
    assert out.low_res_logits.shape == (1, 32, 32)
    assert torch.isfinite(out.low_res_logits).all() and np.isfinite(out.score)
    assert out.extras["weights"].shape == (4,)
    torch.testing.assert_close(out.extras["weights"].sum(), torch.tensor(1.0))
    assert out.extras["similarity"].shape == (50, 120)
    if kind == "cpc":
        assert len(method.history) == 2
    if kind == "cpc_best_single":
        assert sorted(out.extras["weights"].tolist()) == [0.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("combine", ["tokens", "masked_tokens", "logits"])
def test_combine_modes_end_to_end(tiny_sam, episode, combine):
    refs, target = episode
    method = build_cpc("cpc", tiny_sam, combine=combine, **FAST)
    method.fit(refs[:1])
    out = method.predict(target)
    assert out.low_res_logits.shape == (1, 32, 32) and np.isfinite(out.score)


def test_support_sets_from_the_references_prior(tiny_sam, episode, monkeypatch):
    from prosam.methods.cpc import SamPromptSource

    refs, target = episode
    calls = []
    original = SamPromptSource._prior_sets

    def spy(self, vector, tgt, recipes, rng):
        calls.append(tgt.image.shape)
        return original(self, vector, tgt, recipes, rng)

    monkeypatch.setattr(SamPromptSource, "_prior_sets", spy)
    method = build_cpc("cpc", tiny_sam, support="prior", **FAST)
    method.fit(refs)
    assert calls == [refs[0].image.shape] * 2 + [refs[1].image.shape] * 2
    assert method.predict(target).low_res_logits.shape == (1, 32, 32)
    assert calls[-1] == target.image.shape
    with pytest.raises(InputError):
        build_cpc("cpc", tiny_sam, support="scribbles")


def test_lora_adapter_and_calibration_move_the_output(tiny_sam, episode):
    refs, target = episode
    a = build_cpc("cpc", tiny_sam, adapter="lora", lora_rank=2, **FAST)
    a.fit(refs[:1])
    b = build_cpc("cpc_uniform", tiny_sam, **FAST)
    b.fit(refs[:1])
    assert not torch.equal(a.predict(target).low_res_logits, b.predict(target).low_res_logits)


def test_fixed_seed_is_deterministic(tiny_sam, episode):
    refs, target = episode
    outs = []
    for seed in (3, 3, 4):
        method = build_cpc("cpc", tiny_sam, seed=seed, **FAST)
        method.fit(refs)
        outs.append(method.predict(target))
    assert torch.equal(outs[0].low_res_logits, outs[1].low_res_logits)
    assert torch.equal(outs[0].extras["weights"], outs[1].extras["weights"])
    assert not torch.equal(outs[0].low_res_logits, outs[2].low_res_logits)


def test_uniform_baseline_equals_an_uncalibrated_capl(tiny_sam, episode):
    """cpc with no bi-level step: fresh CaPL (equal weights) and identity adapter."""
    refs, target = episode
    uniform = build_cpc("cpc_uniform", tiny_sam, num_sets=4)
    fresh = build_cpc("cpc", tiny_sam, num_sets=4, outer_steps=0)
    for m in (uniform, fresh):
        m.fit(refs)
    u, f = uniform.predict(target), fresh.predict(target)
    torch.testing.assert_close(f.extras["weights"], torch.full((4,), 0.25))
    torch.testing.assert_close(u.low_res_logits, f.low_res_logits)
    assert u.score == pytest.approx(f.score)


def test_resolve_overlaps_by_hand():
    p = torch.tensor(
        [
            [[0.9, 0.6, 0.2], [0.7, 0.4, 0.55]],
            [[0.8, 0.7, 0.3], [0.7, 0.45, 0.1]],
            [[0.1, 0.65, 0.4], [0.2, 0.5, 0.6]],
        ]
    )
    logits = torch.logit(p)
    labels, resolved = resolve_overlaps(logits)
    assert labels.tolist() == [[0, 1, -1], [0, -1, 2]]  # tie 0.7/0.7 -> lower index
    won = labels[None] == torch.arange(3)[:, None, None]
    torch.testing.assert_close(resolved[won], logits[won])
    assert bool((resolved[~won] <= SUPPRESSED_LOGIT).all())
    assert int(((torch.sigmoid(resolved) > 0.5).sum(0) > 1).sum()) == 0
    labels_t, _ = resolve_overlaps(logits, threshold=0.75)
    assert labels_t.tolist() == [[0, -1, -1], [-1, -1, -1]]


def test_multi_entity_prediction_assigns_each_pixel_once(tiny_sam, episode):
    refs, target = episode
    method = build_cpc("cpc", tiny_sam, **FAST)
    method.fit_entities([refs[:1], refs[1:], refs])
    out = method.predict_entities(target)
    assert out.logits.shape == (3, 1, 32, 32) and out.resolved.shape == (3, 1, 32, 32)
    assert out.labels.shape == (32, 32) and out.scores.shape == (3,)
    torch.testing.assert_close(out.weights.sum(1), torch.ones(3))
    fg = torch.sigmoid(out.resolved[:, 0]) > 0.5
    assert int((fg.sum(0) > 1).sum()) == 0
    prob = torch.sigmoid(out.logits[:, 0])
    expected = torch.where(prob.max(0).values > 0.5, prob.argmax(0), -1)
    assert torch.equal(out.labels, expected)
    # the task-level weights are shared by all entities
    assert len({tuple(e["task_weights"].tolist()) for e in out.extras}) == 1


@pytest.mark.parametrize("kind", ["box", "point", "scribble"])
def test_non_mask_references_get_a_support_mask(tiny_sam, episode, kind):
    refs, target = episode
    ref = refs[0]
    ann = ref.annotation.copy()
    if kind != "box":
        ann[:] = False
        ann[20, 40] = ann[25, 60] = True
    method = build_cpc("cpc_uniform", tiny_sam, num_sets=2)
    method.fit([Reference(ref.image, ann, ref.embedded, kind=kind)])
    assert method.predict(target).low_res_logits.shape == (1, 32, 32)


def test_encoder_source(tiny_sam, episode):
    refs, target = episode
    calls = []

    def encode(reference, annotation, image):
        calls.append((id(reference), image.shape))
        g = torch.Generator().manual_seed(int(annotation.sum()))
        return torch.randn(1, 6, tiny_sam.embed_dim, generator=g)

    method = CPCMethod(tiny_sam, source=EncoderPromptSource(encode), **FAST)
    method.fit(refs)
    # support image i is prompted from the other reference, 2 halves x 4 sets each
    assert calls[:8] == [(id(refs[1]), refs[0].image.shape)] * 8
    calls.clear()
    out = method.predict(target)
    assert out.low_res_logits.shape == (1, 32, 32)
    assert [c[0] for c in calls] == [id(refs[m % 2]) for m in range(4)]


def test_errors(tiny_sam, episode):
    refs, target = episode
    with pytest.raises(InputError):
        build_cpc("cpc_fancy", tiny_sam)
    with pytest.raises(InputError):
        build_cpc("cpc", tiny_sam, adapter="prefix")
    method = build_cpc("cpc", tiny_sam, **FAST)
    with pytest.raises(RuntimeError):
        method.predict(target)
    with pytest.raises(InputError):
        method.fit([])
    empty = Reference(refs[0].image, np.zeros_like(refs[0].annotation), refs[0].embedded)
    with pytest.raises(InputError):
        method.fit([empty])
