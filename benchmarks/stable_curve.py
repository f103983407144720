"""The Stable-SAM plugin's learning curve: validation mIoU per prompt kind vs objects seen,
read from `prosam stable train` logs.

    python benchmarks/stable_curve.py benchmarks/reports/stable-all/train-lr1.25e-4.log \\
        benchmarks/reports/stable-all/train-lr1e-3.log --out docs/images/stable-learning-curve.png
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

KINDS = ("gt_box", "noisy_box", "points_1")


def read_curve(path: Path) -> list[dict[str, float]]:
    points = []
    for line in path.read_text().splitlines():
        if "objects_seen=" not in line or "val_miou=" not in line:
            continue
        fields = dict(re.findall(r"(\w+)=([-\d.e+na]+)", line))
        points.append({k: float(v) for k, v in fields.items() if k in (*KINDS, "objects_seen")})
    return points


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logs", nargs="+")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    fig, axes = plt.subplots(1, len(KINDS), figsize=(12, 3.6), sharex=True)
    for log, style in zip(args.logs, ("-o", "--s", ":^"), strict=False):
        curve = read_curve(Path(log))
        label = Path(log).stem.removeprefix("train-").replace("lr", "lr ")
        for ax, kind in zip(axes, KINDS, strict=True):
            xs = [c["objects_seen"] for c in curve]
            ax.plot(xs, [100 * c[kind] for c in curve], style, label=label)
    for ax, kind in zip(axes, KINDS, strict=True):
        ax.set_title(f"validation mIoU, {kind}")
        ax.set_xlabel("objects seen")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
