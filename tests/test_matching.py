"""The matcher method's parts on hand-made feature maps, and the method on the tiny SAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prosam.backbones import build_backbone
from prosam.errors import InputError
from prosam.methods import Reference, Target
from prosam.methods.matching.correspondence import (
    bidirectional_matches,
    cell_centres,
    positive_cells,
    similarity_matrix,
    similarity_priors,
)
from prosam.methods.matching.features import (
    JoinedFeatures,
    SemanticFeatures,
    aspect_preserving_input,
    semantic_features,
)
from prosam.methods.matching.method import (
    Candidate,
    MatcherMethod,
    drop_composites,
    low_res_to_grid,
    paste_low_res,
)
from prosam.methods.matching.zoom import zoom_box
from prosam.sam import Predictor
from prosam.sam.transforms import geometry_for, original_size_mask


def _grid(vectors: list[list[float]], shape: tuple[int, int]) -> torch.Tensor:
    """``(C, h, w)`` from one C-vector per cell in raster order."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(-1, *shape)


A, B, C = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]
AB = [0.8, 0.6, 0.0]  # closer to A than to B


def test_a_match_whose_reverse_match_leaves_the_mask_is_dropped():
    # Reference: two foreground cells (A, B) and one background cell (C).
    reference = _grid([A, B, C], (1, 3))
    foreground = torch.tensor([[True, True, False]])
    # Target: a cell like A, and a cell that is B's best match but is even closer to the
    # reference background C -- its reverse match leaves the mask.
    near_c = [0.0, 0.6, 0.8]
    target = _grid([A, near_c, [0.0, -1.0, 0.0]], (1, 3))
    matches = bidirectional_matches(reference, foreground, target)
    assert matches.forward == 2
    assert matches.target_cells.tolist() == [0]
    assert matches.reference_cells.tolist() == [0]
    torch.testing.assert_close(matches.scores, torch.tensor([1.0]))
    assert matches.kept_fraction == 0.5


def test_one_target_cell_is_kept_once_with_its_best_score():
    reference = _grid([A, AB, C], (1, 3))
    foreground = torch.tensor([[True, True, False]])
    target = _grid([A, C], (1, 2))
    matches = bidirectional_matches(reference, foreground, target)
    assert matches.target_cells.tolist() == [0]  # both A and AB chose target cell 0
    torch.testing.assert_close(matches.scores, torch.tensor([1.0]))


def test_hungarian_matching_is_one_to_one():
    reference = _grid([A, AB, C], (1, 3))
    foreground = torch.tensor([[True, True, False]])
    target = _grid([A, B, C], (1, 3))  # AB is nearer A, but one-to-one gives it B
    nearest = bidirectional_matches(reference, foreground, target)
    hungarian = bidirectional_matches(reference, foreground, target, assignment="hungarian")
    assert nearest.target_cells.tolist() == [0]
    assert sorted(hungarian.target_cells.tolist()) == [0, 1]
    with pytest.raises(InputError, match="empty"):
        bidirectional_matches(reference, torch.zeros(1, 3, dtype=torch.bool), target)
    with pytest.raises(InputError, match="assignment"):
        bidirectional_matches(reference, foreground, target, assignment="greedy")  # type: ignore[arg-type]


