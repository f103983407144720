from __future__ import annotations

import subprocess
import sys

import pytest

import prosam


def test_public_api_resolves_lazily():
    assert callable(prosam.load) and callable(prosam.load_sam)
    assert prosam.Predictor.__name__ == "Predictor"
    with pytest.raises(AttributeError, match="no attribute"):
        _ = prosam.not_a_thing


def test_importing_prosam_does_not_import_torch():
    code = "import sys, prosam; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
