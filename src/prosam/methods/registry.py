"""Every method by name: one table of specs, from which the CLI's ``--method`` choices and
help, the bulk-labelling API and the registry-wide tests are all generated.

A spec's builder is imported only when the method is built, so listing methods (``prosam
--help``) loads no model code. Adding a training-free method is its module plus one
:func:`register_method` call below (see ``docs/architecture.md``).
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prosam.errors import InputError
from prosam.methods.capabilities import (
    CAPABILITIES,
    INSTANCES,
    MULTI_ENTITY,
    PROMPT_NOISE,
    UNCERTAINTY,
)

if TYPE_CHECKING:
    from prosam.methods.base import ReferenceMethod
    from prosam.sam.model import FrozenSam

#: ``build(model, checkpoint, **options) -> ReferenceMethod``.
Builder = Callable[..., "ReferenceMethod"]


@dataclass(frozen=True)
class MethodSpec:
    """One registered method.

    ``builder`` is ``"module:callable"``, imported on first use: a class or function called
    as ``builder(model, **options)``, plus ``checkpoint=`` when the method takes one.
    ``trained``: the method needs a checkpoint (``prosam train`` writes one; the builder
    falls back on the one bundled for the SAM). ``takes_checkpoint``: it accepts one (all
    trained methods; CPC-SAM optionally takes a prompt encoder's). ``capabilities``: what
    the built method declares beyond ``fit`` / ``predict`` (names from
    :data:`prosam.methods.capabilities.CAPABILITIES`). ``presence_threshold``: the score
    below which ``prosam label`` says "not in this image" by default, for a method whose
    score was calibrated as a presence score (``None``: its score says nothing about
    presence, and only empty masks and specks are dropped).
    """

    name: str
    builder: str
    summary: str
    trained: bool = False
    takes_checkpoint: bool = False
    capabilities: frozenset[str] = frozenset()
    presence_threshold: float | None = None
    options_from: str | None = None
    """``"module:callable"`` whose keyword parameters are the method's options, where the
    builder only passes ``**options`` on (default: the builder itself)."""

    def __post_init__(self) -> None:
        if self.trained:
            object.__setattr__(self, "takes_checkpoint", True)

    def build(
        self, model: FrozenSam, checkpoint: str | os.PathLike[str] | None = None, **options: Any
    ) -> ReferenceMethod:
        """The method, built on ``model`` (with ``checkpoint`` where it takes one)."""
        module, _, attr = self.builder.partition(":")
        build: Builder = getattr(importlib.import_module(module), attr)
        if self.takes_checkpoint:
            return build(model, checkpoint=checkpoint, **options)
        if checkpoint is not None:
            raise InputError(f"method {self.name!r} is training-free and takes no checkpoint")
        return build(model, **options)


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the registry (a name can be registered once)."""
    if spec.name in _REGISTRY:
        raise InputError(f"method {spec.name!r} is already registered")
    unknown = set(spec.capabilities) - set(CAPABILITIES)
    if unknown:
        raise InputError(f"method {spec.name!r}: unknown capabilities {sorted(unknown)}")
    if ":" not in spec.builder:
        raise InputError(f"method {spec.name!r}: builder must be 'module:function'")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Remove a registered method (for tests and plug-ins that replace one)."""
    _REGISTRY.pop(name, None)


def list_methods(*, trained: bool | None = None) -> list[MethodSpec]:
    """The registered methods in registration order (only trained or training-free ones
    when ``trained`` is given)."""
    return [s for s in _REGISTRY.values() if trained is None or s.trained == trained]


def method_names(*, trained: bool | None = None) -> list[str]:
    """The names of :func:`list_methods`."""
    return [s.name for s in list_methods(trained=trained)]


def get_method(name: str) -> MethodSpec:
    """The spec called ``name``, or an :class:`InputError` naming the choices."""
    if name not in _REGISTRY:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def methods_help() -> str:
    """One line per method for ``--method`` help texts."""
    return "; ".join(f"{s.name}: {s.summary}" for s in list_methods())


def _resolve(target: str) -> Callable[..., Any]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def method_parameters(name: str) -> dict[str, inspect.Parameter] | None:
    """The keyword options method ``name`` takes, with their defaults: the builder's own,
    and, where it passes ``**options`` on, those of the class it returns (and of that
    class's parent, where the class passes them on again). ``None`` where they cannot be
    told (a builder passing ``**options`` to something unnamed)."""
    spec = get_method(name)
    found: dict[str, inspect.Parameter] = {}
    queue: list[Any] = [_resolve(spec.options_from or spec.builder)]
    while queue:
        target = queue.pop(0)
        passes_on = False
        signature = inspect.signature(target)
        for param in signature.parameters.values():
            if param.kind is param.VAR_KEYWORD:
                passes_on = True
            elif param.kind is param.KEYWORD_ONLY or (
                param.kind is param.POSITIONAL_OR_KEYWORD and param.default is not param.empty
            ):
                found.setdefault(param.name, param)
        if not passes_on:
            continue
        if inspect.isclass(target):
            parent = target.__mro__[1]
            if parent is object:
                return None
            queue.append(parent)
            continue
        returned = signature.return_annotation
        cls = getattr(inspect.getmodule(target), str(returned).strip("'\""), None)
        if not inspect.isclass(cls):
            return None
        queue.append(cls)
    found.pop("checkpoint", None)
    return found


def _type_error(key: str, value: Any, default: Any) -> str | None:
    """Why ``value`` cannot stand for an option whose default is ``default`` (``None``: it
    can)."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else "an integer"
    if isinstance(default, float):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if number and math.isfinite(value) else "a finite number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "text"
    if isinstance(default, (tuple, list)):
        return None if isinstance(value, (tuple, list)) else "a JSON list"
    return None


def check_method_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` if method ``name`` takes each of them with a value of the right kind,
    else a one-line :class:`InputError` naming the valid options; cheap (no model is built),
    so commands check before loading SAM. Ranges are checked when the method is built."""
    params = method_parameters(name)
    if params is None:
        return options
    for key, value in options.items():
        if key not in params:
            valid = ", ".join(sorted(params)) or "none"
            raise InputError(f"method {name!r} has no option {key!r}; its options: {valid}")
        default = params[key].default
        if default is inspect.Parameter.empty or default is None:
            continue
        wanted = _type_error(key, value, default)
        if wanted is not None:
            raise InputError(f"method {name!r}: {key} must be {wanted}, got {value!r}")
    return options


def build_method(
    name: str, model: FrozenSam, *, checkpoint: str | None = None, **options: Any
) -> ReferenceMethod:
    """Build the method called ``name`` on a frozen SAM (with its checkpoint, if trained).

    Unknown options are an :class:`InputError` naming the method, not a ``TypeError``.
    """
    spec = get_method(name)
    check_method_options(name, options)
    try:
        return spec.build(model, checkpoint, **options)
    except TypeError as err:
        if "unexpected keyword" not in str(err):
            raise
        raise InputError(f"method {name!r}: {err}") from err
    except InputError as err:
        raise InputError(f"method {name!r}: {err}") from None


for _spec in (
    MethodSpec(
        "persam",
        "prosam.methods.persam:PerSAM",
        "PerSAM, training-free: a SAM-feature prior, two clicks, target-guided attention",
    ),
    MethodSpec(
        "persam_lite",
        "prosam.methods.persam:build_persam_lite",
        "PerSAM's prior and two clicks on a stock decoder (no attention guidance)",
    ),
    MethodSpec(
        "persam_f",
        "prosam.methods.persam_f:PerSAMF",
        "PerSAM-F: PerSAM with two mask-scale weights fitted on the reference",
    ),
    MethodSpec(
        "matcher",
        "prosam.methods.matching.method:build_matcher",
        "Matcher / GF-SAM style, training-free: semantic patch matching, every instance",
        capabilities=frozenset({INSTANCES}),
        # the balanced-accuracy threshold of its presence score on the coco-mini validation
        # episodes with absent targets
        # (benchmarks/reports/features/empty-calibration-matcher-lite02ms.md)
        presence_threshold=0.3989,
    ),
    MethodSpec(
        "matcher_fast",
        "prosam.methods.matching.method:build_matcher_fast",
        "matcher on one backbone (EfficientNet-Lite0) at one size: about 2x faster",
        capabilities=frozenset({INSTANCES}),
        # (benchmarks/reports/empty-calibration-matcher.md)
        presence_threshold=0.3564,
    ),
    MethodSpec(
        "gfsam",
        "prosam.methods.matching.gfsam:build_gfsam",
        "GF-SAM style, training-free: many clicks, a point-mask graph, mask growth",
        capabilities=frozenset({INSTANCES}),
        # matcher_fast's presence score (the same signals and features), so its threshold
        presence_threshold=0.3564,
    ),
    MethodSpec(
        "geometric",
        "prosam.methods.geometric:build_geometric",
        "GP-SAM, training-free: a prior mask prompted as a box and points",
    ),
    MethodSpec(
        "vrp",
        "prosam.methods.prompt_encoder.loading:build_vrp",
        "VRP-SAM, a trained visual reference prompt encoder",
        trained=True,
        capabilities=frozenset({PROMPT_NOISE}),
    ),
    MethodSpec(
        "prosam",
        "prosam.methods.prompt_encoder.loading:build_prosam",
        "ProSAM, a trained variational prompt encoder (Student-t prompts)",
        trained=True,
        capabilities=frozenset({PROMPT_NOISE, UNCERTAINTY}),
    ),
    MethodSpec(
        "cpc",
        "prosam.methods.cpc.method:build_cpc_sam",
        "CPC-SAM, causal calibration of many prompts, several entities at once",
        takes_checkpoint=True,
        capabilities=frozenset({MULTI_ENTITY}),
    ),
    MethodSpec(
        "cpc_uniform",
        "prosam.methods.cpc.method:build_cpc_uniform",
        "CPC-SAM's prompt sets with uniform weights (ablation)",
        takes_checkpoint=True,
        capabilities=frozenset({MULTI_ENTITY}),
    ),
    MethodSpec(
        "cpc_best_single",
        "prosam.methods.cpc.method:build_cpc_best_single",
        "CPC-SAM's single best prompt set (ablation)",
        takes_checkpoint=True,
        capabilities=frozenset({MULTI_ENTITY}),
    ),
):
    register_method(_spec)
