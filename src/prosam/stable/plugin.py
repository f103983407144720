"""Stable-SAM's plugins for a frozen SAM mask decoder (Fan et al., "Stable Segment Anything").

**DSP (deformable sampling plugin, §4.2).** In the token-to-image cross-attention
(``cross_attn_token_to_image``) of chosen :class:`~segment_anything.modeling.transformer.
TwoWayAttentionBlock` s, keys and values are read from image features resampled at
``p + Δp``. The offset network works on that block's image features ``x`` (``B, C, h, w``):
``1x1 conv -> 5x5 depthwise conv -> LayerNorm (channels) -> GELU -> 1x1 conv (2 channels)``
and ``Δp = s_p * tanh(.)``, ``(dx, dy)`` in **feature cells** (one cell = 16 input pixels for
SAM's 64x64 embedding); ``s_p`` (``offset_scale``, default 2 cells, as in DAT's offset range)
bounds the shift. Cell centre ``j`` is normalised to ``(2 (j + dx) + 1) / w - 1`` and sampled
bilinearly with ``grid_sample(align_corners=False, padding_mode="zeros")``, so zero offsets
land exactly on the cell centres. The last conv starts at zero: ``Δp = 0`` at initialisation.

**Positional encoding.** SAM feeds the attention ``k = x + PE`` and ``v = x``. With
``sample_pe=True`` (default) both are resampled at ``p + Δp``: each deformed key carries the
(bilinearly interpolated) PE of the place its feature came from, so the tokens know where
they read. ``sample_pe=False`` keeps the regular grid's PE (``k = x_deformed + PE(p)``), the
literal reading of the paper's eq. 6 where PE is added inside SAM's attention after mixing.

**DRP (dynamic routing plugin, §4.3).** ``α = softmax(MLP(t_o)) · s`` with a learnable scalar
``s`` (init 1) and ``MLP = Linear(C, C) -> LayerNorm -> GELU -> Linear(C, 2)``. ``t_o`` is the
query of SAM's single-mask output token (token 1, after the block's self-attention, plus
its token embedding), i.e. what that token brings to this cross-attention. As in eq. 6 the
routing mixes the *features*, not two attention outputs: the attention reads
``α1 · x(p + Δp) + α2 · x(p)``, computed as ``s · (x + p1 · (x_def - x))`` with
``p1 = softmax(.)[0]`` (algebraically equal). With ``Δp = 0`` both branches are the same
features, so at initialisation (and whenever ``s = 1`` and offsets vanish) the decoder
equals plain SAM whatever the routing weights; ``routing=False`` drops the DRP and reads
``x(p + Δp)`` only (the "+DSP" ablation).

**Gradients at initialisation.** The zero-initialised last offset conv blocks the gradient
to the earlier offset layers, and since both branches coincide at ``Δp = 0`` the routing MLP
gets (numerically) zero gradient too: only the last offset conv and ``s`` learn on the first
step; every parameter gets a gradient from the second step on.

The plugin is attached by swapping the block's attention for a wrapper that shares the
original projections (SAM's ``state_dict`` keys and values are unchanged while attached) and
calls the original module on the resampled keys and values; :meth:`StablePluginHandle.detach`
puts the original modules back. SAM's own code and weights are never modified.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.transformer import Attention
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from prosam.errors import InputError
from prosam.sam.model import FrozenSam

__all__ = [
    "DEFAULT_BLOCKS",
    "DEFAULT_OFFSET_SCALE",
    "DeformableSampling",
    "OffsetNetwork",
    "PluggedCrossAttention",
    "RoutingMLP",
    "StablePluginHandle",
    "StableSamPlugin",
    "attach_stable_plugin",
    "count_parameters",
    "deformed_grid",
    "detach_stable_plugin",
    "is_attached",
]

DEFAULT_BLOCKS: tuple[int, ...] = (1,)
DEFAULT_OFFSET_SCALE = 2.0  # s_p, in feature cells
MASK_TOKEN_INDEX = 1  # decoder tokens: [iou, mask_0 (single-mask output), mask_1..3, prompts]


def count_parameters(module: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class OffsetNetwork(nn.Module):
    """``1x1 conv -> 5x5 depthwise conv -> LayerNorm -> GELU -> 1x1 conv`` to 2 raw offsets."""

    def __init__(self, dim: int, hidden: int | None = None, kernel_size: int = 5) -> None:
        super().__init__()
        hidden = int(hidden or dim)
        self.proj = nn.Conv2d(dim, hidden, 1)
        self.depthwise = nn.Conv2d(
            hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden
        )
        self.norm = LayerNorm2d(hidden)
        self.act = nn.GELU()
        self.out = nn.Conv2d(hidden, 2, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, h, w)`` features to ``(B, 2, h, w)`` raw offsets (before ``s_p · tanh``)."""
        return self.out(self.act(self.norm(self.depthwise(self.proj(x)))))


