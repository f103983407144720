"""Print markdown tables from the JSON reports in benchmarks/reports/ (for docs/results.md).

python benchmarks/results_tables.py
"""

from __future__ import annotations

import json
from pathlib import Path

REPORTS = Path(__file__).parent / "reports"


def fss_table() -> str:
    rows = [
        "| method | annotation | mIoU (FSS) orig. | mIoU (FSS) work. | FB-IoU | "
        "per-episode IoU | episodes | wall s |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for path in sorted(REPORTS.glob("fss-*.json")):
        r = json.loads(path.read_text())
        o, w = r["original_size"]["summary"], r["working_resolution"]["summary"]
        rows.append(
            f"| {r['method']} | {r['protocol']['annotation']} | {100 * o['miou_fss']:.1f} | "
            f"{100 * w['miou_fss']:.1f} | {100 * o['fb_iou']:.1f} | "
            f"{100 * o['miou_per_episode']:.1f} | {r['num_episodes']} | "
            f"{r['timing']['wall_seconds']:.0f} |"
        )
    return "\n".join(rows)


def robustness_table() -> str:
    reports = {p.stem: json.loads(p.read_text()) for p in sorted(REPORTS.glob("robustness-*.json"))}
    if not reports:
        return "(no robustness reports)"
    names = list(reports)
    kinds = list(next(iter(reports.values()))["kinds"])
    head = "| prompt | " + " | ".join(f"{n} mIoU / mBIoU / mSF" for n in names) + " |"
    rows = [head, "|---|" + "---:|" * len(names)]
    for kind in kinds:
        cells = []
        for n in names:
            k = reports[n]["kinds"].get(kind)
            cells.append(
                "-"
                if k is None
                else f"{100 * k['miou']:.1f} / {100 * k['mbiou']:.1f} / {100 * k['msf']:.1f}"
            )
        rows.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(fss_table())
    print()
    print(robustness_table())
