"""Bundle a trained checkpoint into the package under a name (maintainers).

    python benchmarks/publish_checkpoint.py runs/fold0-vrp/best vrp-coco-fold0-minisam \
        --command "EPOCHS=6 ... prosam train ..."

Writes ``src/prosam/assets/checkpoints/<name>.{safetensors,json}`` (float16, no optimizer;
see :func:`prosam.pretrained.publish_checkpoint`). The name must be listed in
``prosam.pretrained.PRETRAINED`` with the same method.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prosam.core.checkpoint import load_checkpoint
from prosam.pretrained import PRETRAINED, publish_checkpoint

ASSETS = Path(__file__).resolve().parents[1] / "src" / "prosam" / "assets" / "checkpoints"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="checkpoint stem, e.g. runs/fold0-vrp/best")
    parser.add_argument("name", choices=sorted(PRETRAINED))
    parser.add_argument("--command", default="", help="the command that trained it")
    args = parser.parse_args()
    entry = PRETRAINED[args.name]
    config = load_checkpoint(args.source).config
    method = config.get("model", {}).get("method", config.get("method"))
    if {method, entry.method} not in ({"vrp"}, {"prosam"}, {"stable", "stable-sam"}):
        raise SystemExit(f"{args.source} holds {method!r}, {args.name} is {entry.method!r}")
    ASSETS.mkdir(parents=True, exist_ok=True)
    path = publish_checkpoint(args.source, ASSETS / args.name, note={"command": args.command})
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
