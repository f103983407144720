"""Shared setup of the benchmark scripts that replay a saved episode list."""

from __future__ import annotations

import json
from pathlib import Path

from prosam.data.episodes import load_episodes
from prosam.data.specs import load_dataset_spec
from prosam.data.types import Episode
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
