"""A cached, checked ONNX export: one directory per graph, made atomically under a lock.

An export directory holds the graph file and ``export.json``: what was exported and the
accuracy check of every runtime that has run it on this machine. :func:`ensure_cached`
builds the directory in a private staging folder and renames it into place only when the
builder returns (a builder that finds the graph wrong raises, and nothing is cached);
:func:`recorded_check` keeps each runtime's check so it runs once per runtime version.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from prosam.io import write_bytes_atomic

RECORD = "export.json"


def runtime_key(backend: str, precision: str) -> str:
    """``backend-precision@version``: what a recorded check is valid for."""
    # the module's own version: a runtime may come from another distribution (onnxruntime-gpu)
    version = getattr(importlib.import_module(backend), "__version__", "?")
    return f"{backend}-{precision}@{version}"


def read_record(directory: Path) -> dict[str, Any]:
    """The export's ``export.json``."""
    return json.loads((directory / RECORD).read_text())


def write_record(directory: Path, record: dict[str, Any]) -> None:
    """Replace the export's ``export.json`` atomically."""
    write_bytes_atomic(directory / RECORD, json.dumps(record, indent=1).encode())


def is_complete(directory: Path, graph_name: str) -> bool:
    """Whether ``directory`` holds both the graph and its record."""
    return (directory / RECORD).is_file() and (directory / graph_name).is_file()


def ensure_cached(
    directory: Path, graph_name: str, build: Callable[[Path], dict[str, Any]]
) -> Path:
    """The graph ``directory / graph_name``, made first by ``build(staging)`` if missing.

    ``build`` writes the graph into ``staging / graph_name``, checks it and returns the
    record to keep; an exception leaves nothing behind. Concurrent callers wait on a lock.
    """
    if is_complete(directory, graph_name):
        return directory / graph_name
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory) + ".lock"):
        if is_complete(directory, graph_name):
            return directory / graph_name
        shutil.rmtree(directory, ignore_errors=True)  # an export damaged since it was made
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            record = build(staging)
            write_record(staging, record)
            shutil.rmtree(staging / "compiled", ignore_errors=True)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(staging, 0o777 & ~umask)  # mkdtemp made it private
            os.replace(staging, directory)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return directory / graph_name


def recorded_check(
    directory: Path, key: str, run_check: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """The check recorded under ``key`` in the export's record, else ``run_check()`` kept."""
    with FileLock(str(directory) + ".lock"):
        record = read_record(directory)
        found = record.get("checks", {}).get(key)
        if found is not None:
            return found
        check = run_check()
        record.setdefault("checks", {})[key] = check
        with contextlib.suppress(OSError):  # a read-only cache still serves the export
            write_record(directory, record)
    return check
