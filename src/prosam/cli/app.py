"""``prosam app``: the labelling page (``docs/app.md``)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from prosam.cli.options import add_model_args, load_model
from prosam.errors import InputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "app",
        help="a local labelling page: click a reference, preview, run the job",
        description="Serve the labelling page on http://HOST:PORT: open a reference image "
        "under --root, click on the object (SAM's mask appears at once), add references of "
        "one or several classes, preview the method on a few targets, then label a whole "
        "folder with the resumable `prosam label` job. Reads only files under --root; "
        "writes under --workdir. See docs/app.md.",
    )
    p.add_argument("--root", default=".", help="the folder whose images the page may open")
    p.add_argument(
        "--workdir",
        default="prosam-app",
        help="where uploads and jobs go (default ./prosam-app; jobs in WORKDIR/jobs/NAME)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="largest upload accepted")
    p.add_argument(
        "--max-pixels", type=int, default=40_000_000, help="largest image accepted, in pixels"
    )
    add_model_args(p)
    p.set_defaults(func=cmd_app)


def cmd_app(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
        raise InputError("prosam app needs its extra: pip install 'prosam[app]'")
    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port}: give 1..65535")
    if args.max_upload_mb <= 0 or args.max_pixels <= 0:
        raise InputError("--max-upload-mb and --max-pixels must be positive")
    from prosam.app import AppSession, AppSettings, serve
    from prosam.app.jobs import ModelOptions
    from prosam.sam import Predictor

    root = Path(args.root)
    if not root.is_dir():
        raise InputError(f"--root {args.root}: not a folder")
    model, cache = load_model(args)
    settings = AppSettings(
        root=root,
        workdir=Path(args.workdir).resolve(),
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        model_options=ModelOptions(
            model=args.model,
            variant=args.variant,
            cache_dir=args.cache_dir,
            device=args.device,
            backend=model.backend,
            precision=args.precision,
            max_pixels=args.max_pixels,
            no_download=args.no_download,
            no_embedding_cache=args.no_embedding_cache,
        ),
    )
    session = AppSession(model, settings, predictor=Predictor(model, cache=cache))
    print(
        f"prosam app: http://{args.host}:{args.port}/ (images under {root.resolve()}; Ctrl+C stops)"
    )
    serve(session, host=args.host, port=args.port)
    return 0
