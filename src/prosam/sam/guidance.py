"""PerSAM's decoder guidance on a frozen SAM, as temporary hooks.

Zhang et al. ("Personalize Segment Anything Model with One Shot") steer SAM's mask decoder
with two signals from the reference:

- *target-guided attention*: in each two-way block's token-to-image cross-attention, a
  location map ``g`` over the image tokens (the sigmoid of the standardised similarity map)
  is added to the attention probabilities, which are normalised again:
  ``A' = softmax(softmax(q k^T / sqrt(d)) + g)``;
- *target-semantic prompting*: the target embedding is added to the decoder's tokens before
  every two-way block and to the queries of the final token-to-image attention.

:func:`guided_decoding` installs both as forward hooks for the duration of a ``with``
block and removes them afterwards: SAM's parameters are never touched and the decoder is
unchanged outside the block. The hooks make the decoder stateful while they are installed,
so one model must not decode other prompts on another thread inside the block.

Where PerSAM's code differs from its description it follows the description: the bias is
added to the tokens only (PerSAM's in-place addition also changes the tokens' positional
copy in the first block), and ``g`` is laid on the padded embedding grid so that a
non-square image's map is not stretched over the padding (padding cells get ``g = 0``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from segment_anything.modeling import Sam
from torch import nn

from prosam.errors import InputError


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def guided_attention(
    attention: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, guide: torch.Tensor
) -> torch.Tensor:
    """SAM's :class:`~segment_anything.modeling.transformer.Attention` with PerSAM's
    guidance: ``softmax(softmax(q k^T / sqrt(d)) + guide)`` over the keys.

    ``guide`` broadcasts against ``(B, heads, N_queries, N_keys)``, usually ``(N_keys,)``.
    """
    heads = int(attention.num_heads)
    qh = _split_heads(attention.q_proj(q), heads)
    kh = _split_heads(attention.k_proj(k), heads)
    vh = _split_heads(attention.v_proj(v), heads)
    logits = qh @ kh.transpose(-2, -1) / math.sqrt(qh.shape[-1])
    probs = torch.softmax(torch.softmax(logits, dim=-1) + guide, dim=-1)
    out = (probs @ vh).transpose(1, 2)
    return attention.out_proj(out.reshape(out.shape[0], out.shape[1], -1))


def attention_guide(similarity: torch.Tensor, valid: tuple[int, int]) -> torch.Tensor:
    """PerSAM's guide map from a ``(h, w)`` similarity map on the padded embedding grid.

    The cells of the top-left ``valid = (rows, cols)`` region (the image) are standardised
    by their own mean and standard deviation and passed through a sigmoid; padding cells
    get 0. Returns ``(h * w,)`` in token order.
    """
    if similarity.ndim != 2:
        raise InputError(f"similarity must be (h, w), got {tuple(similarity.shape)}")
    rows, cols = valid
    if not (0 < rows <= similarity.shape[0] and 0 < cols <= similarity.shape[1]):
        raise InputError(f"valid region {valid} does not fit the grid {tuple(similarity.shape)}")
    region = similarity[:rows, :cols].to(torch.float32)
    std = region.std() if region.numel() > 1 else region.new_tensor(0.0)
    standard = (region - region.mean()) / std.clamp_min(1e-6)
    guide = torch.zeros(similarity.shape, dtype=torch.float32, device=similarity.device)
    guide[:rows, :cols] = torch.sigmoid(standard)
    return guide.flatten()


@contextmanager
def guided_decoding(
    sam: Sam,
    *,
    attention: torch.Tensor | None = None,
    token_bias: torch.Tensor | None = None,
) -> Iterator[None]:
    """Within the block, ``sam.mask_decoder`` runs with PerSAM's guidance.

    Args:
        attention: ``(h * w,)`` guide map over the image tokens (see :func:`attention_guide`),
            applied in every two-way block's token-to-image attention.
        token_bias: ``(C,)`` target embedding added to the tokens before every two-way block
            and to the final attention's queries.
    """
    transformer = sam.mask_decoder.transformer
    blocks = list(transformer.layers)
    handles: list[torch.utils.hooks.RemovableHandle] = []
    if attention is not None:
        tokens = attention.numel()
        guide = attention.reshape(-1).to(sam.pixel_mean.device, torch.float32)

        def attend(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: torch.Tensor
        ) -> torch.Tensor:
            q, k, v = (kwargs[name] for name in ("q", "k", "v"))
            if k.shape[1] != tokens:
                raise InputError(f"attention guide has {tokens} cells, the image {k.shape[1]}")
            return guided_attention(module, q, k, v, guide.to(q.dtype))

        for block in blocks:
            handles.append(
                block.cross_attn_token_to_image.register_forward_hook(attend, with_kwargs=True)
            )
    if token_bias is not None:
        bias = token_bias.reshape(1, 1, -1).to(sam.pixel_mean.device)

        def add_to(name: str):
            def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]):
                kwargs = dict(kwargs)
                kwargs[name] = kwargs[name] + bias.to(kwargs[name].dtype)
                return args, kwargs

            return hook

        for block in blocks:
            handles.append(block.register_forward_pre_hook(add_to("queries"), with_kwargs=True))
        handles.append(
            transformer.final_attn_token_to_image.register_forward_pre_hook(
                add_to("q"), with_kwargs=True
            )
        )
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
