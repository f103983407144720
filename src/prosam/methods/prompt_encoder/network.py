"""VRP-SAM and ProSAM as one model: a frozen backbone, a trainable prompt encoder, a frozen SAM.

:class:`PromptNetworkConfig` is everything needed to rebuild a model (it is the JSON half of a
checkpoint); :class:`PromptNetwork` holds the trainable encoder; :func:`decode_prompt_logits`
runs SAM's decoder on prompts for training and inference alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prosam.backbones.base import BackboneFeatures
from prosam.errors import InputError
from prosam.methods.prompt_encoder.encoder import VRPEncoder
from prosam.methods.prompt_encoder.method_prior import METHOD_PRIOR_SOURCES
from prosam.methods.prompt_encoder.variational import (
    PromptDistribution,
    VariationalPromptEncoder,
    sample_prompts,
)
from prosam.methods.similarity import feature_region
from prosam.sam.decode import decode_masks
from prosam.sam.model import FrozenSam
from prosam.sam.predictor import ImageEmbedding

METHOD_KINDS = ("vrp", "prosam")
#: What the target cross-attention reads as values: the enhanced backbone features
#: (VRP-SAM), SAM's embedding of the target, or that plus SAM's positional encoding of
#: each cell (the encoding SAM gives a point prompt there).
TARGET_VALUE_KINDS = ("backbone", "sam", "sam+position")


@dataclass
class PromptNetworkConfig:
    """How a VRP / ProSAM model is built. Defaults follow the papers where they say."""

    method: str = "prosam"
    backbone: str = "efficientnet_lite0"
    backbone_input: int = 512
    dim: int = 256
    num_queries: int = 50
    num_heads: int = 4
    dropout: float = 0.5
    mask_scale: float = 10.0
    annotation_pool: str = "max"
    pseudo_mask_source: str = "high"
    normalize_pseudo_mask: bool = False
    bidirectional_prior: bool = False
    prior_attention: float = 0.0
    target_values: str = "backbone"
    target_residual: bool = True
    prior_keep: float = 0.0
    anchor_points: int = 0
    # ProSAM only
    family: str = "student_t"
    nu: float = 5.0
    n_mode: str = "token"
    samples_train: int = 10
    init_log_sigma: float = -2.0
    init_mu: str = "identity"

    def __post_init__(self) -> None:
        if self.method not in METHOD_KINDS:
            raise InputError(f"method must be one of {METHOD_KINDS}, got {self.method!r}")
        if self.target_values not in TARGET_VALUE_KINDS:
            raise InputError(
                f"target_values must be one of {TARGET_VALUE_KINDS}, got {self.target_values!r}"
            )

        if self.anchor_points < 0:
            raise InputError(f"anchor_points must be >= 0, got {self.anchor_points}")
        if self.anchor_points and self.pseudo_mask_source not in METHOD_PRIOR_SOURCES:
            raise InputError(
                f"anchor points are placed on a method's prior: use pseudo_mask_source in "
                f"{METHOD_PRIOR_SOURCES}, not {self.pseudo_mask_source!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptNetworkConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown model config keys {unknown}")
        return cls(**data)


class PromptNetwork(nn.Module):
    """The trainable part: a VRP encoder, or ProSAM's variational one."""

    def __init__(self, config: PromptNetworkConfig, mid_channels: tuple[int, int]) -> None:
        super().__init__()
        self.config = config
        encoder = VRPEncoder(
            mid_channels,
            config.dim,
            config.num_queries,
            config.num_heads,
            dropout=config.dropout,
            mask_scale=config.mask_scale,
            annotation_pool=config.annotation_pool,  # type: ignore[arg-type]
            pseudo_mask_source=(
                "given"
                if config.pseudo_mask_source in METHOD_PRIOR_SOURCES
                else config.pseudo_mask_source  # type: ignore[arg-type]
            ),
            normalize_pseudo_mask=config.normalize_pseudo_mask,
            bidirectional_prior=config.bidirectional_prior,
            prior_attention=config.prior_attention,
            target_values="backbone" if config.target_values == "backbone" else "sam",
            target_residual=config.target_residual,
            prior_keep=config.prior_keep,
        )
        self.encoder: nn.Module = (
            VariationalPromptEncoder(
                encoder,
                init_log_sigma=config.init_log_sigma,
                init_mu=config.init_mu,  # type: ignore[arg-type]
            )
            if config.method == "prosam"
            else encoder
        )
        if config.anchor_points:
            # the learned tokens join the anchor clicks from nothing (anchors.py)
            self.prompt_gate = nn.Parameter(torch.zeros(()))

    def with_anchors(self, prompts: Tensor, anchors: Tensor | None) -> Tensor:
        """``(..., B, A + Q, D)``: ``(B, A, D)`` anchor prompts before the gated learned
        ``(..., B, Q, D)`` prompts; the prompts unchanged without anchors."""
        if not self.config.anchor_points:
            if anchors is not None:
                raise InputError("this model was built without anchor points")
            return prompts
        if anchors is None:
            raise InputError("this model prompts with anchor clicks: pass its anchors")
        shaped = anchors.to(prompts).expand(*prompts.shape[:-2], *anchors.shape[-2:])
        return torch.cat([shaped, self.prompt_gate * prompts], dim=-2)

    @property
    def needs_method_prior(self) -> bool:
        """Whether :meth:`forward` needs a prior from another method (``tgt_prior``)."""
        return self.config.pseudo_mask_source in METHOD_PRIOR_SOURCES

    @property
    def reads_sam_embedding(self) -> bool:
        """Whether :meth:`forward` needs the target's SAM embedding (``tgt_sam``)."""
        return self.config.target_values != "backbone"

    def target_value_map(
        self, sam: FrozenSam, embedded: ImageEmbedding, grid: tuple[int, int]
    ) -> Tensor | None:
        """The ``tgt_sam`` input for one target (``(1, D, h, w)`` on ``grid``), or ``None``
        when the encoder reads the backbone only."""
        if not self.reads_sam_embedding:
            return None
        with_position = self.config.target_values == "sam+position"
        return target_sam_region(sam, embedded, grid, with_position=with_position)

    def forward(
        self,
        ref: BackboneFeatures,
        ref_annotation: Tensor,
        tgt: BackboneFeatures,
        tgt_sam: Tensor | None = None,
        tgt_prior: Tensor | None = None,
    ) -> Tensor | PromptDistribution:
        """Prompts ``(B, Q, D)`` (VRP) or their distribution (ProSAM).

        ``tgt_sam``: ``(B, D, h, w)`` SAM's embedding of the target image region
        (:func:`target_sam_region`), read when :attr:`reads_sam_embedding`;
        ``tgt_prior``: ``(B, 1, h, w)`` the target prior, read when
        :attr:`needs_method_prior`.
        """
        return self.encoder(
            ref.mid, ref.high, ref_annotation, tgt.mid, tgt.high, tgt_sam, tgt_prior
        )

    def training_prompts(
        self,
        ref: BackboneFeatures,
        ref_annotation: Tensor,
        tgt: BackboneFeatures,
        tgt_sam: Tensor | None = None,
        tgt_prior: Tensor | None = None,
        anchors: Tensor | None = None,
    ) -> Tensor:
        """Prompts to train on: ``(1, B, Q, D)`` for VRP, ``(K, B, Q, D)`` samples for ProSAM
        (``A`` more tokens first with :meth:`with_anchors`'s ``anchors``)."""
        out = self(ref, ref_annotation, tgt, tgt_sam, tgt_prior)
        if isinstance(out, PromptDistribution):
            c = self.config
            prompts = sample_prompts(
                out,
                c.samples_train,
                family=c.family,
                nu=c.nu,  # type: ignore[arg-type]
                n_mode=c.n_mode,
            )  # type: ignore[arg-type]
        else:
            prompts = out[None]
        return self.with_anchors(prompts, anchors)

    def mean_prompts(
        self,
        ref: BackboneFeatures,
        ref_annotation: Tensor,
        tgt: BackboneFeatures,
        tgt_sam: Tensor | None = None,
        tgt_prior: Tensor | None = None,
        anchors: Tensor | None = None,
    ) -> Tensor:
        """Deterministic prompts ``(B, Q, D)``: VRP's, or ProSAM's mean prompt (``A`` more
        tokens first with ``anchors``)."""
        out = self(ref, ref_annotation, tgt, tgt_sam, tgt_prior)
        return self.with_anchors(out.mu if isinstance(out, PromptDistribution) else out, anchors)


