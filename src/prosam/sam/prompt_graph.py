"""SAM's prompt encoder and mask decoder as one traceable module, for export to ONNX.

:class:`PromptDecoderGraph` computes what ``sam.prompt_encoder`` followed by
``sam.mask_decoder`` compute, from plain tensors only, so that ``torch.onnx.export`` can
trace it with a dynamic number of prompt sets and of points:

- ``coords (B, N, 2)``: point coordinates in the encoder's input frame (what
  :func:`prosam.sam.transforms.transform_coords` returns); a box is two more points, its
  corners, with labels 2 and 3.
- ``labels (B, N)`` float: 1 foreground, 0 background, 2 / 3 box corners, -1 SAM's
  "not a point" padding (SAM pads every point prompt without a box with one).
- ``mask_input (B, 1, 4h, 4w)`` low-res logits and ``has_mask (1,)``: 1 to use them, 0 for
  SAM's "no mask" embedding.

It returns every mask token's output, ``low_res (B, 4, 4h, 4w)`` and ``iou (B, 4)``; the
caller keeps ``[:, 1:]`` for SAM's three multimask candidates or ``[:, :1]`` for one.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import Sam
from torch import nn

#: The graph's inputs and outputs, in order, as named in its ONNX export.
INPUT_NAMES = ("image_embeddings", "coords", "labels", "mask_input", "has_mask")
OUTPUT_NAMES = ("low_res", "iou")


class PromptDecoderGraph(nn.Module):
    """``sam``'s prompt encoder + mask decoder over plain tensors (see the module doc)."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.input_size = int(sam.image_encoder.img_size)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        coords: torch.Tensor,
        labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = self.prompt_encoder
        size = self.input_size
        # SAM embeds each pixel's centre
        pe = encoder.pe_layer.forward_with_coords(coords + 0.5, (size, size))  # (B, N, C)
        labels = labels.unsqueeze(-1)
        padding = (labels == -1).to(pe.dtype)
        sparse = pe * (1 - padding) + encoder.not_a_point_embed.weight * padding
        for k, embedding in enumerate(encoder.point_embeddings):
            sparse = sparse + embedding.weight * (labels == k).to(pe.dtype)
        has = has_mask.reshape(1, 1, 1, 1).to(pe.dtype)
        dense = encoder.mask_downscaling(mask_input) * has + (
            1 - has
        ) * encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )


def graph_prompts(
    coords: torch.Tensor | None,
    labels: torch.Tensor | None,
    box: torch.Tensor | None,
    mask_input: torch.Tensor | None,
    mask_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One prompt set as the graph's ``coords, labels, mask_input, has_mask`` (batch 1).

    ``coords (N, 2)`` and ``box (4,)`` are in the encoder's input frame; as SAM's prompt
    encoder does, points without a box get one "not a point" pad, a box becomes its two
    corners (labels 2 and 3)."""
    parts, kinds = [], []
    if coords is not None and labels is not None:
        parts.append(coords.reshape(-1, 2).float())
        kinds.append(labels.reshape(-1).float())
    if box is not None:
        parts.append(box.reshape(2, 2).float())
        kinds.append(torch.tensor([2.0, 3.0]))
    elif parts:
        parts.append(torch.zeros(1, 2))
        kinds.append(torch.tensor([-1.0]))
    if not parts:
        raise ValueError("the graph needs at least one point or a box")
    has_mask = torch.tensor([0.0 if mask_input is None else 1.0])
    mask = torch.zeros(1, 1, *mask_size) if mask_input is None else mask_input.float()
    return torch.cat(parts)[None], torch.cat(kinds)[None], mask.reshape(1, 1, *mask_size), has_mask
