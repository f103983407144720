"""CPC-SAM prompt sets: recipes, SAM-encoded aligned layout, encoder source, stacking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prosam.errors import InputError
from prosam.methods.cpc import (
    Recipe,
    SamPrompt,
    draw_recipes,
    encode_sam_prompts,
    encoder_prompt_sets,
    sam_prompt_sets,
    sample_sam_prompt,
    stack_prompt_sets,
)
from prosam.methods.cpc.prompt_sets import not_a_point_token
from prosam.sam.transforms import geometry_for, transform_boxes, transform_coords


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mask(shape=(40, 60)):
    m = np.zeros(shape, bool)
    m[10:30, 20:50] = True
    return m


def test_recipes_are_deterministic_and_cover_every_kind():
    a = draw_recipes(8, 3)
    assert a == draw_recipes(8, 3)
    assert a != draw_recipes(8, 4)
    assert {r.kind for r in a} == {"point", "scribble", "box", "mask"}
    for r in a:
        if r.kind == "box":
            assert (r.num_positive, r.num_negative) == (0, 0) and 0 <= r.box_noise <= 0.3
        else:
            assert 1 <= r.num_positive <= 5 and 0 <= r.num_negative <= 1 and r.box_noise == 0
    with pytest.raises(InputError):
        draw_recipes(0, 0)


@pytest.mark.parametrize("kind", ["point", "scribble", "box", "mask"])
def test_sampled_prompts_follow_the_recipe(kind):
    m = _mask()
    recipe = Recipe(kind, 3, 1, 0.2)
    p = sample_sam_prompt(m, recipe, 0)
    pos = p.points[p.labels == 1].astype(int)
    neg = p.points[p.labels == 0].astype(int)
    if kind == "box":
        assert len(p.points) == 0 and p.box is not None
    else:
        assert len(pos) == 3 and len(neg) == 1
        assert m[pos[:, 1], pos[:, 0]].all() and not m[neg[:, 1], neg[:, 0]].any()
        assert (p.box is not None) == (kind == "mask")
    if kind == "mask":
        np.testing.assert_array_equal(p.box, [20, 10, 50, 30])
    anchored = sample_sam_prompt(m, recipe, 0, anchor_positive=(25.0, 15.0))
    if kind != "box":
        np.testing.assert_array_equal(anchored.points[0], [25.0, 15.0])


def test_encoded_layout_matches_sams_prompt_encoder(tiny_sam):
    g = geometry_for((40, 60), tiny_sam.image_size)
    pts = np.array([[22.0, 12.0], [40.0, 20.0], [5.0, 5.0]])
    labels = np.array([1, 1, 0])
    box = np.array([20.0, 10.0, 50.0, 30.0])
    sets = encode_sam_prompts(
        tiny_sam,
        [SamPrompt(pts, labels, box), SamPrompt(pts[:1], labels[:1], None)],
        g,
        max_positive=3,
        max_negative=2,
    )
    assert sets.tokens.shape == (2, 3 + 2 + 2, tiny_sam.embed_dim)
    expected_valid = [[1, 1, 0, 1, 0, 1, 1], [1, 0, 0, 0, 0, 0, 0]]
    assert sets.valid.tolist() == [[bool(v) for v in row] for row in expected_valid]
    with torch.no_grad():
        ref, _ = tiny_sam.prompt_encoder(
            points=(transform_coords(pts, g)[None], torch.as_tensor(labels)[None]),
            boxes=transform_boxes(box[None], g),
            masks=None,
        )
    t = sets.tokens[0]
    torch.testing.assert_close(t[[0, 1, 3, 5, 6]], ref[0])
    nap = not_a_point_token(tiny_sam)
    for row, valid in zip(sets.tokens, sets.valid, strict=True):
        for tok in row[~valid]:
            torch.testing.assert_close(tok, nap)
    with pytest.raises(InputError):
        encode_sam_prompts(tiny_sam, [SamPrompt(pts, np.ones(3, int), None)], g, max_positive=2)


def test_sam_prompt_sets_are_deterministic(tiny_sam):
    g = geometry_for((40, 60), tiny_sam.image_size)
    recipes = draw_recipes(6, 1)
    a = sam_prompt_sets(tiny_sam, _mask(), g, recipes, 7)
    b = sam_prompt_sets(tiny_sam, _mask(), g, recipes, 7)
    c = sam_prompt_sets(tiny_sam, _mask(), g, recipes, 8)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.valid, b.valid)
    assert not torch.equal(a.tokens, c.tokens)
    assert a.tokens.shape == (6, 8, tiny_sam.embed_dim) and a.recipes == recipes


def test_encoder_source_applies_the_callable_to_random_annotations():
    seen = []

    def prompts_for(annotation: np.ndarray) -> torch.Tensor:
        seen.append(annotation.copy())
        return torch.full((1, 3, 4), float(annotation.sum()))

    recipes = [Recipe("point", 2, 0, 0.0), Recipe("box", 0, 0, 0.3), Recipe("mask", 1, 0, 0.0)]
    sets = encoder_prompt_sets(prompts_for, _mask(), recipes, 0)
    assert sets.tokens.shape == (3, 3, 4) and bool(sets.valid.all())
    assert seen[0].sum() == 2 and seen[2].sum() == _mask().sum()
    again = encoder_prompt_sets(prompts_for, _mask(), recipes, 0)
    assert torch.equal(sets.tokens, again.tokens)
    with pytest.raises(InputError):
        encoder_prompt_sets(lambda a: torch.zeros(3, 4), _mask(), recipes, 0)


def test_stack_pads_with_the_pad_token():
    from prosam.methods.cpc import PromptSets

    a = PromptSets(torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), [])
    b = PromptSets(torch.ones(2, 1, 4), torch.ones(2, 1, dtype=torch.bool), [])
    tokens, valid = stack_prompt_sets([a, b], torch.full((4,), 7.0))
    assert tokens.shape == (2, 2, 3, 4)
    assert bool((tokens[1, :, 1:] == 7).all()) and not bool(valid[1, :, 1:].any())
    with pytest.raises(InputError):
        stack_prompt_sets([a, PromptSets(torch.ones(1, 3, 4), torch.ones(1, 3, dtype=bool), [])])


def test_target_sets_come_from_the_priors_best_component(tiny_sam, monkeypatch):
    from prosam.methods.base import Target
    from prosam.methods.cpc import SamPromptSource
    from prosam.methods.cpc import sources as src
    from prosam.sam import ImageEmbedding

    g = torch.Generator().manual_seed(0)
    d = tiny_sam.embed_dim
    v = torch.randn(d, generator=g)
    emb = -v[:, None, None] + 0.1 * torch.randn(d, 8, 8, generator=g)
    emb[:, 1:3, 1:3] = v[:, None, None]  # the best blob: pixels 16..47
    weaker = 0.95 * v + 0.05 * torch.randn(d, generator=g)
    emb[:, 5:7, 5:7] = weaker[:, None, None]  # a second blob: pixels 80..111
    geometry = geometry_for((128, 128), tiny_sam.image_size)
    target = Target(np.zeros((128, 128, 3), np.uint8), ImageEmbedding(emb[None], geometry))
    recipes = [Recipe("point", 5, 1, 0.0), Recipe("box", 0, 0, 0.0), Recipe("mask", 3, 1, 0.0)]

    seen = []
    original = src.sam_prompt_sets

    def spy(sam, region, *args, **kwargs):
        seen.append((region.copy(), kwargs["anchor_positive"], kwargs["background"]))
        return original(sam, region, *args, **kwargs)

    monkeypatch.setattr(src, "sam_prompt_sets", spy)
    for component in (True, False):
        source = SamPromptSource(tiny_sam, prior_component=component)
        sets, extras = source.target_sets(v, [], [], target, recipes, 0)
        assert sets.tokens.shape == (3, 8, d)
        prior = extras["similarity"]
        assert prior.shape == (128, 128) and float(prior.max()) == pytest.approx(1.0)
        region, anchor, background = seen[-1]
        assert region[int(anchor[1]), int(anchor[0])]
        assert region[26:38, 26:38].all() and not (region & background).any()
        assert bool(region[90:102, 90:102].any()) != component
