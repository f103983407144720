"""Stable-SAM plugin: identity at initialisation, gradients, attach/detach, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prosam.errors import InputError, WeightsError
from prosam.sam import FrozenSam, Predictor
from prosam.stable import (
    StableSamPlugin,
    attach_stable_plugin,
    count_parameters,
    is_attached,
    load_stable_plugin,
    save_stable_plugin,
)
from prosam.stable.prompts import sample_prompt
from prosam.stable.train import object_loss


@pytest.fixture(scope="module")
def scene(tiny_sam: FrozenSam):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    mask = np.zeros((90, 120), dtype=bool)
    mask[20:60, 30:95] = True
    return Predictor(tiny_sam).embed(image), mask


def _outputs(tiny_sam: FrozenSam, embedded, seed: int = 1) -> list[tuple[torch.Tensor, ...]]:
    """Low-res logits and scores for random point, box and mixed prompts."""
    predictor = Predictor(tiny_sam)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(4):
        points = rng.uniform(0, 90, (1 + i, 2)) if i != 1 else None
        labels = rng.integers(0, 2, 1 + i) if points is not None else None
        xs, ys = np.sort(rng.uniform(0, 120, 2)), np.sort(rng.uniform(0, 90, 2))
        box = np.array([xs[0], ys[0], xs[1], ys[1]]) if i % 2 else None
        pred = predictor.predict(
            embedded, points=points, point_labels=labels, box=box, multimask_output=i % 2 == 0
        )
        out.append((pred.low_res_logits.clone(), torch.as_tensor(pred.scores)))
    return out


def _assert_close(a, b, tol: float = 1e-5) -> None:
    for (la, sa), (lb, sb) in zip(a, b, strict=True):
        torch.testing.assert_close(la, lb, atol=tol, rtol=0)
        torch.testing.assert_close(sa, sb, atol=tol, rtol=0)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"blocks": (0, 1)},
        {"sample_pe": False},
        {"routing": False, "blocks": (0,)},
    ],
)
def test_zero_offsets_reproduce_plain_sam(tiny_sam, scene, options):
    embedded, _ = scene
    plain = _outputs(tiny_sam, embedded)
    plugin = StableSamPlugin.for_sam(tiny_sam, **options)
    with attach_stable_plugin(tiny_sam, plugin):
        assert is_attached(tiny_sam)
        plugged = _outputs(tiny_sam, embedded)
    assert not is_attached(tiny_sam)
    _assert_close(plain, plugged)


def test_detach_restores_modules_and_outputs(tiny_sam, scene):
    embedded, _ = scene
    layers = tiny_sam.sam.mask_decoder.transformer.layers
    originals = [layer.cross_attn_token_to_image for layer in layers]
    state = {k: v.clone() for k, v in tiny_sam.sam.state_dict().items()}
    plain = _outputs(tiny_sam, embedded)
    plugin = StableSamPlugin.for_sam(tiny_sam, blocks=(0, 1))
    with torch.no_grad():
        for i in (0, 1):
            plugin.block(i).offset.out.bias.copy_(torch.tensor([0.7, -0.4]))
    handle = attach_stable_plugin(tiny_sam, plugin)
    # SAM's state dict is untouched while attached (same keys, same tensors).
    attached_state = tiny_sam.sam.state_dict()
    assert list(attached_state) == list(state)
    assert all(torch.equal(attached_state[k], v) for k, v in state.items())
    with pytest.raises(InputError):
        attach_stable_plugin(tiny_sam, StableSamPlugin.for_sam(tiny_sam))
    moved = _outputs(tiny_sam, embedded)
    handle.detach()
    handle.detach()  # idempotent
    restored = [layer.cross_attn_token_to_image for layer in layers]
    assert all(a is b for a, b in zip(originals, restored, strict=True))
    _assert_close(plain, _outputs(tiny_sam, embedded), tol=0.0)
    # A non-zero offset changes the decoder's output.
    assert max(float((a[0] - b[0]).abs().max()) for a, b in zip(plain, moved, strict=True)) > 1e-4


def test_nonzero_offset_changes_outputs_and_routing_is_recorded(tiny_sam, scene):
    embedded, _ = scene
    plain = _outputs(tiny_sam, embedded)
    plugin = StableSamPlugin.for_sam(tiny_sam)
    with torch.no_grad():
        plugin.block(1).offset.out.bias.copy_(torch.tensor([1.0, -0.5]))
    with attach_stable_plugin(tiny_sam, plugin):
        moved = _outputs(tiny_sam, embedded)
    offsets = plugin.block(1).last_offsets
    assert offsets is not None
    torch.testing.assert_close(offsets[:, 0], torch.full_like(offsets[:, 0], 2.0 * np.tanh(1.0)))
    alpha = plugin.last_routing()[1]
    assert alpha is not None and alpha.shape[-1] == 2
    torch.testing.assert_close(alpha.sum(-1), torch.ones(alpha.shape[0]))  # s = 1 at init
    diff = max(float((a[0] - b[0]).abs().max()) for a, b in zip(plain, moved, strict=True))
    assert diff > 1e-4


def test_gradients_reach_only_the_plugin(tiny_sam, scene):
    embedded, mask = scene
    assert not any(p.requires_grad for p in tiny_sam.sam.parameters())
    plugin = StableSamPlugin.for_sam(tiny_sam, blocks=(0, 1))
    opt = torch.optim.SGD(plugin.parameters(), lr=1.0)
    rng = np.random.default_rng(0)
    first_step = {"offset.out.weight", "offset.out.bias", "router.scale"}
    with attach_stable_plugin(tiny_sam, plugin):
        for step in range(2):
            opt.zero_grad(set_to_none=True)
            loss = sum(
                object_loss(tiny_sam, embedded.embedding.clone(), embedded.geometry, prompt, mask)
                for prompt in (sample_prompt(k, mask, rng) for k in ("gt_box", "points_3"))
            )
            loss.backward()
            for name, p in plugin.named_parameters():
                assert p.grad is not None, name
                live = float(p.grad.abs().max()) > 0
                # At Δp = 0 the zero last offset conv blocks the earlier offset layers and
                # both routing branches coincide: only the last conv and s learn at first.
                expected = step > 0 or name.split(".", 2)[2] in first_step
                assert live == expected, (step, name)
            assert all(p.grad is None for p in tiny_sam.sam.parameters())
            opt.step()


def test_parameter_counts():
    # dim 256 (SAM's decoder): offset net 256*256+256 + 25*256+256 + 2*256 + 2*256+2 and
    # DRP 256*256+256 + 2*256 + 256*2+2 + 1 (the scale s).
    assert count_parameters(StableSamPlugin(256)) == 140_293
    assert StableSamPlugin(256, blocks=(0, 1)).count_parameters() == 2 * 140_293
    assert StableSamPlugin(256, offset_hidden=32).count_parameters() == 76_005
    assert StableSamPlugin(256, routing=False).count_parameters() == 73_474


def test_checkpoint_round_trip(tiny_sam, scene, tmp_path):
    embedded, _ = scene
    plugin = StableSamPlugin.for_sam(tiny_sam, blocks=(0, 1), offset_scale=3.0, sample_pe=False)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in plugin.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_stable_plugin(tmp_path / "plug", plugin, tiny_sam)
    loaded = load_stable_plugin(tmp_path / "plug.json", tiny_sam)
    assert loaded.config() == plugin.config()
    for (ka, a), (kb, b) in zip(
        plugin.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(a, b)
    with attach_stable_plugin(tiny_sam, plugin):
        a = _outputs(tiny_sam, embedded)
    with attach_stable_plugin(tiny_sam, loaded):
        b = _outputs(tiny_sam, embedded)
    _assert_close(a, b, tol=0.0)
    other = FrozenSam(tiny_sam.sam, "other", "tiny", "0" * 64)
    with pytest.raises(WeightsError):
        load_stable_plugin(tmp_path / "plug", other)
    assert load_stable_plugin(tmp_path / "plug", other, check_sam=False).dim == plugin.dim


def test_bad_attachments(tiny_sam):
    with pytest.raises(InputError):
        attach_stable_plugin(tiny_sam, StableSamPlugin(64))
    with pytest.raises(InputError):
        attach_stable_plugin(tiny_sam, StableSamPlugin.for_sam(tiny_sam, blocks=(2,)))
    with pytest.raises(InputError):
        StableSamPlugin(32, blocks=())
    assert not is_attached(tiny_sam)
