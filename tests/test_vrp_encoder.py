from __future__ import annotations

import math

import pytest
import torch

from prosam.core.losses import bce_dice_loss
from prosam.errors import InputError
from prosam.methods.prompt_encoder.encoder import (
    EFFICIENTNET_LITE0_MID_CHANNELS,
    RESNET50_MID_CHANNELS,
    VRPEncoder,
    bidirectional_keep,
    frozen_prior,
    fused_features,
    masked_average_pool,
    sine_position_encoding,
    target_pseudo_mask,
)

MID = (6, 10)
HIGH = 12
DIM = 16
QUERIES = 5
HEADS = 4


def _attention_params(dim: int) -> int:
    # in_proj (3 D x D + 3 D), out_proj (D x D + D), LayerNorm (2 D)
    return 3 * dim * dim + 3 * dim + dim * dim + dim + 2 * dim


def _hand_count(mid: tuple[int, int], dim: int, queries: int, ffn: int = 0) -> int:
    reduce = sum(mid) * dim
    merge = (2 * dim + 1) * dim
    embed = queries * dim
    ffn_params = 2 * (dim * ffn + ffn + ffn * dim + dim + 2 * dim) if ffn else 0
    return reduce + merge + embed + 4 * _attention_params(dim) + ffn_params


def _encoder(**kwargs) -> VRPEncoder:
    torch.manual_seed(0)
    return VRPEncoder(MID, DIM, QUERIES, HEADS, **kwargs)


def _inputs(batch: int = 2, size: int = 64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)

    def mid():
        return (
            torch.randn(batch, MID[0], 8, 8, generator=g),
            torch.randn(batch, MID[1], 4, 4, generator=g),
        )

    def high():
        return torch.relu(torch.randn(batch, HIGH, 4, 4, generator=g))

    ann = torch.zeros(batch, 1, size, size)
    ann[:, :, size // 4 : size // 2, size // 4 : size // 2] = 1
    return mid(), high(), ann, mid(), high()


def test_parameter_count_small_config_by_hand():
    assert _hand_count(MID, DIM, QUERIES) == 16 * 16 + 33 * 16 + 5 * 16 + 4 * 1120 == 5344
    assert _encoder().count_parameters() == 5344
    assert _encoder(ffn_dim=8).count_parameters() == _hand_count(MID, DIM, QUERIES, ffn=8)


def test_parameter_count_paper_configs():
    resnet = VRPEncoder(RESNET50_MID_CHANNELS)
    # 1536*256 + 513*256 + 50*256 + 4 * 263,680
    assert resnet.count_parameters() == 393_216 + 131_328 + 12_800 + 1_054_720 == 1_592_064
    lite = VRPEncoder(EFFICIENTNET_LITE0_MID_CHANNELS)
    assert lite.count_parameters() == 152 * 256 + 131_328 + 12_800 + 1_054_720 == 1_237_760


def test_output_shape_and_augmented_shapes():
    enc = _encoder().eval()
    args = _inputs()
    out = enc(*args)
    assert out.shape == (2, QUERIES, DIM)
    aug = enc.augment(*args)
    assert aug.reference.shape == aug.target.shape == (2, DIM, 8, 8)
    assert aug.prototype.shape == (2, DIM)
    assert aug.ref_mask.shape == aug.pseudo_mask.shape == (2, 1, 8, 8)
    assert torch.isfinite(out).all()


def test_target_size_may_differ_from_reference():
    enc = _encoder().eval()
    ref_mid, ref_high, ann, _, _ = _inputs()
    tgt_mid = (torch.randn(2, MID[0], 6, 10), torch.randn(2, MID[1], 3, 5))
    tgt_high = torch.rand(2, HIGH, 3, 5)
    assert enc(ref_mid, ref_high, ann, tgt_mid, tgt_high).shape == (2, QUERIES, DIM)


def test_bad_inputs_raise():
    enc = _encoder()
    ref_mid, ref_high, ann, tgt_mid, tgt_high = _inputs()
    with pytest.raises(InputError):
        enc((ref_mid[1], ref_mid[0]), ref_high, ann, tgt_mid, tgt_high)
    with pytest.raises(InputError):
        enc(ref_mid, ref_high, ann[:1], tgt_mid, tgt_high)
    with pytest.raises(InputError):
        enc(ref_mid, ref_high[:, :5], ann, tgt_mid, tgt_high)


def test_gradients_reach_every_parameter_and_not_the_features():
    enc = _encoder(ffn_dim=8).train()
    args = _inputs()
    prompts = enc(*args)
    # A stand-in decoder: each pixel's logit is the mean of the prompts' dot products with
    # a fixed image embedding.
    image = torch.randn(2, DIM, 4, 4, generator=torch.Generator().manual_seed(3))
    logits = torch.einsum("bqd,bdhw->bhw", prompts, image)[:, None] / QUERIES
    target = (torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(4)) > 0.5).float()
    bce_dice_loss(logits, target).backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    tensors = [*args[0], args[1], args[2], *args[3], args[4]]
    assert all(not t.requires_grad and t.grad is None for t in tensors)


