"""Video files as labelling targets: frame choice, resumable extraction, records and COCO
fields, the overlay video, and one-line errors."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from prosam.cli import main
from prosam.errors import InputError
from prosam.label.video import extract_frames, frame_of, is_video


def _frame_pixels(i: int) -> np.ndarray:
    """A bright square moving right over a dark background, frame ``i``."""
    img = np.full((48, 64, 3), 20, np.uint8)
    img[12:36, 4 + 3 * i : 24 + 3 * i] = 230
    return img


def _write_clip(path: Path, frames: int = 12, fps: int = 12) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"qscale": "1"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(_frame_pixels(i), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return _write_clip(tmp_path_factory.mktemp("video") / "walk.mp4")


def _decoded(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.parametrize(
    ("options", "ids"),
    [
        ({}, list(range(12))),
        ({"every": 4}, [0, 4, 8]),
        ({"fps": 4.0}, [0, 3, 6, 9]),
        ({"fps": 100.0}, list(range(12))),
    ],
)
def test_frame_choice_and_times(clip, tmp_path, options, ids):
    frames = extract_frames(clip, tmp_path / "f", **options)
    assert [f.frame_id for f in frames] == ids
    assert [f.time for f in frames] == pytest.approx([i / 12 for i in ids], abs=1e-3)
    assert [f.path.name for f in frames] == [f"{i:06d}.png" for i in ids]
    first = np.asarray(Image.open(frames[-1].path))
    assert first.shape == (48, 64, 3)
    # the square is where the frame index puts it (lossy codec: compare coarsely)
    bright = first.mean(axis=2) > 128
    assert abs(np.argwhere(bright)[:, 1].min() - (4 + 3 * ids[-1])) <= 2
    info = frame_of(frames[1 if len(frames) > 1 else 0].path)
    assert info is not None and info.video == str(clip)
    assert frame_of(tmp_path / "f" / "nothing.png") is None


def test_extraction_resumes_without_decoding(clip, tmp_path):
    def stamps(frames):
        return [(f.path.stat().st_ino, f.path.stat().st_mtime_ns) for f in frames]

    first = extract_frames(clip, tmp_path / "f", every=4)
    before = stamps(first)
    again = extract_frames(clip, tmp_path / "f", every=4)
    assert again == first and stamps(again) == before  # not one frame written again
    (first[1].path).unlink()
    assert stamps(extract_frames(clip, tmp_path / "f", every=4))[0] != before[0]  # redone
    assert len(extract_frames(clip, tmp_path / "f", every=6)) == 2  # another choice: redone


def test_bad_videos_and_options(tmp_path, clip):
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"not a video at all")
    assert is_video(fake) and not is_video(tmp_path / "x.png")
    with pytest.raises(InputError, match="not a readable video"):
        extract_frames(fake, tmp_path / "f")
    with pytest.raises(InputError, match="not both"):
        extract_frames(clip, tmp_path / "f", fps=2, every=3)
    with pytest.raises(InputError, match="positive"):
        extract_frames(clip, tmp_path / "f", fps=0)
    with pytest.raises(InputError, match="no such video"):
        extract_frames(tmp_path / "gone.mp4", tmp_path / "f")


def test_label_a_video(clip, tmp_path, capsys):
    ref = tmp_path / "ref.png"
    Image.fromarray(_frame_pixels(2)).save(ref)
    out = tmp_path / "out"
    args = [
        "label",
        "--ref",
        str(ref),
        "--ref-box",
        "10,12,30,36",
        "--class",
        "square",
        str(clip),
        "--every",
        "4",
        "--out",
        str(out),
        "--overlay-video",
        "--method",
        "persam",
        "--model",
        "tiny",
        "--no-progress",
        "--workers",
        "0",
    ]
    assert main(args) == 0
    assert "overlay-video" in capsys.readouterr().out
    coco = json.loads((out / "coco.json").read_text())
    assert coco["videos"] == [{"id": 1, "file_name": "walk.mp4"}]
    assert [(im["video_id"], im["frame_id"]) for im in coco["images"]] == [(1, 0), (1, 4), (1, 8)]
    assert [im["time"] for im in coco["images"]] == pytest.approx([0, 4 / 12, 8 / 12], abs=1e-3)
    records = sorted((out / "records").rglob("*.json"))
    assert len(records) == 3
    video = json.loads(records[1].read_text())["video"]
    assert video["frame_id"] == 4 and video["file"] == str(clip)
    assert _decoded(out / "overlay-video" / "walk.mp4") == 3
    # a rerun finds everything done; --fps without a video is refused in one line
    assert main(args) == 0
    assert "3 already done" in capsys.readouterr().out
    image = tmp_path / "still.png"
    Image.fromarray(_frame_pixels(0)).save(image)
    bad = [*args[:7], str(image), "--fps", "2", *args[10:]]
    assert main(bad) == 2
    assert "--fps and --every choose frames of video targets" in capsys.readouterr().err