def test_priors_by_hand():
    reference = _grid([A, B, C], (1, 3))
    target = _grid([A, C], (1, 2))
    weights = torch.tensor([[1.0, 0.5, 0.0]])
    priors = similarity_priors(similarity_matrix(reference, target), weights, (1, 2))
    # target A: fg sims (1, 0) weighted (1, .5) -> mean 2/3; max 1; bg weights (0, .5, 1)
    torch.testing.assert_close(priors.positive_mean, torch.tensor([[2 / 3, 0.0]]))
    torch.testing.assert_close(priors.positive_max, torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(priors.negative_mean, torch.tensor([[0.0, 1 / 1.5]]))
    torch.testing.assert_close(priors.negative_max, torch.tensor([[0.0, 1.0]]))


def test_positive_cells_by_mean_and_by_nearest_reference_cell():
    # reference: fg A; background one cell like the target's X and three unlike it
    x = [0.6, 0.8, 0.0]
    reference = _grid([A, x, C, C, C], (1, 5))
    target = _grid([[0.8, 0.6, 0.0], x], (1, 2))
    weights = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]])
    priors = similarity_priors(similarity_matrix(reference, target), weights, (1, 2))
    # cell 0: fg 0.8, bg mean 0.96/4, bg max 0.96 -> mean rule yes, nearest no
    # cell 1: fg 0.6, bg mean 1/4, bg max 1 -> mean rule yes, nearest no
    torch.testing.assert_close(positive_cells(priors, "mean"), torch.tensor([[1.0, 1.0]]))
    torch.testing.assert_close(positive_cells(priors, "nearest"), torch.tensor([[0.0, 0.0]]))
    with pytest.raises(InputError, match="rule"):
        positive_cells(priors, "max")


def test_cell_centres_span_the_image():
    xy = cell_centres(torch.tensor([0, 5]), (2, 3), (20, 30))
    np.testing.assert_allclose(xy, [[5.0, 5.0], [25.0, 15.0]])


def test_semantic_features_are_unit_cells_on_an_aspect_preserving_grid(tmp_path, tiny_sam):
    image = np.random.default_rng(0).integers(0, 256, (60, 120, 3), dtype=np.uint8)
    assert aspect_preserving_input(image, 64, torch.device("cpu")).shape == (1, 3, 32, 64)
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    embedded = Predictor(tiny_sam).embed(image)
    provider = SemanticFeatures(backbone, input_size=128, cache_dir=tmp_path)
    feats = provider(image, embedded)
    assert feats.shape == (112 + 320, 4, 8)  # stride 16 of a 64 x 128 input
    torch.testing.assert_close(feats.norm(dim=0), torch.ones(4, 8), atol=1e-4, rtol=0)
    assert provider(image, embedded) is feats  # the same object: from memory
    again = SemanticFeatures(backbone, input_size=128, cache_dir=tmp_path)
    torch.testing.assert_close(again(image.copy(), embedded), feats, atol=2e-3, rtol=0)
    fused = SemanticFeatures(backbone, input_size=128, sam_weight=1.0)(image, embedded)
    assert fused.shape[0] == feats.shape[0] + tiny_sam.embed_dim
    torch.testing.assert_close(fused.norm(dim=0), torch.ones(4, 8), atol=1e-4, rtol=0)
    with pytest.raises(InputError, match="levels"):
        SemanticFeatures(backbone, levels=("low",))