def test_dropout_only_in_train_mode():
    args = _inputs()
    enc = _encoder().eval()
    assert torch.equal(enc(*args), enc(*args))
    enc.train()
    torch.manual_seed(5)
    a = enc(*args)
    b = enc(*args)
    assert not torch.allclose(a, b)
    no_dropout = _encoder(dropout=0.0).train()
    assert torch.equal(no_dropout(*args), no_dropout(*args))
    assert torch.allclose(no_dropout.eval()(*args), enc.eval()(*args))


def test_point_annotation_survives_max_pooling_into_prototype():
    enc = _encoder().eval()
    ref_mid, ref_high, _, tgt_mid, tgt_high = _inputs(batch=1)
    ann = torch.zeros(1, 1, 512, 512)
    ann[0, 0, 200, 300] = 1  # one pixel: feature cell (200 // 64, 300 // 64) = (3, 4)
    aug = enc.augment(ref_mid, ref_high, ann, tgt_mid, tgt_high)
    expected = torch.zeros(1, 1, 8, 8)
    expected[0, 0, 3, 4] = 1
    assert torch.equal(aug.ref_mask, expected)
    cat = torch.cat(
        [
            ref_mid[0],
            torch.nn.functional.interpolate(
                ref_mid[1], size=(8, 8), mode="bilinear", align_corners=True
            ),
        ],
        1,
    )
    reduced = torch.relu(enc.reduce(cat))[0, :, 3, 4]
    assert reduced.abs().sum() > 0
    torch.testing.assert_close(aug.prototype[0], reduced / (1 + 5e-4))
    # Nearest-neighbour resizing (VRP-SAM's code) loses the point.
    lost = torch.nn.functional.interpolate(ann, size=(8, 8), mode="nearest")
    assert lost.sum() == 0
    # Area pooling keeps it, but shrunken.
    area = (
        _encoder(annotation_pool="area").eval().augment(ref_mid, ref_high, ann, tgt_mid, tgt_high)
    )
    assert area.ref_mask[0, 0, 3, 4] == pytest.approx(1 / 4096)
    assert 0 < area.prototype.abs().sum() < aug.prototype.abs().sum()


def test_masked_average_pool_by_hand():
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    m = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    torch.testing.assert_close(masked_average_pool(f, m), torch.tensor([[[[4.0 / (2 + 5e-4)]]]]))


def test_pseudo_mask_by_hand():
    ref = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2): [1, 0] and [0, 1]
    mask = torch.tensor([[[[1.0, 0.0]]]])  # only the first reference position
    tgt = torch.tensor([[[[1.0, 0.0, 2.0]], [[1.0, 1.0, 0.0]]]])  # [1, 1], [0, 1], [2, 0]
    out = target_pseudo_mask(tgt, ref, mask)
    torch.testing.assert_close(out, torch.tensor([[[[1 / math.sqrt(2), 0.0, 1.0]]]]))
    norm = target_pseudo_mask(tgt, ref, mask, normalize=True)
    torch.testing.assert_close(norm, torch.tensor([[[[1 / math.sqrt(2), 0.0, 1.0]]]]) / (1 + 1e-7))
    # An empty mask gives an all-zero prior, not NaN.
    assert torch.equal(
        target_pseudo_mask(tgt, ref, torch.zeros_like(mask)), torch.zeros(1, 1, 1, 3)
    )


