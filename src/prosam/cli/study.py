"""``prosam study verification``: ProSAM's verification study (section 5.3) as a command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from prosam.cli.options import (
    add_model_args,
    load_model,
)

if TYPE_CHECKING:
    pass


def _scales(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--scales must be comma-separated numbers: {text!r}"
        ) from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    from prosam.methods.prompt_encoder.verification_settings import VerificationSettings

    d = VerificationSettings()
    p = sub.add_parser("study", help="studies from the papers")
    ssub = p.add_subparsers(dest="study_command", required=True)
    v = ssub.add_parser(
        "verification",
        help="ProSAM section 5.3: fitted single prompt embeddings vs one prompt distribution",
    )
    v.add_argument("--image", required=True)
    v.add_argument(
        "--mask", required=True, help="binary mask PNG of the object (non-zero = object)"
    )
    v.add_argument("--out", required=True, help="folder for verification.json and .png")
    v.add_argument("--starts", type=int, default=d.starts, help="random starts (paper: 200)")
    v.add_argument("--tokens", type=int, default=d.tokens, help="prompt tokens per embedding")
    v.add_argument("--init-std", type=float, default=d.init_std)
    v.add_argument("--lr", type=float, default=d.lr)
    v.add_argument("--max-steps", type=int, default=d.max_steps)
    v.add_argument("--patience", type=int, default=d.patience)
    v.add_argument("--min-delta", type=float, default=d.min_delta)
    v.add_argument("--samples", type=int, default=d.samples, help="K draws per step")
    v.add_argument("--family", choices=["student_t", "gaussian"], default=d.family)
    v.add_argument("--nu", type=float, default=d.nu)
    v.add_argument("--n-mode", choices=["token", "all", "element"], default=d.n_mode)
    v.add_argument(
        "--scales",
        type=_scales,
        default=d.perturbation_scales,
        help="perturbation stds, comma-separated",
    )
    v.add_argument(
        "--draws", type=int, default=d.perturbation_draws, help="perturbations per scale"
    )
    v.add_argument("--seed", type=int, default=d.seed)
    v.add_argument("--no-plot", action="store_true")
    add_model_args(v)
    v.set_defaults(func=cmd_study_verification)


def cmd_study_verification(args: argparse.Namespace) -> int:
    from prosam.io import read_binary_mask, read_image, write_bytes_atomic
    from prosam.methods.prompt_encoder.verification import (
        VerificationSettings,
        plot_verification,
        run_verification,
    )
    from prosam.sam import Predictor

    image = read_image(args.image)
    mask, _ = read_binary_mask(args.mask, expected_size=image.shape[:2])
    settings = VerificationSettings(
        starts=args.starts,
        tokens=args.tokens,
        init_std=args.init_std,
        lr=args.lr,
        max_steps=args.max_steps,
        patience=args.patience,
        min_delta=args.min_delta,
        samples=args.samples,
        family=args.family,
        nu=args.nu,
        n_mode=args.n_mode,
        perturbation_scales=args.scales,
        perturbation_draws=args.draws,
        seed=args.seed,
    )
    model, cache = load_model(args)
    embedded = Predictor(model, cache=cache).embed(image)
    result = run_verification(model, embedded, mask, settings, progress=print)
    result["image"], result["mask"], result["model"] = str(args.image), str(args.mask), model.name
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "verification.json", json.dumps(result, indent=1).encode())
    singles = np.array([r["iou"] for r in result["singles"]])
    pert = result["perturbation"]
    print(
        f"single embeddings: IoU median {np.median(singles):.3f} (min {singles.min():.3f}, "
        f"max {singles.max():.3f}); mean prompt IoU {result['distribution']['mean']['iou']:.3f}, "
        f"at least as good as {100 * result['mean_beats_fraction']:.0f} % of them"
    )
    for i, scale in enumerate(pert["scales"]):
        med = float(np.median([c[i] for c in pert["singles"]]))
        print(
            f"perturbation std {scale:g}: singles' median IoU {med:.3f}, "
            f"mean prompt {pert['mean'][i]:.3f}"
        )
    if not args.no_plot:
        plot_verification(result, str(out / "verification.png"))
        print(out / "verification.png")
    return 0
