"""The lower level of CPC-SAM's bi-level optimisation: a small trainable part of SAM's decoder.

SAM's own weights stay frozen and unmodified. An adapter holds only its own parameters and
hands the decoder *parameter overrides* (``name -> tensor``) that
:func:`torch.func.functional_call` substitutes for the frozen ones during one call:

- :class:`TokenOffsets` (``adapter="tokens"``, the default): learnable additive offsets on the
  decoder's output tokens, ``iou_token + δ_iou`` and ``mask_tokens + δ_mask``
  (``(1 + 4) · D`` parameters: 1,280 for real SAMs), zero at the start;
- :class:`DecoderLoRA` (``adapter="lora"``): rank-r LoRA on the ``q_proj`` / ``v_proj``
  projections of every attention of the decoder's two-way transformer,
  ``W + (alpha / r) · B A`` with ``B = 0`` at the start.

Both start as the identity, so an untrained adapter decodes exactly as the frozen SAM does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from prosam.errors import InputError
from prosam.sam.decode import no_mask_dense_embedding
from prosam.sam.model import FrozenSam

ADAPTERS = ("tokens", "lora", "none")


class DecoderAdapter(nn.Module):
    """Trainable parameters applied to SAM's mask decoder as parameter overrides."""

    def __init__(self, sam: FrozenSam) -> None:
        super().__init__()
        # A plain list, so SAM's parameters are not registered as this module's.
        self._decoder: list[nn.Module] = [sam.mask_decoder]

    @property
    def decoder(self) -> nn.Module:
        return self._decoder[0]

    def overrides(self) -> dict[str, Tensor]:
        """Decoder parameter name -> the tensor to use instead of the frozen one."""
        raise NotImplementedError


class TokenOffsets(DecoderAdapter):
    """Additive offsets on the mask decoder's IoU token and mask tokens."""

    def __init__(self, sam: FrozenSam) -> None:
        super().__init__(sam)
        dec = sam.mask_decoder
        self.iou_offset = nn.Parameter(torch.zeros_like(dec.iou_token.weight))
        self.mask_offset = nn.Parameter(torch.zeros_like(dec.mask_tokens.weight))

    def overrides(self) -> dict[str, Tensor]:
        dec = self.decoder
        return {
            "iou_token.weight": dec.iou_token.weight + self.iou_offset,
            "mask_tokens.weight": dec.mask_tokens.weight + self.mask_offset,
        }


class DecoderLoRA(DecoderAdapter):
    """Rank-``rank`` LoRA on the named projections of the decoder transformer's attentions.

    ``A`` starts ``U(-1/sqrt(in), 1/sqrt(in))`` (PyTorch's Linear default), ``B`` at zero,
    scale ``alpha / rank`` (``alpha`` defaults to ``rank``: scale 1).
    """

    def __init__(
        self,
        sam: FrozenSam,
        rank: int = 4,
        *,
        alpha: float | None = None,
        targets: Sequence[str] = ("q_proj", "v_proj"),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(sam)
        if rank < 1:
            raise InputError(f"LoRA rank must be >= 1, got {rank}")
        self.scale = (float(rank) if alpha is None else float(alpha)) / rank
        self.names: list[str] = []
        self.lora_a = nn.ParameterList()
        self.lora_b = nn.ParameterList()
        for name, mod in sam.mask_decoder.transformer.named_modules():
            if isinstance(mod, nn.Linear) and name.split(".")[-1] in targets:
                w = mod.weight
                bound = 1.0 / math.sqrt(w.shape[1])
                a = torch.rand(rank, w.shape[1], generator=generator) * 2 * bound - bound
                self.lora_a.append(nn.Parameter(a.to(w)))
                self.lora_b.append(nn.Parameter(torch.zeros(w.shape[0], rank).to(w)))
                self.names.append(f"transformer.{name}.weight")
        if not self.names:
            raise InputError(f"no decoder Linear named {list(targets)} to put LoRA on")

    def overrides(self) -> dict[str, Tensor]:
        params = dict(self.decoder.named_parameters())
        return {
            name: params[name] + self.scale * (b @ a)
            for name, a, b in zip(self.names, self.lora_a, self.lora_b, strict=True)
        }


def build_adapter(
    kind: str, sam: FrozenSam, *, lora_rank: int = 4, seed: int = 0
) -> DecoderAdapter | None:
    """``"tokens"`` -> :class:`TokenOffsets`, ``"lora"`` -> :class:`DecoderLoRA`, ``"none"``."""
    if kind == "tokens":
        return TokenOffsets(sam)
    if kind == "lora":
        return DecoderLoRA(sam, lora_rank, generator=torch.Generator().manual_seed(seed))
    if kind == "none":
        return None
    raise InputError(f"adapter must be one of {ADAPTERS}, got {kind!r}")


def decode_sets(
    sam: FrozenSam,
    image_embedding: Tensor,
    sparse: Tensor,
    adapter: DecoderAdapter | None = None,
    *,
    detach_adapter: bool = False,
) -> tuple[Tensor, Tensor]:
    """Decode ``(N, T, D)`` prompt sets against one ``(1, C, h, w)`` image embedding.

    SAM's no-mask dense embedding, single-mask output; the adapter's overrides replace the
    frozen decoder parameters (constants when ``detach_adapter``). Returns low-res logits
    ``(N, 1, 4h, 4w)`` and predicted IoUs ``(N,)``.
    """
    if image_embedding.ndim != 4 or image_embedding.shape[0] != 1:
        raise InputError(f"expected one (1, C, h, w) embedding, got {tuple(image_embedding.shape)}")
    size = image_embedding.shape[-2:]
    kwargs = {
        "image_embeddings": image_embedding,
        "image_pe": sam.prompt_encoder.get_dense_pe(),
        "sparse_prompt_embeddings": sparse,
        "dense_prompt_embeddings": no_mask_dense_embedding(
            sam.sam, sparse.shape[0], (size[0], size[1])
        ),
        "multimask_output": False,
    }
    if adapter is None:
        logits, iou = sam.mask_decoder(**kwargs)
    else:
        overrides = adapter.overrides()
        if detach_adapter:
            overrides = {k: v.detach() for k, v in overrides.items()}
        logits, iou = torch.func.functional_call(sam.mask_decoder, overrides, (), kwargs)
    return logits, iou[:, 0]
