"""VRP-SAM's visual reference prompt encoder (Sun et al., CVPR 2024, section 4).

Turns a reference image, its annotation and a target image, all seen through a frozen
backbone, into ``num_queries`` sparse prompt embeddings for SAM's mask decoder. It follows
VRP-SAM's released code (``model/VRP_encoder.py``, ``model/base/transformer_decoder.py``)
where that differs from the paper:

Feature augmenter
    The two mid-level maps (ResNet-50 layer 2 and 3: 512 + 1024 channels) are concatenated
    and reduced by one shared 1x1 convolution (no bias) + ReLU + ``Dropout2d(0.5)``. The
    prototype is the masked average ``sum(f * m) / (sum(m) + 5e-4)`` of the reduced
    reference features. A second shared 1x1 convolution (no bias) + ReLU maps
    ``[features, prototype, 10 * mask]`` to the enhanced reference features and
    ``[features, prototype, 10 * pseudo-mask]`` to the enhanced target features (the x10
    is in the code only: ``mask_scale``).

Pseudo-mask
    PFENet's prior: for every target position, the highest cosine similarity (eps 1e-7 in
    the denominator) between its high-level feature and the reference's high-level
    features multiplied by the reference mask, so positions outside the mask count as a
    similarity of 0. VRP-SAM's code does *not* min-max normalise the result, unlike PFENet
    and ProSAM's appendix ("normalized into [0, 1]"); with post-ReLU backbone features the
    cosine is already in ``[0, 1]``. ``normalize_pseudo_mask=True`` adds PFENet's
    ``(x - min) / (max - min + 1e-7)`` per image. VRP-SAM computes the reference's layer-4
    map from mask-multiplied layer-3 features (as PFENet does): that is the backbone's job,
    pass such a map as ``ref_high`` to reproduce it. ``pseudo_mask_source="reduced"`` uses
    the reduced mid-level features instead (detached, so it stays a fixed prior).

Prompt generator
    ``num_queries`` learned queries (``nn.Embedding``, 256-d, 4 heads, one layer):
    cross-attention to the enhanced reference tokens, self-attention, cross-attention to
    the enhanced target tokens, self-attention. Every attention is post-norm
    (``LayerNorm(x + attn(x))``) without dropout. A DETR sine positional encoding
    (normalised, temperature 10000) is added to the keys only, not to the values or the
    queries. The code builds no FFN (its FFN list stays empty; the paper's 1.6 M
    parameters agree), so ``ffn_dim=0`` by default; ``ffn_dim > 0`` adds a post-norm FFN
    after each self-attention.

Annotations
    The code resizes the annotation to the feature size with nearest-neighbour sampling,
    which drops most points and thin scribbles; here it is adaptive-max pooled (a cell is
    1 when any of its pixels is marked) by default, or area pooled
    (``annotation_pool="area"``), separately to the mid- and the high-level sizes.

With ResNet-50 mid channels (512 + 1024), ``dim=256`` and 50 queries the encoder has
1,592,064 trainable parameters (VRP-SAM reports 1.6 M); with EfficientNet-Lite0's 40 + 112
it has 1,237,760.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prosam.backbones.base import BackboneFeatures
from prosam.errors import InputError
from prosam.prompts import downsample_annotation

PoolMode = Literal["max", "area"]
PseudoMaskSource = Literal["high", "fused", "reduced", "given"]
TargetValues = Literal["backbone", "sam"]
#: Pseudo-mask sources computed from the frozen backbone alone (no trained weights).
FROZEN_PRIOR_SOURCES = ("high", "fused")
#: Every frozen prior variant, ``source`` or ``source+bidirectional`` (for benchmarks).
PRIOR_KINDS = ("high", "high+bidirectional", "fused", "fused+bidirectional")

#: Mid-level channels (layer 2, layer 3) of a ResNet-50 (VRP-SAM's default backbone).
RESNET50_MID_CHANNELS = (512, 1024)
#: Mid-level channels (layer 2, layer 3) of VGG-16 as VRP-SAM slices it.
VGG16_MID_CHANNELS = (256, 512)
#: Mid-level channels of EfficientNet-Lite0 at strides 8 and 16.
EFFICIENTNET_LITE0_MID_CHANNELS = (40, 112)

#: Denominator constant of VRP-SAM's masked average pooling.
PROTOTYPE_EPS = 5e-4
#: Constant of the cosine and min-max normalisations (PFENet's ``cosine_eps``).
COSINE_EPS = 1e-7


def masked_average_pool(features: Tensor, mask: Tensor, eps: float = PROTOTYPE_EPS) -> Tensor:
    """``(B, C, 1, 1)`` prototype ``sum(f * m) / (sum(m) + eps)`` of ``(B, C, h, w)`` features
    under a ``(B, 1, h, w)`` mask."""
    return (features * mask).sum(dim=(2, 3), keepdim=True) / (
        mask.sum(dim=(2, 3), keepdim=True) + eps
    )


def target_pseudo_mask(
    tgt_features: Tensor,
    ref_features: Tensor,
    ref_mask: Tensor,
    *,
    normalize: bool = False,
    eps: float = COSINE_EPS,
) -> Tensor:
    """PFENet/VRP-SAM prior ``(B, 1, h_t, w_t)`` of a target given an annotated reference.

    For each target position: ``max_j cos(t, r_j * m_j)`` over the reference positions
    ``j``, with ``cos(a, b) = a.b / (|a| |b| + eps)``, so masked-out positions give 0.
    ``normalize`` min-max normalises each image's map (PFENet; VRP-SAM's code does not).

    Args:
        tgt_features: ``(B, C, h_t, w_t)``.
        ref_features: ``(B, C, h_r, w_r)``.
        ref_mask: ``(B, 1, h_r, w_r)`` weights in ``[0, 1]``.
    """
    b, _, h, w = tgt_features.shape
    ref = (ref_features * ref_mask).flatten(2)  # (B, C, Nr)
    tgt = tgt_features.flatten(2)  # (B, C, Nt)
    dots = torch.einsum("bcr,bct->brt", ref, tgt)
    norms = ref.norm(dim=1)[:, :, None] * tgt.norm(dim=1)[:, None, :]
    corr = (dots / (norms + eps)).amax(dim=1)  # (B, Nt)
    if normalize:
        lo = corr.amin(dim=1, keepdim=True)
        hi = corr.amax(dim=1, keepdim=True)
        corr = (corr - lo) / (hi - lo + eps)
    return corr.reshape(b, 1, h, w)


def bidirectional_keep(
    tgt_features: Tensor, ref_features: Tensor, ref_mask: Tensor, eps: float = COSINE_EPS
) -> Tensor:
    """``(B, 1, h_t, w_t)``: the reference mask's value at each target cell's best match.

    Each target cell is matched to its most similar reference cell over the *whole*
    reference (not only the annotated part); a cell whose reverse match lands outside the
    annotation gets 0 (Matcher's bidirectional filter, as a soft weight for soft masks).
    """
    b, _, h, w = tgt_features.shape
    ref = F.normalize(ref_features.flatten(2), dim=1, eps=eps)
    tgt = F.normalize(tgt_features.flatten(2), dim=1, eps=eps)
    best = torch.einsum("bcr,bct->btr", ref, tgt).argmax(dim=2)  # (B, Nt)
    keep = torch.gather(ref_mask.flatten(1), 1, best)
    return keep.reshape(b, 1, h, w)


def fused_features(mid1: Tensor, high: Tensor, eps: float = COSINE_EPS) -> Tensor:
    """Stride-16 and stride-32 maps, each L2-normalised per cell (the coarse one upsampled
    bilinearly), concatenated and scaled so a cosine is the mean of the two levels'."""
    up = F.interpolate(high, size=mid1.shape[-2:], mode="bilinear", align_corners=False)
    parts = [F.normalize(mid1, dim=1, eps=eps), F.normalize(up, dim=1, eps=eps)]
    return torch.cat(parts, dim=1) / math.sqrt(2.0)


def frozen_prior(
    source: str,
    ref: tuple[tuple[Tensor, Tensor], Tensor],
    ref_annotation: Tensor,
    tgt: tuple[tuple[Tensor, Tensor], Tensor],
    *,
    pool: PoolMode = "max",
    bidirectional: bool = False,
    normalize: bool = False,
) -> Tensor:
    """The target prior ``(B, 1, h, w)`` from frozen backbone maps ``(mid, high)``.

    ``source="high"`` is VRP-SAM's (the stride-32 map); ``"fused"`` matches stride-16 and
    stride-32 features together (:func:`fused_features`) on the stride-16 grid.
    ``bidirectional`` multiplies the prior by :func:`bidirectional_keep`.
    """
    if source not in FROZEN_PRIOR_SOURCES:
        raise InputError(f"source must be one of {FROZEN_PRIOR_SOURCES}, got {source!r}")
    (ref_mid, ref_high), (tgt_mid, tgt_high) = ref, tgt
    if source == "high":
        ref_f, tgt_f = ref_high, tgt_high
    else:
        ref_f, tgt_f = fused_features(ref_mid[1], ref_high), fused_features(tgt_mid[1], tgt_high)
    size = (int(ref_f.shape[-2]), int(ref_f.shape[-1]))
    mask = cast(Tensor, downsample_annotation(ref_annotation, size, pool)).to(ref_f)
    prior = target_pseudo_mask(tgt_f, ref_f, mask, normalize=normalize)
    if bidirectional:
        prior = prior * bidirectional_keep(tgt_f, ref_f, mask)
    return prior


def target_prior(
    kind: str, ref: BackboneFeatures, annotation: Tensor, tgt: BackboneFeatures
) -> Tensor:
    """A :data:`PRIOR_KINDS` prior from backbone features (benchmarks compare them)."""
    if kind not in PRIOR_KINDS:
        raise InputError(f"kind must be one of {PRIOR_KINDS}, got {kind!r}")
    source, _, flag = kind.partition("+")
    return frozen_prior(
        source, (ref.mid, ref.high), annotation, (tgt.mid, tgt.high), bidirectional=bool(flag)
    )


def sine_position_encoding(
    h: int,
    w: int,
    dim: int,
    *,
    temperature: float = 10000.0,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """DETR's normalised sine encoding of an ``h x w`` grid as ``(h * w, dim)`` tokens.

    Channels ``[0, dim/2)`` encode the row, ``[dim/2, dim)`` the column; within each half,
    even channels are ``sin`` and odd ones ``cos`` of ``pos / temperature**(2 floor(i/2) /
    (dim/2))``, with ``pos = (index + 1) / (size + 1e-6) * 2 pi``.
    """
    if dim % 2:
        raise InputError(f"dim must be even, got {dim}")
    half = dim // 2
    y = torch.arange(1, h + 1, device=device, dtype=torch.float32) / (h + 1e-6) * 2 * math.pi
    x = torch.arange(1, w + 1, device=device, dtype=torch.float32) / (w + 1e-6) * 2 * math.pi
    i = torch.arange(half, device=device, dtype=torch.float32)
    freq = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / half)
    even = (torch.arange(half, device=device) % 2) == 0

    def encode(pos: Tensor) -> Tensor:
        arg = pos[:, None] / freq
        return torch.where(even, arg.sin(), arg.cos())

    pos_y = encode(y)[:, None, :].expand(h, w, half)
    pos_x = encode(x)[None, :, :].expand(h, w, half)
    return torch.cat([pos_y, pos_x], dim=-1).reshape(h * w, dim).to(dtype)


class _Attention(nn.Module):
    """Post-norm multi-head attention block: ``LayerNorm(query + attn(query, key, value))``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        bias: Tensor | None = None,
        *,
        residual: bool = True,
    ) -> Tensor:
        out = self.attn(query, key, value, attn_mask=bias, need_weights=False)[0]
        return self.norm(query + out if residual else out)


class _FFN(nn.Module):
    """Post-norm feed-forward block: ``LayerNorm(x + W2 relu(W1 x))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


@dataclass
class AugmentedFeatures:
    """What the feature augmenter produced, at the (first) mid-level resolution.

    ``reference``/``target``: ``(B, dim, h, w)`` enhanced features; ``prototype``:
    ``(B, dim)``; ``ref_mask``: ``(B, 1, h_r, w_r)`` the pooled annotation;
    ``pseudo_mask``: ``(B, 1, h_t, w_t)`` the target prior (unscaled).
    """

    reference: Tensor
    target: Tensor
    prototype: Tensor
    ref_mask: Tensor
    pseudo_mask: Tensor


class VRPEncoder(nn.Module):
    """VRP-SAM's visual reference prompt encoder (feature augmenter + prompt generator).

    Args:
        mid_channels: channels of the two mid-level backbone maps (ResNet-50: 512, 1024).
        dim: width of the reduced features and of the prompts (SAM's 256).
        num_queries: number of prompt embeddings produced.
        num_heads: attention heads.
        dropout: ``Dropout2d`` probability after the reduction (train mode only; 0: none).
        mask_scale: factor on the mask / pseudo-mask channel of the merge convolution.
        annotation_pool: ``"max"`` or ``"area"`` pooling of the annotation to feature size.
        pseudo_mask_source: ``"high"`` (high-level backbone maps, VRP-SAM), ``"fused"``
            (stride-16 and stride-32 maps matched together), ``"reduced"``, or ``"given"``
            (the caller passes it as ``tgt_prior``, e.g. another method's mask).
        normalize_pseudo_mask: min-max normalise the pseudo-mask per image (PFENet).
        bidirectional_prior: keep only target cells whose best match in the whole reference
            lies inside the annotation (Matcher's filter; not in VRP-SAM).
        prior_attention: strength of an additive bias, ``s * prior`` (prior min-max
            normalised per image), on the target cross-attention's logits; 0 (VRP-SAM):
            none. It steers the queries to where the reference matches from the first step.
        target_values: what the target cross-attention reads as values: the enhanced
            backbone features (VRP-SAM) or ``"sam"``, SAM's own embedding of the target
            (``tgt_sam`` in :meth:`forward`), so the prompts are made of what SAM's decoder
            matches against its image embedding (PerSAM's target-semantic prompting, learned).
        target_residual: keep the queries' residual around the target cross-attention
            (VRP-SAM). Without it the prompts are made only of what the queries read in the
            target, so a constant "main object" prompt cannot bypass the reference.
        prior_keep: the target cross-attention reads only cells whose normalised prior is at
            least this (0: every cell; the prior's peak is always kept). With
            ``bidirectional_prior`` any value > 0 keeps exactly the cells that match back
            into the annotation.
        ffn_dim: hidden width of an FFN after each self-attention; 0 (VRP-SAM): none.
    """

    def __init__(
        self,
        mid_channels: tuple[int, int] = RESNET50_MID_CHANNELS,
        dim: int = 256,
        num_queries: int = 50,
        num_heads: int = 4,
        *,
        dropout: float = 0.5,
        mask_scale: float = 10.0,
        annotation_pool: PoolMode = "max",
        pseudo_mask_source: PseudoMaskSource = "high",
        normalize_pseudo_mask: bool = False,
        bidirectional_prior: bool = False,
        prior_attention: float = 0.0,
        target_values: TargetValues = "backbone",
        target_residual: bool = True,
        prior_keep: float = 0.0,
        ffn_dim: int = 0,
    ) -> None:
        super().__init__()
        if len(mid_channels) != 2:
            raise InputError(f"mid_channels must hold two values, got {mid_channels}")
        if annotation_pool not in ("max", "area"):
            raise InputError(f"annotation_pool must be 'max' or 'area', got {annotation_pool!r}")
        if pseudo_mask_source not in ("high", "fused", "reduced", "given"):
            raise InputError(
                "pseudo_mask_source must be 'high', 'fused', 'reduced' or 'given', "
                f"got {pseudo_mask_source!r}"
            )
        if target_values not in ("backbone", "sam"):
            raise InputError(f"target_values must be 'backbone' or 'sam', got {target_values!r}")
        if not 0.0 <= prior_keep <= 1.0:
            raise InputError(f"prior_keep must be in [0, 1], got {prior_keep}")
        if prior_attention < 0:
            raise InputError(f"prior_attention must be >= 0, got {prior_attention}")
        if dim % num_heads or dim % 2:
            raise InputError(f"dim {dim} must be even and divisible by num_heads {num_heads}")
        self.mid_channels = (int(mid_channels[0]), int(mid_channels[1]))
        self.dim = dim
        self.num_queries = num_queries
        self.mask_scale = mask_scale
        self.annotation_pool: PoolMode = annotation_pool
        self.pseudo_mask_source: PseudoMaskSource = pseudo_mask_source
        self.normalize_pseudo_mask = normalize_pseudo_mask
        self.bidirectional_prior = bidirectional_prior
        self.prior_attention = float(prior_attention)
        self.num_heads = num_heads
        self.target_values: TargetValues = target_values
        self.target_residual = target_residual
        self.prior_keep = float(prior_keep)

        self.reduce = nn.Conv2d(sum(self.mid_channels), dim, kernel_size=1, bias=False)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.merge = nn.Conv2d(2 * dim + 1, dim, kernel_size=1, bias=False)

        self.queries = nn.Embedding(num_queries, dim)
        self.cross_ref = _Attention(dim, num_heads)
        self.self_ref = _Attention(dim, num_heads)
        self.cross_tgt = _Attention(dim, num_heads)
        self.self_tgt = _Attention(dim, num_heads)
        self.ffn_ref = _FFN(dim, ffn_dim) if ffn_dim > 0 else nn.Identity()
        self.ffn_tgt = _FFN(dim, ffn_dim) if ffn_dim > 0 else nn.Identity()

    def count_parameters(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _mid_features(self, mid: tuple[Tensor, Tensor], name: str) -> Tensor:
        if len(mid) != 2 or any(t.ndim != 4 for t in mid):
            raise InputError(f"{name} must be two (B, C, h, w) maps")
        first, second = mid
        channels = (first.shape[1], second.shape[1])
        if channels != self.mid_channels:
            raise InputError(f"{name} has channels {channels}, expected {self.mid_channels}")
        if first.shape[0] != second.shape[0]:
            raise InputError(f"{name} maps have batch sizes {first.shape[0]}, {second.shape[0]}")
        if second.shape[-2:] != first.shape[-2:]:
            # VRP-SAM's code aligns VGG's maps this way (bilinear, align_corners=True).
            second = F.interpolate(
                second, size=first.shape[-2:], mode="bilinear", align_corners=True
            )
        return torch.cat([first, second], dim=1)

    def _pool_annotation(self, annotation: Tensor, like: Tensor) -> Tensor:
        """The annotation pooled to the spatial size of the ``(B, C, h, w)`` map ``like``."""
        size = (int(like.shape[-2]), int(like.shape[-1]))
        pooled = cast(Tensor, downsample_annotation(annotation, size, self.annotation_pool))
        return pooled.to(like.device, like.dtype)

    def augment(
        self,
        ref_mid: tuple[Tensor, Tensor],
        ref_high: Tensor,
        ref_annotation: Tensor,
        tgt_mid: tuple[Tensor, Tensor],
        tgt_high: Tensor,
        tgt_prior: Tensor | None = None,
    ) -> AugmentedFeatures:
        """The feature augmenter: enhanced reference and target features (see module doc).

        ``tgt_prior``: ``(B, 1, h, w)`` the target prior, read when the source is ``given``.
        """
        ref_cat = self._mid_features(ref_mid, "ref_mid")
        tgt_cat = self._mid_features(tgt_mid, "tgt_mid")
        batch = ref_cat.shape[0]
        if ref_annotation.ndim != 4 or ref_annotation.shape[:2] != (batch, 1):
            raise InputError(
                f"ref_annotation must be ({batch}, 1, H, W), got {tuple(ref_annotation.shape)}"
            )
        if tgt_cat.shape[0] != batch:
            raise InputError(f"target batch {tgt_cat.shape[0]} != reference batch {batch}")
        if ref_high.ndim != 4 or tgt_high.ndim != 4 or ref_high.shape[1] != tgt_high.shape[1]:
            raise InputError(
                f"ref_high {tuple(ref_high.shape)} and tgt_high {tuple(tgt_high.shape)} must be "
                "(B, C, h, w) maps with the same channels"
            )
        if ref_high.shape[0] != batch or tgt_high.shape[0] != batch:
            raise InputError("ref_high and tgt_high must have the reference batch size")

        ref_reduced = F.relu(self.reduce(ref_cat))
        tgt_reduced = F.relu(self.reduce(tgt_cat))
        ref_mask = self._pool_annotation(ref_annotation, ref_reduced)

        if self.pseudo_mask_source == "given":
            if tgt_prior is None or tgt_prior.ndim != 4 or tgt_prior.shape[:2] != (batch, 1):
                raise InputError(f"pseudo_mask_source 'given' needs tgt_prior ({batch}, 1, h, w)")
            pseudo = tgt_prior.to(tgt_reduced)
        elif self.pseudo_mask_source in FROZEN_PRIOR_SOURCES:
            pseudo = frozen_prior(
                self.pseudo_mask_source,
                (ref_mid, ref_high),
                ref_annotation,
                (tgt_mid, tgt_high),
                pool=self.annotation_pool,
                bidirectional=self.bidirectional_prior,
                normalize=self.normalize_pseudo_mask,
            )
        else:
            pseudo = target_pseudo_mask(
                tgt_reduced.detach(),
                ref_reduced.detach(),
                ref_mask,
                normalize=self.normalize_pseudo_mask,
            )
            if self.bidirectional_prior:
                pseudo = pseudo * bidirectional_keep(
                    tgt_reduced.detach(), ref_reduced.detach(), ref_mask
                )
        pseudo = pseudo.to(tgt_reduced.dtype)
        if pseudo.shape[-2:] != tgt_reduced.shape[-2:]:
            pseudo = F.interpolate(
                pseudo, size=tgt_reduced.shape[-2:], mode="bilinear", align_corners=True
            )

        ref_feat = self.dropout(ref_reduced)
        tgt_feat = self.dropout(tgt_reduced)
        prototype = masked_average_pool(ref_feat, ref_mask)
        ref_in = torch.cat(
            [ref_feat, prototype.expand_as(ref_feat), ref_mask * self.mask_scale], dim=1
        )
        tgt_in = torch.cat(
            [tgt_feat, prototype.expand_as(tgt_feat), pseudo * self.mask_scale], dim=1
        )
        return AugmentedFeatures(
            reference=F.relu(self.merge(ref_in)),
            target=F.relu(self.merge(tgt_in)),
            prototype=prototype.flatten(1),
            ref_mask=ref_mask,
            pseudo_mask=pseudo,
        )

    def generate(
        self,
        reference: Tensor,
        target: Tensor,
        prior: Tensor | None = None,
        target_values: Tensor | None = None,
    ) -> Tensor:
        """The prompt generator: ``(B, num_queries, dim)`` prompts from enhanced features.

        ``prior``: the ``(B, 1, h, w)`` pseudo-mask, used when ``prior_attention > 0`` or
        ``prior_keep > 0``;
        ``target_values``: ``(B, dim, h, w)`` values of the target cross-attention in place
        of ``target`` (keys stay ``target``'s).
        """
        ref_tokens, ref_pos = self._tokens(reference)
        tgt_tokens, tgt_pos = self._tokens(target)
        values = tgt_tokens
        if target_values is not None:
            if target_values.shape[-2:] != target.shape[-2:]:
                target_values = F.interpolate(
                    target_values, size=target.shape[-2:], mode="bilinear", align_corners=False
                )
            values = target_values.flatten(2).transpose(1, 2).to(tgt_tokens.dtype)
        q = self.queries.weight[None].expand(reference.shape[0], -1, -1)
        q = self.cross_ref(q, ref_tokens + ref_pos, ref_tokens)
        q = self.ffn_ref(self.self_ref(q, q, q))
        bias = None
        if (self.prior_attention > 0 or self.prior_keep > 0) and prior is not None:
            bias = self._attention_bias(prior, target, q.shape[1])
        q = self.cross_tgt(q, tgt_tokens + tgt_pos, values, bias, residual=self.target_residual)
        return self.ffn_tgt(self.self_tgt(q, q, q))

    def _attention_bias(self, prior: Tensor, like: Tensor, queries: int) -> Tensor:
        """``(B * heads, queries, h * w)`` additive logits from a per-image normalised prior
        (``-inf`` where ``prior_keep`` drops a cell)."""
        if prior.shape[-2:] != like.shape[-2:]:
            prior = F.interpolate(prior, size=like.shape[-2:], mode="bilinear", align_corners=True)
        flat = prior.flatten(1).to(like.dtype)
        lo = flat.amin(dim=1, keepdim=True)
        hi = flat.amax(dim=1, keepdim=True)
        norm = (flat - lo) / (hi - lo + COSINE_EPS)
        flat = self.prior_attention * norm
        if self.prior_keep > 0:
            # A constant prior (nothing to choose by) keeps every cell.
            keep = (norm >= self.prior_keep * (1 - 1e-6)) | (hi - lo <= COSINE_EPS)
            flat = flat.masked_fill(~keep, float("-inf"))
        bias = flat[:, None, None, :].expand(-1, self.num_heads, queries, -1)
        return bias.reshape(-1, queries, flat.shape[1])

    def _tokens(self, features: Tensor) -> tuple[Tensor, Tensor]:
        _, _, h, w = features.shape
        pos = sine_position_encoding(h, w, self.dim, device=features.device, dtype=features.dtype)
        return features.flatten(2).transpose(1, 2), pos[None]

    def forward(
        self,
        ref_mid: tuple[Tensor, Tensor],
        ref_high: Tensor,
        ref_annotation: Tensor,
        tgt_mid: tuple[Tensor, Tensor],
        tgt_high: Tensor,
        tgt_sam: Tensor | None = None,
        tgt_prior: Tensor | None = None,
    ) -> Tensor:
        """Sparse prompt embeddings ``(B, num_queries, dim)``.

        Args:
            ref_mid: the reference's two mid-level maps ``(B, C1, h, w)``, ``(B, C2, h', w')``
                (the second is resized to the first's size when they differ).
            ref_high: the reference's high-level map ``(B, Ch, hh, wh)``.
            ref_annotation: ``(B, 1, H, W)`` annotation in ``[0, 1]`` at any resolution.
            tgt_mid: the target's two mid-level maps.
            tgt_high: the target's high-level map.
            tgt_sam: ``(B, dim, h, w)`` SAM's embedding of the part of the target image the
                backbone saw (needed, and only read, when ``target_values="sam"``).
            tgt_prior: ``(B, 1, h, w)`` the target prior when ``pseudo_mask_source="given"``.
        """
        if self.target_values == "sam" and tgt_sam is None:
            raise InputError("target_values='sam' needs the target's SAM embedding (tgt_sam)")
        aug = self.augment(ref_mid, ref_high, ref_annotation, tgt_mid, tgt_high, tgt_prior)
        values = tgt_sam if self.target_values == "sam" else None
        return self.generate(aug.reference, aug.target, aug.pseudo_mask, values)
