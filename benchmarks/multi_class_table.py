"""The multi-class labelling table (issue 15) from ``benchmarks/multi_class.sh``'s reports.

    python benchmarks/multi_class_table.py benchmarks/reports/multi-msrc3-*.json \\
        --md benchmarks/reports/multi-msrc3.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prosam.io import write_bytes_atomic


def row(path: Path) -> str:
    d = json.loads(path.read_text())
    s = d["original_size"]["summary"]
    t = d["timing"]
    options = ", ".join(f"{k}={v}" for k, v in sorted(d.get("method_options", {}).items()))
    return (
        f"| `{d['method']}`{' (' + options + ')' if options else ''} | "
        f"{'joint' if s['joint'] else 'per class'} | {s['num_episodes']} | "
        f"{100 * s['miou_per_entity']:.1f} | {100 * s['miou_fss']:.1f} | "
        f"{100 * s['miou_per_entity_independent']:.1f} | "
        f"{100 * s['overlap_fraction_pooled']:.1f} | {t['fit_ms_per_episode'] / 1000:.1f} | "
        f"{t['predict_ms_per_target'] / 1000:.2f} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("reports", nargs="+")
    p.add_argument("--md", default=None)
    args = p.parse_args()
    lines = [
        "| method | fitted | episodes | per-entity IoU | mIoU (FSS) | per-entity IoU before "
        "resolution | pixels claimed twice (%) | fit s / episode | s / target after fit |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
        *(row(Path(r)) for r in args.reports),
    ]
    text = "\n".join(lines) + "\n"
    if args.md:
        write_bytes_atomic(Path(args.md), text.encode())
    print(text, end="")


if __name__ == "__main__":
    main()
