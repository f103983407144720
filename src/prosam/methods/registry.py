"""Methods by name, so the CLI and benchmarks can build any of them the same way."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prosam.errors import InputError
from prosam.methods.base import ReferenceMethod
from prosam.sam.model import FrozenSam


def _persam(model: FrozenSam, checkpoint: str | None, **options: Any) -> ReferenceMethod:
    from prosam.methods.persam import PerSAM

    _no_checkpoint("persam", checkpoint)
    return PerSAM(model, **options)


def _geometric(
    model: FrozenSam,
    checkpoint: str | None,
    *,
    backbone: str | None = None,
    level: str = "high",
    backbone_input: int = 512,
    **options: Any,
) -> ReferenceMethod:
    """GP-SAM; ``backbone`` (e.g. ``efficientnet_lite0``) takes the prior from a semantic
    backbone's ``level`` (``high`` or ``mid1``) instead of SAM's own embeddings."""
    from prosam.methods.geometric import GeometricPrompts

    _no_checkpoint("geometric", checkpoint)
    if backbone is not None:
        options["features"] = backbone_feature_fn(backbone, level, backbone_input, model)
    return GeometricPrompts(model, **options)


def backbone_feature_fn(
    name: str, level: str, size: int, model: FrozenSam
) -> Callable[[Any, Any], Any]:
    """``fn(image, embedded) -> (C, h, w)``: one level of a frozen backbone's features."""
    from prosam.backbones import build_backbone
    from prosam.methods.prompt_encoder.network import backbone_features

    if level not in ("high", "mid0", "mid1"):
        raise InputError(f"level must be high, mid0 or mid1, got {level!r}")
    net = build_backbone(name).to(model.device)

    def features(image: Any, embedded: Any) -> Any:
        f = backbone_features(net, image, size)
        return (f.high if level == "high" else f.mid[int(level[-1])])[0]

    return features


def _trained(kind: str) -> Callable[..., ReferenceMethod]:
    def build(model: FrozenSam, checkpoint: str | None, **options: Any) -> ReferenceMethod:
        from prosam.methods.prompt_encoder.loading import load_prompt_method
        from prosam.pretrained import PRETRAINED, default_checkpoint

        if checkpoint is None:
            checkpoint = default_checkpoint(kind, model.name)
        if checkpoint is None:
            names = ", ".join(n for n, c in PRETRAINED.items() if c.method == kind)
            raise InputError(
                f"method {kind!r} needs --checkpoint: a `prosam train` output or a bundled "
                f"name ({names}); none is bundled for SAM {model.name!r}"
            )
        return load_prompt_method(checkpoint, model, expected_method=kind, **options)

    return build


def _no_checkpoint(name: str, checkpoint: str | os.PathLike[str] | None) -> None:
    if checkpoint is not None:
        raise InputError(f"method {name!r} is training-free and takes no checkpoint")


def _cpc(kind: str) -> Callable[..., ReferenceMethod]:
    def build(model: FrozenSam, checkpoint: str | None, **options: Any) -> ReferenceMethod:
        from prosam.methods.cpc import build_cpc

        return build_cpc(kind, model, prompt_source=checkpoint or "sam", **options)

    return build


METHODS: dict[str, Callable[..., ReferenceMethod]] = {
    "persam": _persam,
    "geometric": _geometric,
    "vrp": _trained("vrp"),
    "prosam": _trained("prosam"),
    "cpc": _cpc("cpc"),
    "cpc_uniform": _cpc("cpc_uniform"),
    "cpc_best_single": _cpc("cpc_best_single"),
}


def build_method(
    name: str, model: FrozenSam, *, checkpoint: str | None = None, **options: Any
) -> ReferenceMethod:
    """Build the method called ``name`` on a frozen SAM (with its checkpoint, if trained)."""
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    try:
        return METHODS[name](model, checkpoint, **options)
    except TypeError as err:
        if "unexpected keyword" not in str(err):
            raise
        raise InputError(f"method {name!r}: {err}") from err
