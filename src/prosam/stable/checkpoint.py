"""Saving and loading Stable-SAM plugins (prosam checkpoints: safetensors + JSON)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prosam.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from prosam.errors import WeightsError
from prosam.sam.model import FrozenSam
from prosam.stable.plugin import StableSamPlugin

__all__ = ["METHOD", "load_stable_plugin", "plugin_config", "save_stable_plugin"]

METHOD = "stable-sam"


def plugin_config(plugin: StableSamPlugin, sam: FrozenSam | None) -> dict[str, Any]:
    """Checkpoint config: the plugin's constructor arguments and the SAM it was trained on."""
    config: dict[str, Any] = {"method": METHOD, "plugin": plugin.config()}
    if sam is not None:
        config["sam"] = {
            "name": sam.name,
            "variant": sam.variant,
            "weights_sha256": sam.weights_sha256,
        }
    return config


def save_stable_plugin(
    path: str | os.PathLike[str],
    plugin: StableSamPlugin,
    sam: FrozenSam | None = None,
    *,
    optimizer: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write ``<path>.safetensors`` + ``<path>.json``; ``config`` entries are added to the JSON."""
    full = {**(config or {}), **plugin_config(plugin, sam)}
    state = {k: v for k, v in plugin.state_dict().items()}
    return save_checkpoint(path, Checkpoint(state, full, optimizer, dict(extra or {})))


def load_stable_plugin(
    path: str | os.PathLike[str], sam: FrozenSam | None = None, *, check_sam: bool = True
) -> StableSamPlugin:
    """Rebuild a plugin from a checkpoint written by :func:`save_stable_plugin`.

    With ``sam`` and ``check_sam``, a checkpoint recorded for another SAM (variant or weights
    sha256) is refused; a different decoder width always is.
    """
    from prosam.pretrained import resolve_checkpoint

    path = resolve_checkpoint(path, method="stable")
    ckpt = load_checkpoint(path)
    if ckpt.config.get("method") != METHOD:
        raise WeightsError(f"{path}: not a Stable-SAM plugin checkpoint")
    plugin = StableSamPlugin.from_config(ckpt.config["plugin"])
    if sam is not None:
        dim = int(sam.sam.mask_decoder.transformer_dim)
        if dim != plugin.dim:
            raise WeightsError(f"{path}: plugin width {plugin.dim} != SAM decoder width {dim}")
        recorded = ckpt.config.get("sam")
        if check_sam and recorded:
            mine = {"variant": sam.variant, "weights_sha256": sam.weights_sha256}
            diff = {k: (recorded.get(k), v) for k, v in mine.items() if recorded.get(k) != v}
            if diff:
                raise WeightsError(
                    f"{path}: trained for SAM {recorded.get('name')!r} but this SAM differs "
                    f"({diff}); pass check_sam=False to use it anyway"
                )
    try:
        plugin.load_state_dict(ckpt.model, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"{path}: plugin tensors do not match its config ({err})") from err
    if sam is not None:
        plugin.to(sam.device)
    return plugin
