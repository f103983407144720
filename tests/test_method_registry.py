"""Registry-wide tests: every registered method is built, fitted and run the same way, and
declares the capabilities its spec says. A new method is picked up with no edit here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prosam.backbones import build_backbone
from prosam.cli import build_parser, main
from prosam.core.checkpoint import Checkpoint, save_checkpoint
from prosam.errors import InputError
from prosam.io import write_image, write_mask_png
from prosam.methods import (
    MethodOutput,
    MethodSpec,
    Reference,
    ReferenceMethod,
    Target,
    build_method,
    capabilities_of,
    get_method,
    list_methods,
    method_names,
    register_method,
)
from prosam.methods.capabilities import CAPABILITIES
from prosam.methods.prompt_encoder.network import PromptNetwork, PromptNetworkConfig
from prosam.methods.registry import unregister_method
from prosam.sam import Predictor

#: Options that make a method quick on the tiny SAM (a method not named runs at defaults).
QUICK = {
    "cpc": {"num_sets": 4, "outer_steps": 1},
    "cpc_uniform": {"num_sets": 4, "outer_steps": 1},
    "cpc_best_single": {"num_sets": 4, "outer_steps": 1},
}


class ToyMethod:
    """The documented example of a training-free method: predicts the reference's mean
    annotation as a constant logit map (``docs/architecture.md``)."""

    name = "toy"

    def __init__(self, model, *, logit: float = 1.0) -> None:
        self.model = model
        self.logit = logit
        self.fitted = False

    def fit(self, references) -> None:
        if not references:
            raise InputError("fit needs at least one reference")
        self.fitted = True

    def predict(self, target) -> MethodOutput:
        size = self.model.sam.prompt_encoder.mask_input_size
        return MethodOutput(torch.full((1, *size), self.logit), score=0.5)


@pytest.fixture()
def toy_registered():
    spec = register_method(
        MethodSpec("toy", "tests.test_method_registry:ToyMethod", "a constant mask (tests)")
    )
    yield spec
    unregister_method("toy")


@pytest.fixture(scope="module")
def episode(tiny_sam):
    rng = np.random.default_rng(0)
    predictor = Predictor(tiny_sam)
    image = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    ann = np.zeros((60, 90), bool)
    ann[15:30, 30:85] = True
    target = rng.integers(0, 256, (50, 120, 3), dtype=np.uint8)
    return (
        [Reference(image, ann, predictor.embed(image))],
        Target(target, predictor.embed(target)),
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_sam):
    """An (untrained) checkpoint for every trained method, for the tiny SAM."""
    folder = tmp_path_factory.mktemp("ckpt")
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    paths = {}
    for spec in list_methods(trained=True):
        config = PromptNetworkConfig(
            method=spec.name, backbone_input=64, dim=tiny_sam.embed_dim, num_queries=4
        )
        torch.manual_seed(0)
        model = PromptNetwork(config, backbone.mid_channels)
        doc = {
            "model": config.to_dict(),
            "backbone_mid_channels": list(backbone.mid_channels),
            "sam_embed_dim": tiny_sam.embed_dim,
        }
        save_checkpoint(folder / spec.name, Checkpoint(model.state_dict(), doc))
        paths[spec.name] = str(folder / spec.name)
    return paths


def test_specs_are_well_formed():
    names = method_names()
    assert len(names) == len(set(names)) >= 7
    assert {"persam", "geometric", "vrp", "prosam", "cpc"} <= set(names)
    for spec in list_methods():
        assert spec.summary and "\n" not in spec.summary
        assert set(spec.capabilities) <= set(CAPABILITIES)
        assert get_method(spec.name) is spec
    assert set(method_names(trained=True)) | set(method_names(trained=False)) == set(names)


@pytest.mark.parametrize("name", method_names())
def test_every_method_builds_fits_and_predicts(name, tiny_sam, episode, checkpoints):
    spec = get_method(name)
    refs, target = episode
    method = build_method(name, tiny_sam, checkpoint=checkpoints.get(name), **QUICK.get(name, {}))
    assert isinstance(method, ReferenceMethod)
    assert method.name == name
    assert capabilities_of(method) == spec.capabilities
    method.fit(refs)
    out = method.predict(target)
    assert isinstance(out, MethodOutput)
    assert out.low_res_logits.shape == (1, 32, 32)
    assert torch.isfinite(out.low_res_logits).all() and math.isfinite(out.score)


@pytest.mark.parametrize("name", method_names())
def test_every_method_rejects_an_unknown_option(name, tiny_sam, checkpoints):
    with pytest.raises(InputError, match=name):
        build_method(name, tiny_sam, checkpoint=checkpoints.get(name), no_such_option=1)


@pytest.mark.parametrize("name", [s.name for s in list_methods() if not s.takes_checkpoint])
def test_methods_that_take_no_checkpoint_refuse_one(name, tiny_sam):
    if get_method(name).trained:
        pytest.fail(f"{name} is trained but takes no checkpoint")
    with pytest.raises(InputError, match="training-free"):
        build_method(name, tiny_sam, checkpoint="x")


@pytest.mark.parametrize("name", method_names(trained=True))
def test_trained_methods_need_a_checkpoint_for_a_sam_without_a_bundled_one(name, tiny_sam):
    with pytest.raises(InputError, match="needs --checkpoint"):
        build_method(name, tiny_sam)


def test_unknown_and_duplicate_names_are_input_errors(tiny_sam):
    with pytest.raises(InputError, match=r"unknown method 'nope'.*persam"):
        build_method("nope", tiny_sam)
    with pytest.raises(InputError, match="already registered"):
        register_method(MethodSpec("persam", "prosam.methods.persam:PerSAM", "again"))
    with pytest.raises(InputError, match="capabilities"):
        register_method(MethodSpec("x", "m:f", "s", capabilities=frozenset({"flying"})))


@pytest.mark.parametrize("command", ["segment", "label", "eval fss", "eval multi-entity"])
def test_method_choices_come_from_the_registry(command, capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args([*command.split(), "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name in method_names():
        assert name in help_text


def test_a_toy_method_is_one_registry_line(toy_registered, tiny_sam, episode, tmp_path):
    refs, target = episode
    method = build_method("toy", tiny_sam, logit=2.0)
    method.fit(refs)
    assert torch.all(method.predict(target).low_res_logits == 2.0)
    assert "toy" in method_names(trained=False)
    # ... and every command that takes --method offers it.
    write_image(tmp_path / "ref.png", refs[0].image)
    write_mask_png(tmp_path / "ref-mask.png", refs[0].annotation)
    write_image(tmp_path / "t.png", target.image)
    argv = ["segment", "--ref", str(tmp_path / "ref.png"), "--ref-mask"]
    argv += [str(tmp_path / "ref-mask.png"), str(tmp_path / "t.png"), "--out"]
    argv += [str(tmp_path / "out"), "--method", "toy", "--model", "tiny", "--no-embedding-cache"]
    assert main(argv) == 0
    assert (tmp_path / "out" / "t.png").is_file()
