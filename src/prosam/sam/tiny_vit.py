"""The TinyViT-5M image encoder of MobileSAM.

Module and parameter names follow MobileSAM's ``tiny_vit_sam.py`` so that its ``mobile_sam.pt``
image-encoder weights load strictly. Inference only: stochastic depth is omitted (its rate is 0
in MobileSAM) and there is no gradient checkpointing.

Shapes: ``(B, 3, 1024, 1024)`` normalised image -> ``(B, 256, 64, 64)`` embedding. A 4x patch
embedding gives a 256x256 grid; stage 0 (MBConv) and the downsampling after stages 0 and 1
halve it to 64x64; the merge after stage 2 keeps 64x64 (stride 1 for 320 output channels).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

from prosam.errors import InputError

EMBED_DIMS = (64, 128, 160, 320)
DEPTHS = (2, 2, 6, 2)
NUM_HEADS = (2, 4, 5, 10)
WINDOW_SIZES = (7, 7, 14, 7)
MLP_RATIO = 4
MBCONV_EXPAND_RATIO = 4
LOCAL_CONV_SIZE = 3
NECK_DIM = 256
# PatchMerging keeps the resolution when it outputs one of these widths (MobileSAM's rule).
_STRIDE1_MERGE_DIMS = (320, 448, 576)


class Conv2d_BN(nn.Sequential):
    """Bias-free convolution followed by batch norm (children ``c`` and ``bn``)."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(
            in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chans)


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convolutions: ``(B, 3, S, S)`` -> ``(B, dim, S/4, S/4)``."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2d_BN(in_chans, dim // 2, 3, 2, 1),
            nn.GELU(),
            Conv2d_BN(dim // 2, dim, 3, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise 3x3, 1x1 project, residual, GELU."""

    def __init__(self, dim: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = dim * expand_ratio
        self.conv1 = Conv2d_BN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2d_BN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2d_BN(hidden, dim)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Downsampling between stages; accepts ``(B, C, H, W)`` or tokens, returns tokens."""

    def __init__(self, resolution: int, dim: int, out_dim: int) -> None:
        super().__init__()
        self.input_resolution = (resolution, resolution)
        stride = 1 if out_dim in _STRIDE1_MERGE_DIMS else 2
        self.act = nn.GELU()
        self.conv1 = Conv2d_BN(dim, out_dim)
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            h, w = self.input_resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks on ``(B, C, H, W)`` maps, then a patch merging."""

    def __init__(self, dim: int, resolution: int, depth: int, out_dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, MBCONV_EXPAND_RATIO) for _ in range(depth))
        self.downsample = PatchMerging(resolution, dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class Mlp(nn.Module):
    """Pre-norm two-layer MLP with GELU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


def attention_bias_indices(resolution: int) -> tuple[torch.Tensor, int]:
    """Index map ``(N, N)`` from token pairs of a square window to relative-offset ids.

    Offsets ``(|dy|, |dx|)`` are numbered in the order they are first met when scanning point
    pairs in row-major order; returns the map and the number of distinct offsets.
    """
    points = list(itertools.product(range(resolution), range(resolution)))
    offset_ids: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offset_ids.setdefault(offset, len(offset_ids)))
    n = len(points)
    return torch.tensor(idxs, dtype=torch.long).view(n, n), len(offset_ids)


class Attention(nn.Module):
    """Pre-norm multi-head attention over one window, with learned relative-position biases."""

    def __init__(self, dim: int, num_heads: int, resolution: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.scale = self.key_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        idxs, num_offsets = attention_bias_indices(resolution)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, num_offsets))
        self.register_buffer("attention_bias_idxs", idxs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        kd = self.key_dim
        # The checkpoint's qkv output is laid out per head as [q | k | v].
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * kd)
        q, k, v = (t.transpose(1, 2) for t in qkv.split([kd, kd, kd], dim=3))
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn + self.attention_biases[:, self.attention_bias_idxs]
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class TinyViTBlock(nn.Module):
    """Windowed attention, depthwise local convolution, then MLP, on ``(B, L, C)`` tokens."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.input_resolution = (resolution, resolution)
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, dim * MLP_RATIO)
        self.local_conv = Conv2d_BN(dim, dim, LOCAL_CONV_SIZE, 1, LOCAL_CONV_SIZE // 2, groups=dim)

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, _, c = x.shape
        ws = self.window_size
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        # Zero padding happens before the attention's own LayerNorm, so padded tokens take part
        # as keys, exactly as in the reference implementation.
        x = F.pad(x.view(b, h, w, c), (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        windows = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        out = self.attn(windows)
        out = out.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        return out[:, :h, :w].reshape(b, h * w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, n, c = x.shape
        if n != h * w:
            raise InputError(f"expected {h * w} tokens, got {n}")
        x = x + self._windowed_attention(x)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w))
        x = x.view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """Stages 1-3: TinyViT blocks, then an optional patch merging."""

    def __init__(
        self,
        dim: int,
        resolution: int,
        depth: int,
        num_heads: int,
        window_size: int,
        out_dim: int | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, resolution, num_heads, window_size) for _ in range(depth)
        )
        self.downsample = PatchMerging(resolution, dim, out_dim) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


def stage_resolutions(grid: int, num_stages: int = 4) -> list[int]:
    """Input grid size of each stage; the last two share one (the final merge has stride 1)."""
    return [grid // 2 ** (i - 1 if i == num_stages - 1 else i) for i in range(num_stages)]


class TinyViT(nn.Module):
    """MobileSAM's TinyViT image encoder with SAM's 256-channel neck."""

    def __init__(
        self,
        img_size: int = 1024,
        embed_dims: tuple[int, ...] = EMBED_DIMS,
        depths: tuple[int, ...] = DEPTHS,
        num_heads: tuple[int, ...] = NUM_HEADS,
        window_sizes: tuple[int, ...] = WINDOW_SIZES,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(3, embed_dims[0])
        resolutions = stage_resolutions(img_size // 4, len(depths))
        self.out_resolution = resolutions[-1]
        last = len(depths) - 1
        self.layers = nn.ModuleList()
        for i, (dim, depth, res) in enumerate(zip(embed_dims, depths, resolutions, strict=True)):
            out_dim = embed_dims[i + 1] if i < last else None
            if i == 0:
                assert out_dim is not None
                self.layers.append(ConvLayer(dim, res, depth, out_dim))
            else:
                self.layers.append(
                    BasicLayer(dim, res, depth, num_heads[i], window_sizes[i], out_dim)
                )
        # Classification head of the ImageNet model: unused here, kept so that the official
        # checkpoint (which stores it) loads strictly.
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], NECK_DIM, kernel_size=1, bias=False),
            LayerNorm2d(NECK_DIM),
            nn.Conv2d(NECK_DIM, NECK_DIM, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(NECK_DIM),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        side = self.out_resolution
        return self.neck(x.view(b, side, side, c).permute(0, 3, 1, 2))


def build_tiny_vit_5m() -> TinyViT:
    """MobileSAM's TinyViT-5M encoder for 1024-px inputs (randomly initialised)."""
    return TinyViT(img_size=1024)