def test_flip_averaged_features_mirror_with_the_image(tmp_path, tiny_sam):
    image = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    mirrored = np.ascontiguousarray(image[:, ::-1])
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    predictor = Predictor(tiny_sam)
    flip = SemanticFeatures(backbone, input_size=96, flip=True)
    feats = flip(image, predictor.embed(image))
    torch.testing.assert_close(
        flip(mirrored, predictor.embed(mirrored)), feats.flip(-1), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(feats.norm(dim=0), torch.ones(feats.shape[1:]), atol=1e-4, rtol=0)
    embedded = predictor.embed(image)
    cached = SemanticFeatures(backbone, input_size=96, flip=True, cache_dir=tmp_path)
    torch.testing.assert_close(cached(image, embedded), feats, atol=2e-3, rtol=0)
    plain = SemanticFeatures(backbone, input_size=96, cache_dir=tmp_path)(image, embedded)
    assert (plain - feats).abs().max() > 1e-2  # its own disk cache entry, not flip's
    multi = SemanticFeatures(backbone, input_size=96, extra_sizes=(64, 128))(image, embedded)
    assert multi.shape == plain.shape and (multi - plain).abs().max() > 1e-2
    with pytest.raises(InputError, match="extra_sizes"):
        SemanticFeatures(backbone, extra_sizes=(16,))


def test_joined_features_cosine_is_the_mean_of_the_providers_cosines(tiny_sam):
    image = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    embedded = Predictor(tiny_sam).embed(image)
    coarse = SemanticFeatures(
        build_backbone("efficientnet_lite0", pretrained=False), levels=("high",), input_size=64
    )
    fine = SemanticFeatures(
        build_backbone("efficientnet_lite0", pretrained=False), input_size=64, sam_weight=1.0
    )
    joined = JoinedFeatures([coarse, fine])
    assert joined.reads_sam_embedding and not coarse.reads_sam_embedding
    feats = joined(image, embedded)
    a = torch.nn.functional.normalize(
        torch.nn.functional.interpolate(coarse(image, embedded)[None], (4, 4), mode="bilinear")[0],
        dim=0,
    ).flatten(1)
    b = fine(image, embedded).flatten(1)
    flat = feats.flatten(1)
    torch.testing.assert_close(flat.T @ flat, (a.T @ a + b.T @ b) / 2, atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="two providers"):
        JoinedFeatures([coarse])
    with pytest.raises(InputError, match="empty name"):
        semantic_features("efficientnet_lite0+")


def test_low_res_masks_come_to_the_image_grid(tiny_sam):
    image = np.zeros((40, 80, 3), dtype=np.uint8)
    embedded = Predictor(tiny_sam).embed(image)
    side = tiny_sam.sam.prompt_encoder.mask_input_size[0]
    logits = torch.full((1, side, side), -1.0)
    logits[0, : side // 4, : side // 2] = 1.0  # the left half of the image's rows 0..h/2
    cells = low_res_to_grid(logits, embedded, (2, 4))
    torch.testing.assert_close(cells[0], torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0] * 4]))


@pytest.fixture(scope="module")
def matcher(tiny_sam):
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    return MatcherMethod(
        tiny_sam, features=SemanticFeatures(backbone, input_size=96), min_iou=0.0, min_purity=0.0
    )


def test_matcher_returns_instances_whose_union_is_the_class_mask(tiny_sam, matcher):
    rng = np.random.default_rng(1)
    predictor = Predictor(tiny_sam)
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    annotation = np.zeros((64, 96), bool)
    annotation[10:40, 20:70] = True
    matcher.fit([Reference(image, annotation, predictor.embed(image))])
    target = rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)
    out = matcher.predict(Target(target, predictor.embed(target)))
    side = tiny_sam.sam.prompt_encoder.mask_input_size
    assert out.low_res_logits.shape == (1, *side)
    assert 1 <= len(out.instances) <= matcher.max_instances
    union = torch.stack([i.low_res_logits for i in out.instances]).amax(0)
    torch.testing.assert_close(out.low_res_logits, union)
    assert float(out.extras["best_proposal"]) >= max(i.score for i in out.instances) - 1e-6
    peak, match = float(out.extras["presence_peak"]), float(out.extras["presence_match"])
    assert out.score == pytest.approx((max(peak, 0) * max(match, 0)) ** 0.5)
    assert match <= peak + 1e-6  # the mean of the best n similarities is at most the best
    assert len(out.extras["points"]) <= matcher.max_points


def test_matcher_options_are_checked(tiny_sam):
    with pytest.raises(InputError):
        MatcherMethod(tiny_sam, features=lambda i, e: torch.zeros(3, 2, 2), min_purity=2.0)
    with pytest.raises(InputError):
        MatcherMethod(tiny_sam, features=lambda i, e: torch.zeros(3, 2, 2), max_points=0)
    with pytest.raises(InputError, match="purity_rule"):
        MatcherMethod(tiny_sam, features=lambda i, e: torch.zeros(3, 2, 2), purity_rule="max")


