from __future__ import annotations

import pytest
import torch

from prosam.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from prosam.errors import WeightsError


def _trained_pair():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-6)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
    return model, opt


def test_round_trip_restores_model_and_optimizer_exactly(tmp_path):
    model, opt = _trained_pair()
    config = {"method": "vrp", "fold": 0, "dims": [1, 2]}
    save_checkpoint(
        tmp_path / "ckpt", Checkpoint(model.state_dict(), config, opt.state_dict(), {"epoch": 3})
    )
    loaded = load_checkpoint(tmp_path / "ckpt.safetensors")
    assert loaded.config == config and loaded.extra == {"epoch": 3}
    model2, opt2 = _trained_pair()
    with torch.no_grad():
        for p in model2.parameters():
            p.zero_()
    model2.load_state_dict(loaded.model)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3, weight_decay=1e-6)
    opt2.load_state_dict(loaded.optimizer)
    # One more identical step on both gives identical parameters.
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_tampered_tensors_are_refused(tmp_path):
    model, _ = _trained_pair()
    path = save_checkpoint(tmp_path / "c", Checkpoint(model.state_dict(), {}))
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_checkpoint(path)
    with pytest.raises(WeightsError, match="needs both"):
        load_checkpoint(tmp_path / "missing")