def target_sam_region(
    sam: FrozenSam,
    embedded: ImageEmbedding,
    size: tuple[int, int],
    *,
    with_position: bool = False,
) -> Tensor:
    """``(1, D, h, w)``: SAM's embedding of the image itself (padding cropped away), resized
    to the backbone's ``size`` grid, which spans the whole image too; ``with_position`` adds
    SAM's dense positional encoding of the same cells."""
    region = feature_region(embedded.embedding, embedded.geometry)
    if with_position:
        pe = sam.sam.prompt_encoder.get_dense_pe().to(region)
        region = region + feature_region(pe, embedded.geometry)
    return F.interpolate(region[None], size=size, mode="bilinear", align_corners=False)


def decode_prompt_logits(
    sam: FrozenSam, image_embeddings: Tensor, prompts: Tensor, *, chunk: int | None = None
) -> tuple[Tensor, Tensor]:
    """Decode ``(K, B, Q, D)`` prompt sets against ``(B, C, h, w)`` embeddings.

    Returns low-res logits ``(K, B, 1, 4h, 4w)`` and predicted IoUs ``(K, B)``; single-mask
    output, SAM's no-mask dense embedding, as VRP-SAM does.

    ``chunk`` prompt sets go through the decoder together (default: all of them on a GPU,
    one at a time on a CPU, where decoding ten sets in one batch measured twice as slow
    as ten single passes, forward and backward: the batch's image-token tensors outgrow
    the caches).
    """
    k, b = prompts.shape[:2]
    if chunk is None:
        chunk = k if image_embeddings.device.type == "cuda" else 1
    if chunk < 1:
        raise InputError(f"chunk must be at least 1, got {chunk}")
    logits, ious = [], []
    for i in range(b):
        parts = [
            decode_masks(sam.sam, image_embeddings[i : i + 1], prompts[j : j + chunk, i])
            for j in range(0, k, chunk)
        ]
        logits.append(torch.cat([lo for lo, _ in parts]))
        ious.append(torch.cat([iou[:, 0] for _, iou in parts]))
    return torch.stack(logits, 1), torch.stack(ious, 1)
