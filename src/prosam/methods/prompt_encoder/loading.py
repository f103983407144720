"""Rebuilding a trained VRP / ProSAM method from its checkpoint."""

from __future__ import annotations

import os
from typing import Any

from prosam.backbones import build_backbone
from prosam.core.checkpoint import load_checkpoint
from prosam.core.state_dict import load_state_dict_strict
from prosam.errors import InputError, WeightsError
from prosam.methods.prompt_encoder.method import PromptEncoderMethod
from prosam.methods.prompt_encoder.network import PromptNetwork, PromptNetworkConfig
from prosam.sam.model import FrozenSam


def load_prompt_network(
    checkpoint: str | os.PathLike[str], *, expected_method: str | None = None
) -> tuple[PromptNetwork, dict[str, Any]]:
    """The trained prompt network of a checkpoint (a path or a bundled name), loaded strictly,
    and the checkpoint config."""
    from prosam.pretrained import resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint, method=expected_method)
    ckpt = load_checkpoint(checkpoint)
    if "model" not in ckpt.config:
        raise WeightsError(f"{checkpoint}: no model config in the checkpoint")
    config = PromptNetworkConfig.from_dict(ckpt.config["model"])
    if expected_method is not None and config.method != expected_method:
        raise WeightsError(f"{checkpoint} holds a {config.method!r} model, not {expected_method!r}")
    mid = tuple(ckpt.config.get("backbone_mid_channels", ()))
    if len(mid) != 2:
        raise WeightsError(f"{checkpoint}: config lacks backbone_mid_channels")
    model = PromptNetwork(config, (int(mid[0]), int(mid[1])))
    load_state_dict_strict(model, ckpt.model, source=f"{config.method} checkpoint {checkpoint}")
    return model.eval(), ckpt.config


def load_prompt_encoder_method(
    checkpoint: str | os.PathLike[str],
    sam: FrozenSam,
    *,
    expected_method: str | None = None,
    backbone_checkpoint: str | None = None,
    **options: Any,
) -> PromptEncoderMethod:
    """A ready-to-use :class:`PromptEncoderMethod` from a checkpoint written by ``prosam train``."""
    model, config = load_prompt_network(checkpoint, expected_method=expected_method)
    if int(config.get("sam_embed_dim", sam.embed_dim)) != sam.embed_dim:
        raise WeightsError(
            f"{checkpoint} was trained for {config.get('sam_embed_dim')}-d SAM prompts, "
            f"but {sam.name} uses {sam.embed_dim}"
        )
    backbone = build_backbone(model.config.backbone, weights=backbone_checkpoint)
    return PromptEncoderMethod(sam, backbone.to(sam.device), model.to(sam.device), **options)


def build_trained(
    kind: str, model: FrozenSam, checkpoint: str | os.PathLike[str] | None = None, **options: Any
) -> PromptEncoderMethod:
    """A ``vrp`` or ``prosam`` method from ``checkpoint``, or from the one bundled for the SAM."""
    from prosam.pretrained import PRETRAINED, default_checkpoint

    if checkpoint is None:
        checkpoint = default_checkpoint(kind, model.name)
    if checkpoint is None:
        names = ", ".join(n for n, c in PRETRAINED.items() if c.method == kind)
        raise InputError(
            f"method {kind!r} needs --checkpoint: a `prosam train` output or a bundled "
            f"name ({names}); none is bundled for SAM {model.name!r}"
        )
    return load_prompt_encoder_method(checkpoint, model, expected_method=kind, **options)


def build_vrp(
    model: FrozenSam, checkpoint: str | os.PathLike[str] | None = None, **options: Any
) -> PromptEncoderMethod:
    """VRP-SAM (the registry's ``vrp``)."""
    return build_trained("vrp", model, checkpoint, **options)


def build_prosam(
    model: FrozenSam, checkpoint: str | os.PathLike[str] | None = None, **options: Any
) -> PromptEncoderMethod:
    """ProSAM (the registry's ``prosam``)."""
    return build_trained("prosam", model, checkpoint, **options)
