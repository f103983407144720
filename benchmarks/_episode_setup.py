"""Shared pieces of the benchmark scripts: replaying a saved episode list, and the scalar
signals of a method's output."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prosam.data.episodes import load_episodes
from prosam.data.specs import load_dataset_spec
from prosam.data.types import Episode
from prosam.methods.base import MethodOutput
from prosam.sam import EmbeddingCache, FrozenSam, Predictor, load_sam


def episode_setting(
    episodes_path: str, data: str | None, model_name: str
) -> tuple[list[Episode], FrozenSam, Predictor]:
    """The episodes of a saved list (its dataset: ``data`` or the file's own spec), the SAM
    and a predictor reading the on-disk embedding cache."""
    meta = json.loads(Path(episodes_path).read_text())["meta"]
    dataset = load_dataset_spec(
        data or meta["data"],
        split=meta.get("split"),
        min_area_fraction=meta.get("min_area_fraction", 0.0),
    )
    episodes, _ = load_episodes(episodes_path, dataset)
    model = load_sam(model_name)
    cache = EmbeddingCache.for_sam(model)
    return list(episodes), model, Predictor(model, cache=cache)


def scalar_signals(output: MethodOutput) -> dict[str, float]:
    """Every scalar a method's output offers as a presence signal (higher = more likely
    present): its 0-d extras (matcher: ``presence_*``, ``kept_matches``, ...) and the peak of
    its ``similarity`` map as ``similarity_max`` (PerSAM's location prior)."""
    scores = {
        k: float(v) for k, v in output.extras.items() if isinstance(v, torch.Tensor) and v.ndim == 0
    }
    sim = output.extras.get("similarity")
    if isinstance(sim, torch.Tensor) and sim.numel():
        scores["similarity_max"] = float(sim.float().max())
    return scores
