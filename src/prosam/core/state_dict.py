"""Reading weights files safely and loading state dicts strictly (never partially)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from prosam.errors import WeightsError

_MAX_LISTED = 12


def read_weights_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a torch file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise WeightsError(f"{path}: not a valid safetensors file ({err})") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(
            f"{path}: cannot be read as a PyTorch state dict with weights_only=True ({err})"
        ) from err
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: does not hold a state dict of tensors")
    return obj


def _listing(kind: str, items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"{len(items)} {kind}: {shown}{more}"


def load_state_dict_strict(
    module: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    ignore_prefixes: tuple[str, ...] = (),
    source: str = "state dict",
) -> None:
    """Load ``state_dict`` into ``module`` or raise :class:`WeightsError`, never partially.

    A ``module.`` prefix on every key (DataParallel) is stripped, and keys starting with one of
    ``ignore_prefixes`` are dropped. Every other key must exist in ``module`` with the same
    shape, and every key of ``module`` must be present; only BatchNorm ``num_batches_tracked``
    counters (unused in eval mode) may be absent.
    """
    state = dict(state_dict)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if ignore_prefixes:
        state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in state
        if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = [
        _listing(kind, items)
        for kind, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("mis-shaped keys (checkpoint != model)", misshaped),
        )
        if items
    ]
    if problems:
        raise WeightsError(
            f"{source}: its keys do not match {type(module).__name__}: " + "; ".join(problems)
        )
    for key, value in expected.items():
        state.setdefault(key, value)
    with torch.no_grad():
        module.load_state_dict(state, strict=True)
