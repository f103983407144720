"""Video files as labelling targets: frames out (PyAV), an overlay video back.

:func:`extract_frames` decodes a video once into lossless PNG frames in a folder of the
job's output (``OUT/frames/<video name>/<frame index>.png``) beside a ``frames.json`` that
says which video, frame index and timestamp each file is; the frames are then ordinary
targets, so a video job resumes, shards and finalizes like a folder of photos. A rerun
finds the frames already there (same video bytes, same selection) and decodes nothing.

Which frames: all (the default), every ``every``-th (``0, N, 2N, ...``), or ``fps`` per
second (the first frame at or after each multiple of ``1 / fps`` seconds).

:func:`frame_of` answers "is this image a video frame, and which?" from the
``frames.json`` beside it: records and COCO ``images`` entries carry ``video_id``,
``frame_id`` and ``time`` (seconds) for frames. :func:`write_overlay_video` encodes the
labelled frames with their masks drawn over them.
"""

from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from prosam.errors import InputError
from prosam.io import write_bytes_atomic
from prosam.label.targets import FileStamp, same_file, stamp_file

__all__ = [
    "FRAMES_FILE",
    "VIDEO_SUFFIXES",
    "Frame",
    "extract_frames",
    "frame_of",
    "frame_rate",
    "is_video",
    "write_overlay_video",
]

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg"})
FRAMES_FILE = "frames.json"
_FORMAT = "prosam-frames"


@dataclass(frozen=True)
class Frame:
    """One extracted frame: its PNG file, its video, its index there and time (seconds)."""

    path: Path
    video: str
    frame_id: int
    time: float


def is_video(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a video file (by its suffix)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise InputError("video targets need PyAV: pip install 'prosam[video]'") from None
    return av


def _selection(fps: float | None, every: int | None) -> dict[str, Any]:
    if fps is not None and every is not None:
        raise InputError("give --fps or --every, not both")
    if fps is not None and not fps > 0:
        raise InputError(f"--fps must be positive, got {fps}")
    if every is not None and every < 1:
        raise InputError(f"--every must be at least 1, got {every}")
    return {"fps": fps, "every": every}


def _wanted(selection: Mapping[str, Any]) -> Callable[[int, float], bool]:
    fps, every = selection["fps"], selection["every"]
    if every is not None:
        return lambda index, _time: index % every == 0
    if fps is None:
        return lambda _index, _time: True
    state = {"next": 0.0}

    def by_time(_index: int, time: float) -> bool:
        if time + 1e-6 < state["next"]:
            return False
        state["next"] = (np.floor(time * fps + 1e-6) + 1) / fps
        return True

    return by_time


def _decode(path: Path) -> Iterator[tuple[int, float, np.ndarray]]:
    """``(frame index, time in seconds, RGB array)`` of every frame of the first video stream."""
    av = _av()
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise InputError(f"{path}: not a readable video ({err})") from None
    with container:
        if not container.streams.video:
            raise InputError(f"{path}: no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        try:
            for index, frame in enumerate(container.decode(stream)):
                time = float(frame.time) if frame.time is not None else float(index / rate)
                yield index, time, frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as err:
            raise InputError(f"{path}: video decoding failed ({err})") from None


def _rate(path: Path) -> float:
    """The video's average frame rate (25 when the file does not say)."""
    with _av().open(str(path)) as container:
        stream = container.streams.video[0]
        return float(stream.average_rate or stream.guessed_rate or 25)


def frame_rate(folder: str | os.PathLike[str]) -> float | None:
    """The frame rate of the video whose frames ``folder`` holds, from its ``frames.json``."""
    data = _read_index(Path(folder) / FRAMES_FILE)
    return None if data is None else float(data.get("rate") or 25)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def extract_frames(
    video: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    fps: float | None = None,
    every: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Frame]:
    """Decode ``video``'s chosen frames into ``folder`` (see the module docstring); return
    them in order. ``progress(n)`` is called after each frame written."""
    video, folder = Path(video), Path(folder)
    if not video.is_file():
        raise InputError(f"{video}: no such video file")
    selection = _selection(fps, every)
    index_file = folder / FRAMES_FILE
    done = _read_index(index_file)
    if done is not None and done["selection"] == selection and same_file(done["file"], video):
        frames = [_frame(folder, done["video"], f) for f in done["frames"]]
        if all(f.path.is_file() for f in frames):
            return frames
    stamp: FileStamp = stamp_file(video)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = _wanted(selection)
    frames: list[Frame] = []
    for index, time, pixels in _decode(video):
        if not wanted(index, time):
            continue
        path = folder / f"{index:06d}.png"
        write_bytes_atomic(path, _png(pixels))
        frames.append(Frame(path, str(video), index, time))
        if progress is not None:
            progress(len(frames))
    if not frames:
        raise InputError(f"{video}: no frames decoded")
    record = {
        "format": _FORMAT,
        "video": str(video),
        "file": stamp.as_dict(),
        "selection": selection,
        "rate": _rate(video),
        "frames": [{"file": f.path.name, "frame_id": f.frame_id, "time": f.time} for f in frames],
    }
    write_bytes_atomic(index_file, json.dumps(record, indent=1).encode())
    _index_of.cache_clear()
    return frames


def _read_index(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == _FORMAT else None


def _frame(folder: Path, video: str, entry: Mapping[str, Any]) -> Frame:
    return Frame(folder / entry["file"], video, int(entry["frame_id"]), float(entry["time"]))


@functools.lru_cache(maxsize=64)
def _index_of(folder: str) -> dict[str, Frame]:
    data = _read_index(Path(folder) / FRAMES_FILE)
    if data is None:
        return {}
    return {f["file"]: _frame(Path(folder), data["video"], f) for f in data["frames"]}


def frame_of(path: str | os.PathLike[str]) -> Frame | None:
    """The video frame an image file is, from the ``frames.json`` beside it, or ``None``."""
    p = Path(path)
    return _index_of(str(p.parent.resolve())).get(p.name)


def write_overlay_video(
    frames: Sequence[Frame],
    masks_of: Callable[[Frame], list[np.ndarray]],
    out: str | os.PathLike[str],
    *,
    fps: float,
) -> Path:
    """Encode ``frames`` with ``masks_of(frame)`` drawn over each (H.264 when the PyAV build
    has it, else MPEG-4) into ``out``, written atomically."""
    from prosam.io import read_image
    from prosam.visualize import overlay_masks

    av = _av()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial" + out.suffix)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    rate = Fraction(fps).limit_denominator(1000)
    with av.open(str(partial), mode="w") as container:
        stream = None
        for frame in frames:
            pixels = overlay_masks(read_image(frame.path), masks_of(frame))
            h, w = pixels.shape[:2]
            pixels = pixels[: h - h % 2, : w - w % 2]  # yuv420p needs even sides
            if stream is None:
                stream = container.add_stream(codec, rate=rate)
                stream.width, stream.height = pixels.shape[1], pixels.shape[0]
                stream.pix_fmt = "yuv420p"
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    os.replace(partial, out)
    return out
