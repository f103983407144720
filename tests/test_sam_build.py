from __future__ import annotations

import pytest
import torch

from prosam.errors import InputError, WeightsError
from prosam.sam import SAM_BUILDERS, build_sam
from prosam.sam.weights import infer_variant


def _meta_build(variant: str) -> torch.nn.Module:
    with torch.device("meta"):
        return SAM_BUILDERS[variant]()


@pytest.mark.parametrize(
    ("variant", "depth", "width", "global_blocks"),
    [
        ("vit_b", 12, 768, (2, 5, 8, 11)),
        ("vit_l", 24, 1024, (5, 11, 17, 23)),
        ("vit_h", 32, 1280, (7, 15, 23, 31)),
    ],
)
def test_official_vit_architectures(variant, depth, width, global_blocks):
    sam = _meta_build(variant)
    state = sam.state_dict()
    blocks = {int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks.")}
    assert blocks == set(range(depth))
    assert state["image_encoder.patch_embed.proj.weight"].shape == (width, 3, 16, 16)
    head_dim = width // sam.image_encoder.blocks[0].attn.num_heads
    for i in range(depth):
        rel = state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape
        # Global blocks attend over the whole 64x64 grid, windowed ones over 14x14.
        assert rel == ((2 * 64 - 1, head_dim) if i in global_blocks else (2 * 14 - 1, head_dim))
    assert infer_variant(state) == variant


def test_vit_t_and_tiny_share_sam_interfaces():
    for variant, size, dim in [("vit_t", 1024, 256), ("tiny", 128, 32)]:
        sam = _meta_build(variant)
        assert sam.image_encoder.img_size == size
        assert sam.prompt_encoder.embed_dim == dim
        assert sam.prompt_encoder.image_embedding_size == (size // 16, size // 16)
        assert infer_variant(sam.state_dict()) == variant


def test_built_sam_is_frozen_and_in_eval_mode():
    sam = build_sam("tiny")
    assert not sam.training
    assert all(not m.training for m in sam.modules())
    assert all(not p.requires_grad for p in sam.parameters())


def test_tiny_build_is_reproducible_and_seeded():
    a, b = build_sam("tiny", seed=3), build_sam("tiny", seed=3)
    c = build_sam("tiny", seed=4)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert any(
        not torch.equal(va, vc)
        for va, vc in zip(a.state_dict().values(), c.state_dict().values(), strict=True)
    )


def test_strict_loading_refuses_mismatched_weights():
    state = build_sam("tiny", seed=1).state_dict()
    loaded = build_sam("tiny", seed=2, state_dict=state)
    assert torch.equal(
        loaded.state_dict()["mask_decoder.iou_token.weight"], state["mask_decoder.iou_token.weight"]
    )
    missing = dict(state)
    missing.pop("mask_decoder.iou_token.weight")
    with pytest.raises(WeightsError, match="missing"):
        build_sam("tiny", state_dict=missing)
    extra = {**state, "image_encoder.extra": torch.zeros(1)}
    with pytest.raises(WeightsError, match="unexpected"):
        build_sam("tiny", state_dict=extra)
    wrong = {**state, "mask_decoder.iou_token.weight": torch.zeros(2, 2)}
    with pytest.raises(WeightsError, match="shape"):
        build_sam("tiny", state_dict=wrong)


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(InputError, match="vit_b"):
        build_sam("vit_x")
