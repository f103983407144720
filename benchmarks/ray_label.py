"""Ray on one machine vs the local job: same files, and the throughput ratio.

    python benchmarks/ray_label.py --n 16 --md benchmarks/reports/ray_label.md

Labels the first ``--n`` coco-mini val2017 images (sorted by name) from one reference (a
bundled cat photo and its cat's box) with ``prosam label`` three times into fresh folders: the
local job, ``--ray --ray-actors 1`` and ``--ray --ray-actors 2``; compares the sha256 of
every file written and reports targets per second (the whole command's wall time, model
loading and Ray's start included, which is what a user waits for).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

from prosam.io import write_bytes_atomic

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "prosam" / "assets" / "examples"


def hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default="../shared/data/coco-mini/coco-mini-b/val2017")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--method", default="matcher")
    p.add_argument("--work", default="/tmp/ray-label")
    p.add_argument("--md", default=None)
    args = p.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    (work / "targets").mkdir(parents=True)
    for src in sorted(Path(args.images).glob("*.jpg"))[: args.n]:
        shutil.copy(src, work / "targets" / src.name)
    ref = EXAMPLES / "000000196393.jpg"  # its cat's COCO box, as x0,y0,x1,y1
    base = [sys.executable, "-m", "prosam.cli", "label", "--ref", str(ref), "--ref-box"]
    base += ["2,90,276,425", "--class", "cat", str(work / "targets"), "--method", args.method]
    base += ["--format", "png,coco", "--no-progress"]
    runs = {"local": [], "ray, 1 actor": ["--ray", "--ray-actors", "1"]}
    runs["ray, 2 actors"] = ["--ray", "--ray-actors", "2"]
    seconds, files = {}, {}
    for name, extra in runs.items():
        out = work / name.replace(" ", "").replace(",", "-")
        t0 = time.perf_counter()
        subprocess.run([*base, "--out", str(out), *extra], check=True, stdout=subprocess.DEVNULL)
        seconds[name] = time.perf_counter() - t0
        files[name] = hashes(out)
        print(name, f"{seconds[name]:.1f} s", flush=True)
    lines = [
        f"Command: `python benchmarks/ray_label.py {' '.join(sys.argv[1:])}` "
        f"({args.n} images, `--method {args.method}`, 2-core CPU)",
        "",
        "| run | wall s | targets/s | vs local | files identical to local |",
        "|---|---:|---:|---:|---|",
    ]
    for name in runs:
        same = files[name] == files["local"]
        lines.append(
            f"| {name} | {seconds[name]:.1f} | {args.n / seconds[name]:.3f} "
            f"| {seconds['local'] / seconds[name]:.2f}x | {'yes' if same else 'NO'} "
            f"({len(files[name])} files) |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        write_bytes_atomic(Path(args.md), text.encode())


if __name__ == "__main__":
    main()
