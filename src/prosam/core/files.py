"""prosam's cache root, file hashes and verified downloads: what every weights source uses."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from platformdirs import user_cache_dir
from tqdm.auto import tqdm

from prosam.errors import WeightsError
from prosam.io import atomic_path

CACHE_ENV = "PROSAM_CACHE"


def cache_root(override: str | os.PathLike[str] | None = None) -> Path:
    """prosam's cache root: ``override``, else ``$PROSAM_CACHE``, else the user's XDG cache."""
    if override is not None:
        root = Path(override)
    elif os.environ.get(CACHE_ENV):
        root = Path(os.environ[CACHE_ENV])
    else:
        root = Path(user_cache_dir("prosam"))
    return root.expanduser()


def weights_cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The weights cache, ``<cache root>/weights``."""
    return cache_root(override) / "weights"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, what: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsError(
            f"{what}: sha256 mismatch (expected {expected}, got {actual}); "
            "the file is corrupt or not the published one"
        )


def download(url: str, dest: Path, sha256: str, *, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` atomically and verify its sha256."""
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, atomic_path(dest) as tmp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with (
                open(tmp, "wb") as fh,
                tqdm(
                    total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress
                ) as bar,
            ):
                while block := resp.read(1 << 20):
                    fh.write(block)
                    bar.update(len(block))
            verify_sha256(tmp, sha256, url)
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise WeightsError(
            f"could not download {url} ({err}). Without internet, download it elsewhere and "
            f"pass the file: `prosam weights fetch NAME --from FILE`"
        ) from err
    return dest