def test_segment_writes_instance_ids_inside_the_class_mask(tmp_path):
    from PIL import Image

    from prosam.cli import main
    from prosam.io import write_image, write_mask_png

    rng = np.random.default_rng(3)
    ref = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    mask = np.zeros((48, 64), bool)
    mask[8:30, 10:40] = True
    write_image(tmp_path / "ref.png", ref)
    write_mask_png(tmp_path / "ref-mask.png", mask)
    write_image(tmp_path / "t.png", rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    argv = ["segment", "--ref", str(tmp_path / "ref.png"), "--ref-mask"]
    argv += [str(tmp_path / "ref-mask.png"), str(tmp_path / "t.png"), "--out", str(tmp_path / "o")]
    argv += ["--method", "matcher", "--instances", "--model", "tiny", "--no-embedding-cache"]
    assert main(argv) == 0
    class_mask = np.asarray(Image.open(tmp_path / "o" / "t.png")) > 0
    ids = np.asarray(Image.open(tmp_path / "o" / "t-instances.png"))
    assert ids.shape == class_mask.shape == (40, 56)
    assert not (ids[~class_mask] > 0).any()


def _candidate(rows: slice, cols: slice, score: float) -> Candidate:
    logits = torch.full((16, 16), -1.0)
    logits[rows, cols] = 1.0
    return Candidate(logits, torch.zeros(2, 2), 0.9, 1.0, 1.0, score)


def test_a_candidate_holding_two_disjoint_kept_candidates_is_dropped():
    both = _candidate(slice(0, 8), slice(0, 16), 0.9)  # two objects taken as one
    left = _candidate(slice(0, 8), slice(0, 7), 0.8)
    right = _candidate(slice(0, 8), slice(9, 16), 0.7)
    head = _candidate(slice(0, 3), slice(0, 3), 0.6)  # a part of `left`, not disjoint from it
    kept = drop_composites([both, left, right, head])
    assert kept == [left, right, head]
    # one part alone (or nested parts) does not make a composite
    assert drop_composites([both, left, head]) == [both, left, head]
    assert drop_composites([both]) == [both]


def test_instance_mask_best_keeps_the_best_candidate_of_a_merged_group(tiny_sam):
    method = MatcherMethod(
        tiny_sam, features=lambda i, e: torch.zeros(3, 2, 2), instance_mask="best", min_iou=0.0
    )
    small = _candidate(slice(0, 6), slice(0, 6), 0.9)
    large = _candidate(slice(0, 8), slice(0, 8), 0.8)  # merged into `small`'s instance
    (instance,) = method.group_instances([small, large])
    torch.testing.assert_close(instance.low_res_logits[0], small.logits)
    union = MatcherMethod(tiny_sam, features=lambda i, e: torch.zeros(3, 2, 2), min_iou=0.0)
    (merged,) = union.group_instances([small, large])
    torch.testing.assert_close(merged.low_res_logits[0], large.logits)
    with pytest.raises(InputError):
        MatcherMethod(tiny_sam, features=lambda i, e: torch.zeros(3, 2, 2), instance_mask="x")


def test_zoom_box_by_hand():
    mask = np.zeros((100, 200), bool)
    mask[40:50, 100:110] = True  # 10 x 10, centre (45, 105)
    assert zoom_box(mask, 3.0, 0.3) == (30, 60, 90, 120)
    corner = np.zeros((100, 200), bool)
    corner[0:10, 195:200] = True  # near the top right: the crop shifts inside the image
    assert zoom_box(corner, 3.0, 0.3) == (0, 30, 170, 200)
    big = np.zeros((100, 200), bool)
    big[10:60, 10:20] = True  # 50 of 100 rows: not small
    assert zoom_box(big, 3.0, 0.3) is None
    assert zoom_box(big, 3.0, 0.5) == (0, 100, 0, 150)  # 150 x 150, clipped to 100 rows
    assert zoom_box(np.zeros((10, 10), bool), 3.0, 0.3) is None
    with pytest.raises(InputError, match="zoom context"):
        zoom_box(mask, 0.5, 0.3)


def test_zoom_adds_the_crops_cells_for_small_objects_only(tiny_sam):
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    features = SemanticFeatures(backbone, input_size=96)
    predictor = Predictor(tiny_sam)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)
    target = Target(image, predictor.embed(image))
    small = np.zeros((100, 200), bool)
    small[40:50, 100:110] = True
    large = np.zeros((100, 200), bool)
    large[10:90, 20:180] = True

    def reference_cells(mask: np.ndarray, zoom: float) -> int:
        method = MatcherMethod(tiny_sam, features=features, zoom_context=zoom)
        method.fit([Reference(image, mask, target.embedded)])
        return int(method.target_similarity(target).similarity.shape[0])

    def presence(zoom: float) -> dict[str, float]:
        method = MatcherMethod(tiny_sam, features=features, zoom_context=zoom)
        method.fit([Reference(image, small, target.embedded)])
        out = method.predict(target)
        return {k: float(out.extras[k]) for k in ("presence_peak", "presence_match")}

    whole = 3 * 6  # a 48 x 96 input at stride 16
    assert reference_cells(small, 0.0) == whole
    assert reference_cells(small, 3.0) == whole + 6 * 6  # + the 30 x 30 crop at 96 x 96
    assert reference_cells(large, 3.0) == whole
    assert presence(3.0) == pytest.approx(presence(0.0))  # read from the reference's own cells
    with pytest.raises(InputError, match="zoom_context"):
        MatcherMethod(tiny_sam, features=features, zoom_context=0.5)
    with pytest.raises(InputError, match="zoom_below"):
        MatcherMethod(tiny_sam, features=features, zoom_below=0.0)