class RoutingMLP(nn.Module):
    """DRP: ``softmax(MLP(t_o))`` and the learnable scale ``s`` (eq. 5)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.GELU())
        self.out = nn.Linear(dim, 2)
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, token: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C)`` token to ``(probabilities (B, 2), scale ())``; ``α = p · s``."""
        return torch.softmax(self.out(self.mlp(token)), dim=-1), self.scale


def deformed_grid(offsets: Tensor) -> Tensor:
    """``grid_sample`` grid ``(B, h, w, 2)`` for cell centres moved by ``(B, 2, h, w)`` offsets.

    Offsets are ``(dx, dy)`` in feature cells; the grid uses ``align_corners=False``
    normalisation, so zero offsets give the exact cell centres.
    """
    _, _, h, w = offsets.shape
    xs = torch.arange(w, device=offsets.device, dtype=offsets.dtype)
    ys = torch.arange(h, device=offsets.device, dtype=offsets.dtype)
    gx = (2.0 * (xs[None, None, :] + offsets[:, 0]) + 1.0) / w - 1.0
    gy = (2.0 * (ys[None, :, None] + offsets[:, 1]) + 1.0) / h - 1.0
    return torch.stack([gx, gy], dim=-1)


class DeformableSampling(nn.Module):
    """One block's plugin: offset network (DSP) and, optionally, the routing MLP (DRP)."""

    def __init__(
        self,
        dim: int,
        *,
        offset_scale: float = DEFAULT_OFFSET_SCALE,
        sample_pe: bool = True,
        routing: bool = True,
        offset_hidden: int | None = None,
        route_token: int = MASK_TOKEN_INDEX,
    ) -> None:
        super().__init__()
        self.offset_scale = float(offset_scale)
        self.sample_pe = bool(sample_pe)
        self.route_token = int(route_token)
        self.offset = OffsetNetwork(dim, offset_hidden)
        self.router = RoutingMLP(dim) if routing else None
        self.last_offsets: Tensor | None = None
        self.last_alpha: Tensor | None = None

    def offsets(self, features: Tensor) -> Tensor:
        """``Δp = s_p · tanh(θ_offset(x))``: ``(B, 2, h, w)`` ``(dx, dy)`` in feature cells."""
        return self.offset_scale * torch.tanh(self.offset(features))

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """New ``(keys, values)`` for SAM's token-to-image attention.

        ``q`` ``(B, T, C)`` token queries, ``k = x + PE`` and ``v = x`` ``(B, h*w, C)``.
        """
        b, n, c = v.shape
        h, w = size
        if h * w != n:
            raise InputError(f"image tokens {n} do not match the feature size {h}x{w}")
        features = v.transpose(1, 2).reshape(b, c, h, w)
        offsets = self.offsets(features)
        grid = deformed_grid(offsets)
        src = torch.cat([k, v], dim=-1) if self.sample_pe else v
        sampled = F.grid_sample(
            src.transpose(1, 2).reshape(b, src.shape[-1], h, w),
            grid,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        sampled = sampled.reshape(b, src.shape[-1], n).transpose(1, 2)
        if self.sample_pe:
            k_def, v_def = sampled[..., :c], sampled[..., c:]
        else:
            v_def = sampled
            k_def = v_def + (k - v)  # the regular grid's PE
        self.last_offsets = offsets.detach()
        if self.router is None:
            return k_def, v_def
        probs, scale = self.router(q[:, self.route_token])
        self.last_alpha = (probs * scale).detach()
        p1 = probs[:, :1, None]  # (B, 1, 1)
        # α1·x_def + α2·x = s·(x + p1·(x_def − x)) as α = s·(p1, 1 − p1).
        return scale * (k + p1 * (k_def - k)), scale * (v + p1 * (v_def - v))


class StableSamPlugin(nn.Module):
    """All trainable Stable-SAM parameters: one :class:`DeformableSampling` per patched block.

    Arguments:
      dim: the decoder's transformer width (256 for real SAMs; :meth:`for_sam` reads it).
      blocks: indices of the TwoWayAttentionBlocks to patch (default ``(1,)``, the second).
      offset_scale: ``s_p``, the largest offset in feature cells.
      sample_pe: resample the keys' positional encoding with the features (see module doc).
      routing: use the DRP; without it the attention reads the deformed features only.
      offset_hidden: channels inside the offset network (default ``dim``).
      route_token: index of the decoder token the DRP reads (1: single-mask output token).
    """

    def __init__(
        self,
        dim: int,
        *,
        blocks: Iterable[int] = DEFAULT_BLOCKS,
        offset_scale: float = DEFAULT_OFFSET_SCALE,
        sample_pe: bool = True,
        routing: bool = True,
        offset_hidden: int | None = None,
        route_token: int = MASK_TOKEN_INDEX,
    ) -> None:
        super().__init__()
        block_ids = tuple(sorted({int(i) for i in blocks}))
        if not block_ids or min(block_ids) < 0:
            raise InputError(f"blocks must be non-empty non-negative indices, got {blocks}")
        if not (offset_scale > 0 and math.isfinite(offset_scale)):
            raise InputError(f"offset_scale must be a positive number, got {offset_scale}")
        self.dim = int(dim)
        self.block_ids = block_ids
        self.offset_scale = float(offset_scale)
        self.sample_pe = bool(sample_pe)
        self.routing = bool(routing)
        self.offset_hidden = None if offset_hidden is None else int(offset_hidden)
        self.route_token = int(route_token)
        self.blocks = nn.ModuleDict(
            {
                str(i): DeformableSampling(
                    self.dim,
                    offset_scale=self.offset_scale,
                    sample_pe=self.sample_pe,
                    routing=self.routing,
                    offset_hidden=self.offset_hidden,
                    route_token=self.route_token,
                )
                for i in block_ids
            }
        )

    @classmethod
    def for_sam(cls, sam: FrozenSam | Sam, **options: Any) -> StableSamPlugin:
        """A plugin sized for ``sam``'s mask decoder (options as in the constructor)."""
        model = sam.sam if isinstance(sam, FrozenSam) else sam
        return cls(int(model.mask_decoder.transformer_dim), **options)

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable (see :meth:`from_config`)."""
        return {
            "dim": self.dim,
            "blocks": list(self.block_ids),
            "offset_scale": self.offset_scale,
            "sample_pe": self.sample_pe,
            "routing": self.routing,
            "offset_hidden": self.offset_hidden,
            "route_token": self.route_token,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> StableSamPlugin:
        """Rebuild a plugin from :meth:`config` (extra keys are ignored)."""
        return cls(
            int(config["dim"]),
            blocks=tuple(config["blocks"]),
            offset_scale=float(config["offset_scale"]),
            sample_pe=bool(config.get("sample_pe", True)),
            routing=bool(config.get("routing", True)),
            offset_hidden=config.get("offset_hidden"),
            route_token=int(config.get("route_token", MASK_TOKEN_INDEX)),
        )

    def block(self, index: int) -> DeformableSampling:
        """The plugin of block ``index``."""
        return self.blocks[str(index)]  # type: ignore[return-value]

    def last_routing(self) -> dict[int, Tensor | None]:
        """``α`` ``(B, 2)`` of the last forward pass per block (``None`` without DRP)."""
        return {i: self.block(i).last_alpha for i in self.block_ids}

    def count_parameters(self) -> int:
        """Number of trainable parameters."""
        return count_parameters(self)


@dataclass
class _Context:
    """Per-attachment state shared by the wrappers: the current image-feature size."""

    size: tuple[int, int] | None = None


class PluggedCrossAttention(nn.Module):
    """Stand-in for a block's ``cross_attn_token_to_image`` running the plugin first.

    It registers the original attention's projections as its own children (same names, same
    tensors), so SAM's ``state_dict`` and ``.to()`` behave as before; the plugin and the
    original module are held as plain references, outside SAM's module tree.
    """

    def __init__(self, original: Attention, plugin: DeformableSampling, context: _Context) -> None:
        super().__init__()
        for name, child in original.named_children():
            self.add_module(name, child)
        self.embedding_dim = original.embedding_dim
        self.internal_dim = original.internal_dim
        self.num_heads = original.num_heads
        object.__setattr__(self, "original", original)
        object.__setattr__(self, "plugin", plugin)
        object.__setattr__(self, "context", context)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        size = self.context.size
        if size is None or size[0] * size[1] != k.shape[1]:
            side = math.isqrt(k.shape[1])
            if side * side != k.shape[1]:
                raise InputError("cannot infer the image-feature size of a non-square input")
            size = (side, side)
        k_new, v_new = self.plugin(q, k, v, size)
        return self.original(q, k_new, v_new)


@dataclass
class StablePluginHandle:
    """What :func:`attach_stable_plugin` changed; :meth:`detach` undoes it."""

    sam: Sam
    plugin: StableSamPlugin
    originals: dict[int, nn.Module]
    hook: RemovableHandle
    attached: bool = field(default=True)

    def detach(self) -> None:
        """Put the original attention modules back (idempotent)."""
        if not self.attached:
            return
        layers = self.sam.mask_decoder.transformer.layers
        for i, module in self.originals.items():
            layers[i].cross_attn_token_to_image = module
        self.hook.remove()
        self.attached = False

    def __enter__(self) -> StablePluginHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


def is_attached(sam: FrozenSam | Sam) -> bool:
    """Whether a Stable-SAM plugin is attached to ``sam``'s mask decoder."""
    model = sam.sam if isinstance(sam, FrozenSam) else sam
    return any(
        isinstance(layer.cross_attn_token_to_image, PluggedCrossAttention)
        for layer in model.mask_decoder.transformer.layers
    )


