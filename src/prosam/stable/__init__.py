"""Stable-SAM (Fan et al.): deformable sampling and dynamic routing plugins for a frozen SAM
decoder, its robust training strategy, and the prompt-robustness evaluation protocol.

- :mod:`prosam.stable.plugin`: :class:`StableSamPlugin`, :func:`attach_stable_plugin`.
- :mod:`prosam.stable.train`: :func:`train_stable` (RTS), resumable.
- :mod:`prosam.stable.training_objects`: :class:`TrainingObjects` from several datasets.
- :mod:`prosam.stable.robustness`: :func:`evaluate_robustness`, :func:`to_markdown`.
"""

from prosam.stable.checkpoint import load_stable_plugin, save_stable_plugin
from prosam.stable.objects import ObjectItem, dataset_objects, object_masks
from prosam.stable.plugin import (
    StablePluginHandle,
    StableSamPlugin,
    attach_stable_plugin,
    count_parameters,
    detach_stable_plugin,
    is_attached,
)
from prosam.stable.prompts import ROBUSTNESS_KINDS, Prompt, sample_prompt
from prosam.stable.robustness import evaluate_robustness, to_markdown
from prosam.stable.train import StableTrainSettings, train_stable
from prosam.stable.training_objects import (
    OBJECT_MODES,
    TrainingObjects,
    evenly_spaced_per_class,
    held_out_keys,
    without_keys,
)

__all__ = [
    "OBJECT_MODES",
    "ROBUSTNESS_KINDS",
    "ObjectItem",
    "Prompt",
    "StablePluginHandle",
    "StableSamPlugin",
    "StableTrainSettings",
    "TrainingObjects",
    "attach_stable_plugin",
    "count_parameters",
    "dataset_objects",
    "detach_stable_plugin",
    "evaluate_robustness",
    "evenly_spaced_per_class",
    "held_out_keys",
    "is_attached",
    "load_stable_plugin",
    "object_masks",
    "sample_prompt",
    "save_stable_plugin",
    "to_markdown",
    "train_stable",
    "without_keys",
]