def _disc_logits(geometry, side: int, radius: float) -> torch.Tensor:
    """``(1, side, side)`` low-res logits: +10 in a disc at the image's centre, of ``radius``
    times the image's longer side, -10 outside."""
    vh = side * geometry.input_size[0] / geometry.image_size
    vw = side * geometry.input_size[1] / geometry.image_size
    ys, xs = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")
    inside = (ys - vh / 2) ** 2 + (xs - vw / 2) ** 2 <= (radius * max(vh, vw)) ** 2
    return torch.where(inside, 10.0, -10.0)[None]


def test_paste_low_res_puts_a_crops_mask_in_its_place(tiny_sam):
    side = tiny_sam.sam.prompt_encoder.mask_input_size[0]
    image = geometry_for((100, 200), tiny_sam.image_size)
    whole = _disc_logits(image, side, 0.12)
    pasted = paste_low_res(whole, image, (0, 100, 0, 200), image, (side, side))
    agree = original_size_mask(pasted, image) == original_size_mask(whole, image)
    assert pasted.shape == (1, side, side) and agree.mean() > 0.99

    box = (20, 80, 110, 170)  # a 60 x 60 crop
    crop = geometry_for((60, 60), tiny_sam.image_size)
    inside = original_size_mask(_disc_logits(crop, side, 0.25), crop)
    expected = np.zeros((100, 200), bool)
    expected[20:80, 110:170] = inside
    got = original_size_mask(
        paste_low_res(_disc_logits(crop, side, 0.25), crop, box, image, (side, side)), image
    )
    assert (got & expected).sum() / (got | expected).sum() > 0.8
    assert not got[:, :100].any() and not got[:15].any()  # nothing far from the crop