def test_pseudo_mask_sources_and_normalisation():
    ref_mid, _, ann, tgt_mid, _ = _inputs()
    # High-level maps at the mid-level size, so that no resizing blurs the extremes.
    g = torch.Generator().manual_seed(2)
    ref_high, tgt_high = (torch.rand(2, HIGH, 8, 8, generator=g) for _ in range(2))
    args = (ref_mid, ref_high, ann, tgt_mid, tgt_high)
    high = _encoder().eval().augment(*args)
    assert high.pseudo_mask.min() >= 0 and high.pseudo_mask.max() <= 1
    norm = _encoder(normalize_pseudo_mask=True).eval().augment(*args)
    flat = norm.pseudo_mask.flatten(1)
    torch.testing.assert_close(flat.amax(1), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.amin(1), torch.zeros(2), atol=1e-6, rtol=0)
    reduced = _encoder(pseudo_mask_source="reduced").eval().augment(*args)
    assert reduced.pseudo_mask.shape == (2, 1, 8, 8)
    assert not torch.allclose(reduced.pseudo_mask, high.pseudo_mask)


def test_bidirectional_keep_drops_cells_whose_reverse_match_leaves_the_mask():
    # Reference cells: [1, 0] (annotated) and [0, 1] (not annotated).
    ref = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    mask = torch.tensor([[[[1.0, 0.0]]]])
    # Targets [1, 0.2] matches the annotated cell best; [0.2, 1] the other one.
    tgt = torch.tensor([[[[1.0, 0.2]], [[0.2, 1.0]]]])
    keep = bidirectional_keep(tgt, ref, mask)
    torch.testing.assert_close(keep, torch.tensor([[[[1.0, 0.0]]]]))
    prior = frozen_prior(
        "high",
        ((ref, ref), ref),
        mask,
        ((tgt, tgt), tgt),
        bidirectional=True,
    )
    plain = target_pseudo_mask(tgt, ref, mask)
    # The second cell had a positive plain prior (cos with [1, 0] is 0.196); it is dropped.
    assert plain[0, 0, 0, 1] > 0.1
    torch.testing.assert_close(prior, plain * keep)


def test_fused_features_cosine_is_the_mean_of_the_levels():
    g = torch.Generator().manual_seed(3)
    mid_a, mid_b = torch.randn(1, 5, 4, 4, generator=g), torch.randn(1, 5, 4, 4, generator=g)
    high_a, high_b = torch.randn(1, 7, 4, 4, generator=g), torch.randn(1, 7, 4, 4, generator=g)
    fa, fb = fused_features(mid_a, high_a), fused_features(mid_b, high_b)
    assert fa.shape == (1, 12, 4, 4)
    cos = torch.nn.functional.cosine_similarity
    expected = (cos(mid_a, mid_b, dim=1) + cos(high_a, high_b, dim=1)) / 2
    torch.testing.assert_close((fa * fb).sum(1), expected, atol=1e-5, rtol=0)
    # The coarse map is upsampled to the fine grid.
    assert fused_features(mid_a, torch.randn(1, 7, 2, 2, generator=g)).shape == (1, 12, 4, 4)


def test_fused_prior_is_on_the_stride16_grid():
    ref_mid, ref_high, ann, tgt_mid, tgt_high = _inputs()
    aug = (
        _encoder(pseudo_mask_source="fused")
        .eval()
        .augment(ref_mid, ref_high, ann, tgt_mid, tgt_high)
    )
    direct = frozen_prior("fused", (ref_mid, ref_high), ann, (tgt_mid, tgt_high))
    assert direct.shape == (2, 1, 4, 4)
    assert aug.pseudo_mask.shape == (2, 1, 8, 8)
    with pytest.raises(InputError, match="source"):
        frozen_prior("reduced", (ref_mid, ref_high), ann, (tgt_mid, tgt_high))


def test_prior_attention_steers_prompts_through_the_prior_only():
    args = _inputs()
    plain = _encoder().eval()
    biased = _encoder(prior_attention=5.0).eval()
    # Same weights (same seed, the bias adds no parameters).
    assert plain.count_parameters() == biased.count_parameters()
    aug = biased.augment(*args)
    with torch.no_grad():
        unbiased_out = biased.generate(aug.reference, aug.target)
        torch.testing.assert_close(unbiased_out, plain.generate(aug.reference, aug.target))
        out = biased.generate(aug.reference, aug.target, aug.pseudo_mask)
        assert not torch.allclose(out, unbiased_out)
        # A constant prior normalises to zero bias: the paper's attention.
        flat = biased.generate(aug.reference, aug.target, torch.ones_like(aug.pseudo_mask))
        torch.testing.assert_close(flat, unbiased_out)
        torch.testing.assert_close(biased(*args), out)
    with pytest.raises(InputError, match="prior_attention"):
        _encoder(prior_attention=-1.0)


