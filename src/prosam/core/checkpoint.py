"""Checkpoints as safetensors (every tensor) + JSON (config and everything else).

Nothing is pickled: optimizer states are split into their tensors, stored in the
safetensors file, and their plain-Python structure, stored in the JSON file. The JSON also
records the sha256 of the tensor file, checked on load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from prosam.core.files import sha256_file
from prosam.errors import WeightsError
from prosam.io import atomic_path, write_bytes_atomic

FORMAT = "prosam-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """What a checkpoint holds."""

    model: dict[str, torch.Tensor]
    config: dict[str, Any]
    optimizer: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def checkpoint_files(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(tensors, config)`` files of a checkpoint given by stem or either file."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        plain_state[str(pid)] = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                key = f"optimizer.{pid}.{name}"
                tensors[key] = value.detach().cpu().contiguous()
                plain_state[str(pid)][name] = {"tensor": key}
            else:
                plain_state[str(pid)][name] = value
    return tensors, {"state": plain_state, "param_groups": state["param_groups"]}


def _join_optimizer(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, entries in plain["state"].items():
        state[int(pid)] = {
            name: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
            for name, v in entries.items()
        }
    return {"state": state, "param_groups": plain["param_groups"]}


def save_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` atomically; returns the tensor path."""
    tensor_path, json_path = checkpoint_files(path)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in checkpoint.model.items()}
    optimizer_plain = None
    if checkpoint.optimizer is not None:
        opt_tensors, optimizer_plain = _split_optimizer(checkpoint.optimizer)
        tensors.update(opt_tensors)
    with atomic_path(tensor_path) as tmp:
        save_file(tensors, str(tmp))
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "config": checkpoint.config,
        "optimizer": optimizer_plain,
        "extra": checkpoint.extra,
        "tensors_sha256": sha256_file(tensor_path),
    }
    write_bytes_atomic(json_path, json.dumps(doc, indent=1).encode())
    return tensor_path


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying its tensor hash."""
    tensor_path, json_path = checkpoint_files(path)
    if not (tensor_path.is_file() and json_path.is_file()):
        raise WeightsError(
            f"{path}: a checkpoint needs both {tensor_path.name} and {json_path.name}"
        )
    try:
        doc = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"{json_path}: unreadable checkpoint config ({err})") from err
    if doc.get("format") != FORMAT:
        raise WeightsError(f"{json_path}: not a prosam checkpoint")
    if sha256_file(tensor_path) != doc.get("tensors_sha256"):
        raise WeightsError(f"{tensor_path}: sha256 does not match its JSON (corrupt or replaced)")
    tensors = load_file(str(tensor_path))
    model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer = None
    if doc.get("optimizer") is not None:
        optimizer = _join_optimizer(doc["optimizer"], tensors)
    return Checkpoint(model, doc["config"], optimizer, doc.get("extra", {}))
