"""Build frozen SAM variants by name.

``vit_b`` / ``vit_l`` / ``vit_h`` use the official segment-anything architecture (from the
``segment-anything`` package), ``vit_t`` swaps in the MobileSAM TinyViT-5M image encoder, and
``tiny`` is a small randomly initialised model for tests. Every builder returns a
:class:`segment_anything.modeling.Sam` whose parameters are frozen and which is in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import nn

from prosam.core.state_dict import load_state_dict_strict
from prosam.errors import InputError

PROMPT_EMBED_DIM = 256
IMAGE_SIZE = 1024
VIT_PATCH_SIZE = 16


def _prompt_encoder(image_size: int, embedding_size: int, embed_dim: int) -> PromptEncoder:
    return PromptEncoder(
        embed_dim=embed_dim,
        image_embedding_size=(embedding_size, embedding_size),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )


def _mask_decoder(embed_dim: int, mlp_dim: int = 2048, num_heads: int = 8) -> MaskDecoder:
    return MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=2, embedding_dim=embed_dim, mlp_dim=mlp_dim, num_heads=num_heads
        ),
        transformer_dim=embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=256 if embed_dim >= 256 else embed_dim,
    )


def _vit_sam(depth: int, width: int, heads: int, global_attn: tuple[int, ...]) -> Sam:
    encoder = ImageEncoderViT(
        depth=depth,
        embed_dim=width,
        img_size=IMAGE_SIZE,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=heads,
        patch_size=VIT_PATCH_SIZE,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=global_attn,
        window_size=14,
        out_chans=PROMPT_EMBED_DIM,
    )
    size = IMAGE_SIZE // VIT_PATCH_SIZE
    return Sam(
        image_encoder=encoder,
        prompt_encoder=_prompt_encoder(IMAGE_SIZE, size, PROMPT_EMBED_DIM),
        mask_decoder=_mask_decoder(PROMPT_EMBED_DIM),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def _build_vit_b() -> Sam:
    return _vit_sam(12, 768, 12, (2, 5, 8, 11))


def _build_vit_l() -> Sam:
    return _vit_sam(24, 1024, 16, (5, 11, 17, 23))


def _build_vit_h() -> Sam:
    return _vit_sam(32, 1280, 16, (7, 15, 23, 31))


def _build_vit_t() -> Sam:
    from prosam.sam.tiny_vit import build_tiny_vit_5m

    size = IMAGE_SIZE // VIT_PATCH_SIZE
    return Sam(
        image_encoder=build_tiny_vit_5m(),
        prompt_encoder=_prompt_encoder(IMAGE_SIZE, size, PROMPT_EMBED_DIM),
        mask_decoder=_mask_decoder(PROMPT_EMBED_DIM),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


class TinyImageEncoder(nn.Module):
    """A few strided convolutions standing in for SAM's image encoder in tests.

    It keeps SAM's interface: ``img_size`` attribute, ``(B, 3, S, S)`` in,
    ``(B, C, S/16, S/16)`` out.
    """

    def __init__(self, img_size: int = 128, out_chans: int = 32) -> None:
        super().__init__()
        self.img_size = img_size
        chans = [3, 8, 16, 32, out_chans]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1), nn.GELU()]
        self.body = nn.Sequential(*layers[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _build_tiny() -> Sam:
    """A ~0.3 M-parameter SAM for tests: 128-px input, 8x8 embedding, 32-d prompts."""
    img_size, dim = 128, 32
    return Sam(
        image_encoder=TinyImageEncoder(img_size, dim),
        prompt_encoder=_prompt_encoder(img_size, img_size // VIT_PATCH_SIZE, dim),
        mask_decoder=_mask_decoder(dim, mlp_dim=64, num_heads=2),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


SAM_BUILDERS: dict[str, Callable[[], Sam]] = {
    "vit_b": _build_vit_b,
    "vit_l": _build_vit_l,
    "vit_h": _build_vit_h,
    "vit_t": _build_vit_t,
    "tiny": _build_tiny,
}


def freeze(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode with every parameter frozen; returns it."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def build_sam(
    variant: str, *, state_dict: dict[str, torch.Tensor] | None = None, seed: int | None = 0
) -> Sam:
    """Build a frozen SAM of the named ``variant``, optionally loading ``state_dict`` strictly.

    ``seed`` makes the random initialisation reproducible (it matters for ``tiny``).
    """
    if variant not in SAM_BUILDERS:
        raise InputError(f"unknown SAM variant {variant!r}; choose one of {sorted(SAM_BUILDERS)}")
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sam = SAM_BUILDERS[variant]()
    else:
        sam = SAM_BUILDERS[variant]()
    if state_dict is not None:
        load_state_dict_strict(sam, state_dict, source=f"weights for SAM variant {variant!r}")
    return freeze(sam)
