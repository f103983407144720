"""The fields every ``prosam episodes`` / ``prosam eval`` report shares, and writing it."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from prosam.evaluation.evaluate import EvalResult
    from prosam.evaluation.evaluate_multi import MultiEvalResult
    from prosam.sam import EmbeddingCache, FrozenSam


T = TypeVar("T")


def protocol_meta(args: argparse.Namespace, scheme: str, classes: list[int]) -> dict[str, Any]:
    return {
        "data": args.data,
        "split": args.split,
        "min_area_fraction": args.min_area,
        "fold": args.fold,
        "folds": args.folds,
        "scheme": scheme,
        "class_set": args.classes,
        "classes": classes,
    }


def save_episode_lists(
    args: argparse.Namespace,
    episodes: list[T],
    meta: dict[str, Any],
    save: Callable[[str, list[T], dict[str, Any]], str],
) -> tuple[list[T], str]:
    """Save ``--out`` (and ``--val-out``, with ``--val-fraction``): test episodes and hash."""
    from prosam.data.episodes import validation_test_split

    if args.val_fraction:
        val, test = validation_test_split(episodes, args.val_fraction, seed=args.seed)
        digest = save(args.val_out, val, {**meta, "role": "validation"})
        print(f"{args.val_out}: {len(val)} validation episodes (sha256 {digest[:12]})")
        episodes = test
    digest = save(args.out, episodes, {**meta, "role": "test"})
    return episodes, digest


def run_fields(
    args: argparse.Namespace,
    model: FrozenSam,
    file_hash: str,
    evaluated_hash: str,
    num_episodes: int,
) -> dict[str, Any]:
    """The report fields ``checkpoint`` to ``num_episodes`` (the checkpoint hashed after
    resolving a bundled name)."""
    from prosam.core.checkpoint import checkpoint_files
    from prosam.core.files import sha256_file
    from prosam.pretrained import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint) if args.checkpoint else None
    return {
        "checkpoint": args.checkpoint,
        "checkpoint_sha256": sha256_file(checkpoint_files(checkpoint)[0]) if checkpoint else None,
        "model": model.name,
        "sam_variant": model.variant,
        "weights_sha256": model.weights_sha256,
        "encoder_backend": f"{model.backend} {model.precision}",
        "decoder_backend": model.decoder_backend,
        "episodes_file": args.episodes,
        "episodes_hash": file_hash,
        "episodes_limit": args.limit,
        "evaluated_episodes_hash": evaluated_hash,
        "num_episodes": num_episodes,
    }


def timing(
    result: EvalResult | MultiEvalResult, wall: float, cache: EmbeddingCache | None
) -> dict[str, Any]:
    """The report's ``timing`` field."""
    return {
        "wall_seconds": wall,
        "inputs_seconds": result.seconds_inputs,
        "method_seconds": result.seconds_method,
        "method_ms_per_episode": 1000 * result.seconds_method / max(result.episodes, 1),
        **(
            {
                "fit_ms_per_episode": 1000 * result.seconds_fit / max(result.episodes, 1),
                "predict_ms_per_target": 1000 * result.seconds_predict / max(result.episodes, 1),
            }
            if hasattr(result, "seconds_predict")
            else {}
        ),
        "embedding_cache_hits": cache.hits if cache else None,
        "embedding_cache_misses": cache.misses if cache else None,
    }


def strict_json(report: dict[str, Any]) -> str:
    """``report`` as indented, valid JSON: a NaN or infinity becomes ``null``, and
    ``"non_finite"`` lists where each was (``"a.b[2]"``), so a reader knows a value was
    undefined (e.g. a mean over no episodes) rather than missing."""
    where: list[str] = []

    def clean(value: Any, path: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            where.append(path or "(top)")
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    cleaned = clean(report, "")
    if where:
        cleaned["non_finite"] = where
    return json.dumps(cleaned, indent=1, default=str, allow_nan=False)


def write_report(path: str, report: dict[str, Any]) -> None:
    """Write ``report`` to ``path`` as strict JSON (:func:`strict_json`), atomically."""
    from prosam.io import write_bytes_atomic

    write_bytes_atomic(Path(path), strict_json(report).encode())
