"""Compare two ``prosam eval fss --json`` reports of the same episode list, B minus A.

Prints both runs' FSS mIoU, the mean per-episode IoU change, how many episodes got better
and worse, and 95 % bootstrap intervals that resample target images (each with all its
episodes), which is what the wider validation list resolves::

    python benchmarks/compare_runs.py baseline.json variant.json [--md out.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prosam.errors import InputError
from prosam.evaluation.paired import compare_runs
from prosam.io import write_bytes_atomic


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="the baseline report")
    p.add_argument("b", help="the variant's report")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--md", default=None, help="also write the line to this file")
    args = p.parse_args()
    try:
        a, b = (json.loads(Path(f).read_text()) for f in (args.a, args.b))
        c = compare_runs(a["episodes"], b["episodes"], resamples=args.resamples)
    except (OSError, ValueError, KeyError, InputError) as e:
        raise SystemExit(f"compare_runs: {e}") from None
    lo, hi = c.miou_delta_interval
    elo, ehi = c.episode_delta_interval
    line = (
        f"| {Path(args.b).stem} vs {Path(args.a).stem} | {100 * c.miou_a:.1f} -> "
        f"{100 * c.miou_b:.1f} ({100 * lo:+.1f} to {100 * hi:+.1f}) | "
        f"{100 * c.episode_delta:+.2f} ({100 * elo:+.2f} to {100 * ehi:+.2f}) | "
        f"{c.better} / {c.worse} | {c.episodes} episodes, {c.targets} targets |"
    )
    header = (
        "| B vs A | FSS mIoU (95 % interval of the change) | per-episode IoU change "
        "(interval) | better / worse | list |\n|---|---|---|---|---|\n"
    )
    print(header + line)
    if args.md:
        write_bytes_atomic(args.md, (header + line + "\n").encode())


if __name__ == "__main__":
    main()
