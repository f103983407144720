"""Print the with/without Stable-SAM plugin table of `stable_reference_methods.sh`.

python benchmarks/stable_reference_table.py benchmarks/reports/stable-refmethods val
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    folder, name = Path(sys.argv[1]), sys.argv[2]
    print("| method | FSS mIoU, plain SAM | + Stable-SAM plugin | change | episodes |")
    print("|---|---:|---:|---:|---:|")
    methods = sorted({p.name.split("-")[1] for p in folder.glob(f"{name}-*-none.json")})
    for method in methods:
        runs = {}
        for plugin in ("none", "stable"):
            path = folder / f"{name}-{method}-{plugin}.json"
            if path.is_file():
                runs[plugin] = json.loads(path.read_text())
        if len(runs) < 2:
            continue
        if runs["none"]["evaluated_episodes_hash"] != runs["stable"]["evaluated_episodes_hash"]:
            raise SystemExit(f"{method}: the two runs saw different episodes")
        a, b = (100 * runs[k]["original_size"]["summary"]["miou_fss"] for k in ("none", "stable"))
        print(f"| `{method}` | {a:.1f} | {b:.1f} | {b - a:+.1f} | {runs['none']['num_episodes']} |")


if __name__ == "__main__":
    main()
