"""Start-up time of the ``prosam`` command: ``prosam --help`` and ``prosam <command> --help``
against ``import torch`` (what a command pays once it runs), each a fresh interpreter.

    python benchmarks/cli_startup.py --repeats 5

Writes ``benchmarks/reports/cli_startup.json`` and ``.md`` (``--out`` changes the stem).
The parser imports no model code (``tests/test_cli.py`` checks it); this measures it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from prosam.io import write_bytes_atomic

CASES = {
    "prosam --help": ["-m", "prosam.cli", "--help"],
    "prosam label --help": ["-m", "prosam.cli", "label", "--help"],
    "prosam segment --help": ["-m", "prosam.cli", "segment", "--help"],
    "python -c pass": ["-c", "pass"],
    "python -c 'import torch'": ["-c", "import torch"],
}


def wall_times(args: list[str], repeats: int) -> list[float]:
    """Seconds of ``python args`` run ``repeats`` times (after one warm-up run)."""
    subprocess.run([sys.executable, *args], capture_output=True, check=True)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *args], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/reports/cli_startup")
    args = parser.parse_args()
    rows = {}
    for name, argv in CASES.items():
        times = wall_times(argv, args.repeats)
        rows[name] = {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
            "n": len(times),
        }
        print(f"{name}: median {rows[name]['median_s']:.3f} s", flush=True)
    result = {"python": platform.python_version(), "machine": platform.machine(), "runs": rows}
    out = Path(args.out)
    write_bytes_atomic(out.with_suffix(".json"), (json.dumps(result, indent=2) + "\n").encode())
    lines = [
        "# `prosam` start-up time",
        "",
        f"`python benchmarks/cli_startup.py --repeats {args.repeats}` (Python "
        f"{result['python']}, {result['machine']}; a fresh interpreter each run, after one "
        "warm-up).",
        "",
        "| command | median s | min s | max s |",
        "|---|---:|---:|---:|",
        *(
            f"| `{name}` | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} |"
            for name, r in rows.items()
        ),
        "",
    ]
    write_bytes_atomic(out.with_suffix(".md"), "\n".join(lines).encode())


if __name__ == "__main__":
    main()
