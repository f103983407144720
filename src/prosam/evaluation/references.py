"""Turning dataset samples into method inputs: simulated annotations and embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prosam.data.episodes import reference_annotation
from prosam.data.types import Episode, Sample
from prosam.methods.base import Reference, Target
from prosam.sam.predictor import Predictor


def build_references(
    samples: Sequence[Sample], class_id: int, kind: str, seed: int, predictor: Predictor
) -> list[Reference]:
    """Embedded references of ``class_id`` with simulated ``kind`` annotations; sample ``j``
    uses :func:`reference_annotation` index ``j``."""
    references = []
    for j, sample in enumerate(samples):
        image = sample.image()
        annotation, _ = reference_annotation(sample, class_id, kind, seed, j)
        references.append(Reference(image, annotation, predictor.embed(image), kind=kind))
    return references


def episode_inputs(
    episode: Episode, predictor: Predictor
) -> tuple[list[Reference], Target, np.ndarray, np.ndarray]:
    """References, target, and the target's ground-truth ``(mask, ignore)``."""
    references = build_references(
        episode.references,
        episode.class_id,
        episode.annotation,
        episode.annotation_seed,
        predictor,
    )
    image = episode.target.image()
    truth, ignore = episode.target.mask(episode.class_id)
    return references, Target(image, predictor.embed(image)), truth, ignore
