"""DINOv2 ViT-S/14 and ViT-B/14 (Meta, Apache-2.0), re-implemented with the official key names.

The official ``dinov2_vit{s,b}14_pretrain.pth`` state dicts load strictly (``mask_token``,
used only for DINOv2's masked-image training, is dropped): ``patch_embed.proj``,
``cls_token``, ``pos_embed`` (a 37x37 grid + class token, for 518x518 inputs),
``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}`` and
``norm``. The positional embedding is resized to the input's patch grid with DINOv2's bicubic
interpolation (``scale_factor = (grid + 0.1) / 37``), so any input size works; inputs whose
sides are not multiples of 14 lose their last ``H % 14`` rows and ``W % 14`` columns.

Features (``(B, C, H // 14, W // 14)``, patch tokens only): ``mid`` are the outputs of blocks 4
and 8 (1/3 and 2/3 of the depth), ``high`` that of the last block; all three pass through the
final LayerNorm, as DINOv2's ``get_intermediate_layers(norm=True)`` does (``norm_mid=False``
keeps the raw block outputs for ``mid``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prosam.backbones.base import Backbone, BackboneFeatures, WeightFile, fetch_weight_file
from prosam.errors import InputError

PATCH_SIZE = 14
PRETRAIN_GRID = 37  # pos_embed grid of the released checkpoints (518 / 14)
_INTERPOLATE_OFFSET = 0.1

# sha256 values are not published by Meta; these are the ones pinned, identically, by several
# independent public projects (and the downloads are verified against them).
DINOV2_WEIGHTS = {
    "vits14": WeightFile(
        url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
        sha256="b938bf1bc15cd2ec0feacfe3a1bb553fe8ea9ca46a7e1d8d00217f29aef60cd9",
        licence="Apache-2.0",
    ),
    "vitb14": WeightFile(
        url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
        sha256="0b8b82f85de91b424aded121c7e1dcc2b7bc6d0adeea651bf73a13307fad8c73",
        licence="Apache-2.0",
    ),
}
# variant: (embed dim, depth, heads)
DINOV2_ARCHS = {"vits14": (384, 12, 6), "vitb14": (768, 12, 12)}


class PatchEmbed(nn.Module):
    """Non-overlapping 14x14 patches projected to ``dim`` channels."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, PATCH_SIZE, PATCH_SIZE)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    """Per-channel residual scaling (``gamma``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """Two-layer GELU MLP."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * 4)
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DINOv2(Backbone):
    """Frozen DINOv2 ViT-S/14 or ViT-B/14: mid = blocks 4 and 8, high = block 12, all stride 14."""

    strides = (PATCH_SIZE, PATCH_SIZE, PATCH_SIZE)
    default_input_size = 518
    ignored_weight_prefixes = ("mask_token",)

    def __init__(self, variant: str = "vits14", *, norm_mid: bool = True) -> None:
        super().__init__()
        if variant not in DINOV2_ARCHS:
            raise InputError(f"variant must be one of {sorted(DINOV2_ARCHS)}, got {variant!r}")
        dim, depth, heads = DINOV2_ARCHS[variant]
        self.variant = variant
        self.name = f"dinov2_{variant}"
        self.mid_channels = (dim, dim)
        self.high_channels = dim
        self.mid_blocks = (depth // 3 - 1, 2 * depth // 3 - 1)
        self.norm_mid = norm_mid
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, PRETRAIN_GRID**2 + 1, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self._finalize()

    def feature_sizes(self, height: int, width: int) -> tuple[tuple[int, int], ...]:
        """Every map is ``(height // 14, width // 14)``."""
        return ((height // PATCH_SIZE, width // PATCH_SIZE),) * 3

    def _pos_embed(self, grid_h: int, grid_w: int, dtype: torch.dtype) -> Tensor:
        if grid_h == grid_w == PRETRAIN_GRID:
            return self.pos_embed.to(dtype)
        pos = self.pos_embed.float()
        dim = pos.shape[-1]
        patch = pos[:, 1:].reshape(1, PRETRAIN_GRID, PRETRAIN_GRID, dim).permute(0, 3, 1, 2)
        patch = F.interpolate(
            patch,
            scale_factor=(
                (grid_h + _INTERPOLATE_OFFSET) / PRETRAIN_GRID,
                (grid_w + _INTERPOLATE_OFFSET) / PRETRAIN_GRID,
            ),
            mode="bicubic",
            antialias=False,
        )
        assert patch.shape[-2:] == (grid_h, grid_w)
        patch = patch.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
        return torch.cat([pos[:, :1], patch], dim=1).to(dtype)

    def forward_features(self, x: Tensor) -> BackboneFeatures:
        b = x.shape[0]
        if min(x.shape[-2:]) < PATCH_SIZE:
            raise InputError(f"input {tuple(x.shape[-2:])} is smaller than one 14x14 patch")
        tokens = self.patch_embed(x)
        grid_h, grid_w = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens], dim=1)
        tokens = tokens + self._pos_embed(grid_h, grid_w, tokens.dtype)
        mids: list[Tensor] = []
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in self.mid_blocks:
                mids.append(self.norm(tokens) if self.norm_mid else tokens)
        high = self.norm(tokens)

        def to_map(t: Tensor) -> Tensor:
            return t[:, 1:].transpose(1, 2).reshape(b, -1, grid_h, grid_w).contiguous()

        return BackboneFeatures(mid=(to_map(mids[0]), to_map(mids[1])), high=to_map(high))

    def default_weights_file(self, *, root: str | os.PathLike[str] | None = None) -> Path:
        """Meta's released checkpoint, downloaded into the prosam cache if needed."""
        return fetch_weight_file(DINOV2_WEIGHTS[self.variant], root=root)