def attached_plugin_digest(sam: FrozenSam | Sam) -> str | None:
    """sha256 over the attached plugin blocks' tensors (``None`` without a plugin), to tell
    outputs decoded with one plugin from another's."""
    model = sam.sam if isinstance(sam, FrozenSam) else sam
    digest = hashlib.sha256()
    found = False
    for i, layer in enumerate(model.mask_decoder.transformer.layers):
        attn = layer.cross_attn_token_to_image
        if isinstance(attn, PluggedCrossAttention):
            found = True
            digest.update(str(i).encode())
            for name, tensor in sorted(attn.plugin.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest() if found else None


def attach_stable_plugin(sam: FrozenSam | Sam, plugin: StableSamPlugin) -> StablePluginHandle:
    """Patch ``sam``'s mask decoder with ``plugin`` (moved to SAM's device); returns a handle.

    Every prediction through the decoder (``Predictor``, ``decode_masks``) then runs
    Stable-SAM until :meth:`StablePluginHandle.detach`. The handle is also a context manager.
    """
    model = sam.sam if isinstance(sam, FrozenSam) else sam
    transformer = model.mask_decoder.transformer
    layers = transformer.layers
    if is_attached(model):
        raise InputError("a Stable-SAM plugin is already attached to this SAM; detach it first")
    if plugin.dim != int(model.mask_decoder.transformer_dim):
        raise InputError(
            f"plugin width {plugin.dim} != SAM decoder width {model.mask_decoder.transformer_dim}"
        )
    bad = [i for i in plugin.block_ids if i >= len(layers)]
    if bad:
        raise InputError(f"blocks {bad} out of range: the decoder has {len(layers)} blocks")
    plugin.to(model.pixel_mean.device)
    context = _Context()

    def record_size(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        emb = args[0] if args else kwargs["image_embedding"]
        context.size = (int(emb.shape[-2]), int(emb.shape[-1]))

    hook = transformer.register_forward_pre_hook(record_size, with_kwargs=True)
    originals: dict[int, nn.Module] = {}
    for i in plugin.block_ids:
        original = layers[i].cross_attn_token_to_image
        originals[i] = original
        layers[i].cross_attn_token_to_image = PluggedCrossAttention(
            original, plugin.block(i), context
        )
    return StablePluginHandle(model, plugin, originals, hook)


def detach_stable_plugin(handle: StablePluginHandle) -> None:
    """Undo :func:`attach_stable_plugin` (same as ``handle.detach()``)."""
    handle.detach()
