"""Differentiable mask decoding with a frozen SAM.

Gradients flow through the frozen prompt-free parts of the decoder into whatever sparse
(and dense) prompt embeddings the caller passes; SAM's own parameters stay frozen.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import Sam

from prosam.errors import InputError


def no_mask_dense_embedding(sam: Sam, batch: int, size: tuple[int, int]) -> torch.Tensor:
    """SAM's "no mask" dense embedding broadcast to ``(batch, C, h, w)``."""
    weight = sam.prompt_encoder.no_mask_embed.weight  # (1, C)
    return weight.reshape(1, -1, 1, 1).expand(batch, -1, size[0], size[1])


def decode_masks(
    sam: Sam,
    image_embeddings: torch.Tensor,
    sparse_embeddings: torch.Tensor,
    dense_embeddings: torch.Tensor | None = None,
    *,
    multimask_output: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run SAM's mask decoder on prompt embeddings.

    Arguments:
      image_embeddings: ``(B, C, h, w)`` from the image encoder, or ``(1, C, h, w)`` shared
        by every prompt set.
      sparse_embeddings: ``(B, N, C)`` prompt tokens (points, boxes, or learned tokens).
      dense_embeddings: ``(B, C, h, w)``; SAM's no-mask embedding when omitted.

    Returns ``(low_res_logits (B, M, 4h, 4w), iou_predictions (B, M))`` with ``M`` = 3 when
    ``multimask_output`` else 1.
    """
    batch = sparse_embeddings.shape[0]
    size = image_embeddings.shape[-2:]
    if dense_embeddings is None:
        dense_embeddings = no_mask_dense_embedding(sam, batch, (size[0], size[1]))
    image_pe = sam.prompt_encoder.get_dense_pe()
    if image_embeddings.shape[0] == batch and batch > 1:
        # The decoder repeats one image embedding per prompt set; with one embedding per
        # prompt set, decode them one at a time so each set sees its own image.
        outputs = [
            sam.mask_decoder(
                image_embeddings=image_embeddings[i : i + 1],
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse_embeddings[i : i + 1],
                dense_prompt_embeddings=dense_embeddings[i : i + 1],
                multimask_output=multimask_output,
            )
            for i in range(batch)
        ]
        return torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])
    if image_embeddings.shape[0] != 1:
        raise InputError(
            f"image_embeddings batch {image_embeddings.shape[0]} must be 1 or match the "
            f"{batch} prompt sets"
        )
    return sam.mask_decoder(
        image_embeddings=image_embeddings,
        image_pe=image_pe,
        sparse_prompt_embeddings=sparse_embeddings,
        dense_prompt_embeddings=dense_embeddings,
        multimask_output=multimask_output,
    )
