"""Datasets, few-shot folds and seeded episodes for visual reference segmentation."""

from __future__ import annotations

from prosam.data.coco import load_coco
from prosam.data.episodes import (
    episodes_hash,
    load_episodes,
    make_episodes,
    rank_and_world_from_env,
    save_episodes,
    split_for_rank,
    validation_test_split,
)
from prosam.data.folder import load_folder
from prosam.data.folds import coco20i_classes, fold_split, pascal5i_classes
from prosam.data.multi_entity import (
    EpisodeEntity,
    MultiEntityEpisode,
    load_multi_entity_episodes,
    make_multi_entity_episodes,
    save_multi_entity_episodes,
)
from prosam.data.pascal import coco20i, load_pascal_voc, pascal5i
from prosam.data.types import ANNOTATION_KINDS, Dataset, Episode, Sample

__all__ = [
    "ANNOTATION_KINDS",
    "Dataset",
    "Episode",
    "EpisodeEntity",
    "MultiEntityEpisode",
    "Sample",
    "coco20i",
    "coco20i_classes",
    "episodes_hash",
    "fold_split",
    "load_coco",
    "load_episodes",
    "load_folder",
    "load_multi_entity_episodes",
    "load_pascal_voc",
    "make_episodes",
    "make_multi_entity_episodes",
    "pascal5i",
    "pascal5i_classes",
    "rank_and_world_from_env",
    "save_episodes",
    "save_multi_entity_episodes",
    "split_for_rank",
    "validation_test_split",
]
