"""Labelling across machines with Ray Data (``prosam[ray]``).

The driver plans the job exactly as a local run does (:meth:`LabelJob.plan`: ``job.json``,
``targets.json``, outputs of gone targets removed, the targets still to label), then hands
those targets to a Ray Data pipeline whose map stage is an actor pool: each actor builds
its own model and fits the references once (``make_segmenter``, a picklable callable), and
labels the batches it is given through the same :meth:`LabelJob.label_entries`, so every
target leaves the same per-target record and files as in a local run, claimed under the
same file locks. The driver then completes the job (``coco.json``, ``failures.json``,
review). A killed cluster job resumes like a local one: rerun it, and only targets without
a record are labelled.

The output folder and the targets must be paths every node can read (and the output one
every node can write): one machine, or a shared file system across several.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prosam.errors import InputError
from prosam.label.job import LabelJob, LabelSummary
from prosam.label.targets import TargetEntry

__all__ = ["label_paths_with_ray", "label_ray_dataset"]

_COUNTS = ("processed", "empty", "replaced", "elsewhere")


def _ray() -> Any:
    try:
        import ray
        import ray.data  # the Data library is an extra of its own
    except ImportError:
        raise InputError("labelling with Ray needs it: pip install 'prosam[ray]'") from None
    return ray


class _LabelActor:
    """One model, references fitted once; labels batches of planned targets."""

    def __init__(
        self,
        make_segmenter: Callable[[], Any],
        out_dir: str,
        options: dict[str, Any],
        threads: int,
    ) -> None:
        import torch

        torch.set_num_threads(threads)  # Ray gives an actor one; see label_paths_with_ray
        segmenter = make_segmenter()
        self.job: LabelJob = segmenter.job(out_dir, workers=0, progress=False, **options)
        self.job.prepare_methods()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entries = [
            TargetEntry(int(i), Path(str(p)), str(k), str(f))
            for i, p, k, f in zip(
                batch["index"], batch["path"], batch["key"], batch["file_name"], strict=True
            )
        ]
        summary = LabelSummary(len(entries), (0, 1), len(entries))
        self.job.label_entries(entries, summary)
        counts = {k: np.array([getattr(summary, k)]) for k in _COUNTS}
        return {**counts, "failures": np.array([json.dumps(summary.failures)])}


def label_paths_with_ray(
    make_segmenter: Callable[[], Any],
    targets: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    formats: Sequence[str] = ("png", "coco"),
    actors: int = 2,
    batch_size: int = 4,
    cpus_per_actor: float = 1.0,
    address: str | None = None,
    max_pixels: int | None = None,
    restart: bool = False,
    progress: bool = True,
    segmenter: Any = None,
    threads: int | None = None,
) -> LabelSummary:
    """Label ``targets`` into ``out_dir`` with ``actors`` Ray actors (see the module
    docstring); Ray is started locally, or joins the cluster at ``address`` ("auto": the
    one this machine belongs to), unless it is already initialised. ``segmenter``: the
    driver's own fitted one, if at hand (else ``make_segmenter()`` is called here too).
    ``threads``: PyTorch threads per actor; by default as many as this process uses, so
    each actor sums floating-point numbers in the order a local run does and the files
    are the same bytes as a local run's on the same kind of CPU (fewer threads per actor
    share a machine's cores better but change scores in their last digits)."""
    import torch

    threads = threads or torch.get_num_threads()
    if actors < 1 or batch_size < 1:
        raise InputError("need at least one actor and a batch size of at least 1")
    ray = _ray()
    t0 = time.perf_counter()
    options: dict[str, Any] = {"formats": list(formats)}
    if max_pixels is not None:
        options["max_pixels"] = max_pixels
    job: LabelJob = (segmenter or make_segmenter()).job(
        out_dir, workers=0, progress=False, restart=restart, **options
    )
    plan = job.plan(targets, root=root)
    if plan.pending:
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        rows = [
            {"index": e.index, "path": str(e.path), "key": e.key, "file_name": e.file_name}
            for e in plan.pending
        ]
        blocks = min(len(rows), max(actors, math.ceil(len(rows) / batch_size)))
        data = ray.data.from_items(rows, override_num_blocks=blocks)
        ray.data.DataContext.get_current().enable_progress_bars = progress
        done = data.map_batches(
            _LabelActor,
            fn_constructor_args=(make_segmenter, str(out_dir), options, threads),
            batch_size=batch_size,
            concurrency=actors,
            num_cpus=cpus_per_actor,
        ).take_all()
        for row in done:
            for key in _COUNTS:
                setattr(plan.summary, key, getattr(plan.summary, key) + int(row[key]))
            plan.summary.failures += json.loads(str(row["failures"]))
    return job.complete(plan, started=t0)


def label_ray_dataset(
    dataset: Any,
    make_segmenter: Callable[[], Any],
    out_dir: str | os.PathLike[str],
    *,
    path_column: str = "path",
    **options: Any,
) -> LabelSummary:
    """Label the image paths in ``dataset``'s ``path_column`` (a ``ray.data.Dataset``);
    ``options`` as :func:`label_paths_with_ray`'s."""
    paths = [row[path_column] for row in dataset.select_columns([path_column]).take_all()]
    if not paths:
        raise InputError("the dataset holds no paths")
    return label_paths_with_ray(make_segmenter, paths, out_dir, **options)