def test_sine_position_encoding_by_hand():
    pe = sine_position_encoding(2, 3, 4)
    assert pe.shape == (6, 4)
    for r in range(2):
        for c in range(3):
            y = (r + 1) / (2 + 1e-6) * 2 * math.pi
            x = (c + 1) / (3 + 1e-6) * 2 * math.pi
            # dim 4: two channels per axis, both with frequency 10000 ** 0 = 1
            expected = torch.tensor([math.sin(y), math.cos(y), math.sin(x), math.cos(x)])
            torch.testing.assert_close(pe[r * 3 + c], expected)
    big = sine_position_encoding(4, 4, 8)
    # channels 2, 3 of each half use temperature ** (2 / 4) = 100
    y = 1 / (4 + 1e-6) * 2 * math.pi
    torch.testing.assert_close(big[0, 2], torch.tensor(math.sin(y / 100)))
    torch.testing.assert_close(big[0, 3], torch.tensor(math.cos(y / 100)))


def test_sam_target_values_replace_the_values_not_the_keys():
    ref_mid, ref_high, ann, tgt_mid, tgt_high = _inputs()
    enc = _encoder(target_values="sam", prior_attention=2.0).eval()
    g = torch.Generator().manual_seed(4)
    sam_a = torch.randn(2, DIM, 6, 5, generator=g)
    sam_b = torch.randn(2, DIM, 6, 5, generator=g)
    with torch.no_grad():
        out_a = enc(ref_mid, ref_high, ann, tgt_mid, tgt_high, sam_a)
        out_b = enc(ref_mid, ref_high, ann, tgt_mid, tgt_high, sam_b)
        assert out_a.shape == (2, QUERIES, DIM)
        assert not torch.allclose(out_a, out_b)
        # Values equal to the enhanced target features give the paper's generator back.
        aug = enc.augment(ref_mid, ref_high, ann, tgt_mid, tgt_high)
        torch.testing.assert_close(
            enc.generate(aug.reference, aug.target, aug.pseudo_mask, aug.target),
            enc.generate(aug.reference, aug.target, aug.pseudo_mask),
        )
    with pytest.raises(InputError, match="tgt_sam"):
        enc(ref_mid, ref_high, ann, tgt_mid, tgt_high)
    with pytest.raises(InputError, match="target_values"):
        _encoder(target_values="pixels")


def test_without_target_residual_the_prompts_are_what_the_queries_read():
    ref_mid, ref_high, ann, tgt_mid, tgt_high = _inputs()
    enc = _encoder(target_values="sam", target_residual=False).eval()
    sam = torch.randn(2, DIM, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        # Constant target values: every query reads the same thing, whatever it asked.
        flat = sam.mean(dim=(2, 3), keepdim=True).expand_as(sam)
        out = enc(ref_mid, ref_high, ann, tgt_mid, tgt_high, flat)
        torch.testing.assert_close(out[:, 0], out[:, 1])
        with_residual = _encoder(target_values="sam").eval()
        kept = with_residual(ref_mid, ref_high, ann, tgt_mid, tgt_high, flat)
        assert not torch.allclose(kept[:, 0], kept[:, 1])


def test_prior_keep_hides_the_cells_below_the_threshold():
    ref_mid, ref_high, ann, tgt_mid, tgt_high = _inputs()
    enc = _encoder(target_values="sam", target_residual=False, prior_keep=0.5).eval()
    aug = enc.augment(ref_mid, ref_high, ann, tgt_mid, tgt_high)
    prior = torch.zeros(2, 1, 8, 8)
    prior[:, :, :2, :2] = 1.0  # the only kept cells
    sam = torch.randn(2, DIM, 8, 8, generator=torch.Generator().manual_seed(6))
    changed = sam.clone()
    changed[:, :, 4:, 4:] += 5.0  # outside the kept cells
    with torch.no_grad():
        out = enc.generate(aug.reference, aug.target, prior, sam)
        torch.testing.assert_close(out, enc.generate(aug.reference, aug.target, prior, changed))
        inside = sam.clone()
        inside[:, :, 0, 0] += 5.0
        assert not torch.allclose(out, enc.generate(aug.reference, aug.target, prior, inside))
        # A constant prior keeps every cell: no NaN.
        flat = enc.generate(aug.reference, aug.target, torch.ones_like(prior), sam)
        assert torch.isfinite(flat).all()
    with pytest.raises(InputError, match="prior_keep"):
        _encoder(prior_keep=1.5)