class _DiscPredictor:
    """SAM's predictor with a decoder that answers every prompt with a disc at the image's
    centre, and a log of the images it embedded."""

    def __init__(self, model, radius: float) -> None:
        self.real = Predictor(model)
        self.side = model.sam.prompt_encoder.mask_input_size[0]
        self.radius = radius
        self.embedded: list[tuple[int, int]] = []

    def embed(self, image):
        self.embedded.append(image.shape[:2])
        return self.real.embed(image)

    def predict_low_res(self, embedded, *, multimask_output=True, **prompts):
        n = 3 if multimask_output else 1
        logits = _disc_logits(embedded.geometry, self.side, self.radius).repeat(n, 1, 1)
        return logits, torch.full((n,), 0.9)

    def predict_low_res_sets(self, embedded, points, *, multimask_output=True):
        answers = [self.predict_low_res(embedded, multimask_output=multimask_output)] * len(points)
        return torch.stack([a[0] for a in answers]), torch.stack([a[1] for a in answers])


def test_zoom_target_matches_again_inside_a_crop_around_a_small_find(tiny_sam):
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    features = SemanticFeatures(backbone, input_size=96)
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
    annotation = np.zeros((200, 200), bool)
    annotation[60:140, 60:140] = True
    embedded = Predictor(tiny_sam).embed(image)

    def run(zoom: float):
        method = MatcherMethod(
            tiny_sam,
            features=features,
            zoom_context=0,
            zoom_target=zoom,
            zoom_below=0.6,  # the tiny SAM's 32 x 32 masks are coarse: the disc is large
            min_purity=0.0,
        )
        method.predictor = _DiscPredictor(tiny_sam, radius=0.1)
        method.fit([Reference(image, annotation, embedded)])
        return method.predict(Target(image, embedded)), method.predictor.embedded

    plain, embeds = run(0.0)
    assert embeds == [] and "zoomed_box" not in plain.extras
    zoomed, embeds = run(3.0)
    first = original_size_mask(plain.low_res_logits, embedded.geometry)
    box = zoom_box(first, 3.0, 0.6)
    assert box is not None and embeds == [(box[1] - box[0], box[3] - box[2])]
    assert tuple(int(v) for v in zoomed.extras["zoomed_box"]) == box
    assert zoomed.score == plain.score  # the presence score is the first pass's
    got = original_size_mask(zoomed.low_res_logits, embedded.geometry)
    y0, y1, x0, x1 = box
    assert got.any() and got.sum() == got[y0:y1, x0:x1].sum()
    assert got.sum() < 0.5 * first.sum()  # the crop's finer disc, not the first pass's
    with pytest.raises(InputError, match="zoom_target"):
        MatcherMethod(tiny_sam, features=features, zoom_target=0.5)


def _feature_setup(method) -> list[tuple[str, tuple[int, ...]]]:
    """(backbone name, extra sizes) of each provider behind a matcher's features."""
    providers = getattr(method.features, "providers", [method.features])
    return [(p.backbone.name, p.extra_sizes) for p in providers]


def test_matcher_presets_read_the_features_their_thresholds_were_calibrated_on(tiny_sam):
    from prosam.label.defaults import default_score_threshold
    from prosam.methods import build_method
    from prosam.methods.prompt_encoder.method_prior import matcher_prior

    accurate = build_method("matcher", tiny_sam)
    assert _feature_setup(accurate) == [
        ("efficientnet_lite0", (384, 768)),
        ("efficientnet_lite2", (384, 768)),
    ]
    fast = build_method("matcher_fast", tiny_sam)
    assert _feature_setup(fast) == [("efficientnet_lite0", ())]
    assert _feature_setup(build_method("gfsam", tiny_sam)) == [("efficientnet_lite0", ())]
    # the bundled encoders were trained on the fast prior
    assert _feature_setup(matcher_prior(tiny_sam).method) == [("efficientnet_lite0", ())]
    # an option still overrides the preset
    assert _feature_setup(build_method("matcher_fast", tiny_sam, extra_feature_sizes=[384])) == [
        ("efficientnet_lite0", (384,))
    ]
    assert default_score_threshold("matcher") != default_score_threshold("matcher_fast")
    assert default_score_threshold("gfsam") == default_score_threshold("matcher_fast")
