"""Video files among a labelling job's targets: their frames in, an overlay video out.

:func:`video_targets` splits the job's target arguments into videos and the rest and
extracts each video's frames (:func:`prosam.label.video.extract_frames`) into
``OUT/frames/<video name>/``; :func:`write_overlay_videos` draws each labelled frame's kept
masks and encodes ``OUT/overlay-video/<video name>.mp4``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from prosam.errors import InputError
from prosam.label.records import valid_record
from prosam.label.targets import plan_targets
from prosam.label.video import Frame, extract_frames, frame_rate, is_video, write_overlay_video
from prosam.label.writers import decode_mask

__all__ = ["VideoTargets", "video_targets", "write_overlay_videos"]


@dataclass
class VideoTargets:
    """The non-video target arguments, and each video's frame folder and frames."""

    others: list[str]
    frames: dict[Path, list[Frame]] = field(default_factory=dict)

    @property
    def folders(self) -> list[Path]:
        return list(self.frames)

    def paths(self) -> list[Path]:
        """Every frame file, video by video."""
        return [f.path for frames in self.frames.values() for f in frames]


def _folder_names(videos: Sequence[str]) -> list[str]:
    stems = [Path(v).stem for v in videos]
    return [
        stem
        if stems.count(stem) == 1
        else f"{stem}-{hashlib.sha1(os.path.abspath(v).encode()).hexdigest()[:8]}"
        for stem, v in zip(stems, videos, strict=True)
    ]


def video_targets(
    items: Sequence[str],
    out: str | os.PathLike[str],
    *,
    fps: float | None = None,
    every: int | None = None,
    progress: bool = True,
) -> VideoTargets:
    """Extract the frames of the video files among ``items`` into ``out/frames``."""
    videos = list(dict.fromkeys(i for i in items if not i.startswith("@") and is_video(i)))
    result = VideoTargets([i for i in items if i not in videos])
    if not videos and (fps is not None or every is not None):
        raise InputError("--fps and --every choose frames of video targets; none was given")
    for video, name in zip(videos, _folder_names(videos), strict=True):
        folder = Path(out) / "frames" / name
        bar = tqdm(desc=f"frames of {Path(video).name}", unit="frame", disable=not progress)
        try:
            result.frames[folder] = extract_frames(
                video, folder, fps=fps, every=every, progress=lambda n, b=bar: b.update(1)
            )
        finally:
            bar.close()
    return result


def write_overlay_videos(
    out: str | os.PathLike[str],
    videos: VideoTargets,
    targets: Sequence[str | os.PathLike[str]],
    root: str | os.PathLike[str] | None,
    *,
    fps: float | None = None,
    every: int | None = None,
) -> list[Path]:
    """One overlay video per video target, from the records of the job that labelled
    ``targets`` under ``root`` (a frame without a record is drawn without masks);
    ``fps``/``every`` as the frames were chosen."""
    entries = {os.path.abspath(e.path): e for e in plan_targets(targets, root=root)}
    written = []
    for folder, frames in videos.frames.items():

        def masks_of(frame: Frame) -> list[np.ndarray]:
            """One mask per class, in class order (so a class keeps its colour)."""
            entry = entries.get(os.path.abspath(frame.path))
            record = None if entry is None else valid_record(Path(out), entry.key, entry.file_name)
            if record is None:
                return []
            size = (record["height"], record["width"])
            return [
                decode_mask(c["rle"]) if c["kept"] else np.zeros(size, dtype=bool)
                for c in record["classes"]
            ]

        rate = fps or (frame_rate(folder) or 25.0) / (every or 1)
        target = Path(out) / "overlay-video" / f"{folder.name}.mp4"
        written.append(write_overlay_video(frames, masks_of, target, fps=rate))
    return written
