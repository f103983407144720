from __future__ import annotations

import numpy as np
import pytest
import torch

from prosam.backbones import build_backbone
from prosam.core.checkpoint import load_checkpoint
from prosam.data.specs import load_dataset_spec
from prosam.errors import InputError
from prosam.evaluation.evaluate import validation_miou
from prosam.methods.base import ReferenceMethod
from prosam.methods.prompt_encoder.feature_store import FeatureStore
from prosam.methods.prompt_encoder.method import PromptEncoderMethod
from prosam.methods.prompt_encoder.network import PromptNetwork, PromptNetworkConfig
from prosam.methods.prompt_encoder.train import TrainSettings, episode_loss, epoch_episodes, train
from prosam.sam import Predictor
from tests.fixtures_coco import write_coco_fixture


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("efficientnet_lite0", pretrained=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return load_dataset_spec(f"coco:{write_coco_fixture(tmp_path_factory.mktemp('c'))}")


def _model(method: str, backbone, **kw) -> PromptNetwork:
    config = PromptNetworkConfig(
        method=method, backbone_input=64, dim=32, num_queries=6, samples_train=3, **kw
    )
    torch.manual_seed(0)
    return PromptNetwork(config, backbone.mid_channels)


PRIOR_OPTIONS = {
    "target_values": "sam",
    "prior_attention": 3.0,
    "pseudo_mask_source": "fused",
    "bidirectional_prior": True,
    "target_residual": False,
    "prior_keep": 0.5,
}


@pytest.mark.parametrize(
    ("method", "config"),
    [
        ("vrp", {}),
        ("prosam", {}),
        ("vrp", PRIOR_OPTIONS),
        ("prosam", {**PRIOR_OPTIONS, "target_values": "sam+position"}),
    ],
)
def test_gradients_reach_exactly_the_prompt_encoder(method, config, backbone, tiny_sam, dataset):
    model = _model(method, backbone, **config)
    store = FeatureStore(Predictor(tiny_sam), backbone, 64, None, "b")
    settings = TrainSettings(episodes_per_epoch=2, batch_size=2, annotation="point")
    batch = epoch_episodes(dataset, [1, 2, 3], settings, epoch=0)
    loss = episode_loss(model.training_prompts, model, tiny_sam, store, batch)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in tiny_sam.sam.parameters())
    assert all(p.grad is None for p in backbone.parameters())


def test_prosam_trains_k_samples_and_predicts_with_the_mean(backbone, tiny_sam, dataset):
    model = _model("prosam", backbone)
    sample = dataset.samples_with_class(1)[0]
    image = sample.image()
    feats = FeatureStore(Predictor(tiny_sam), backbone, 64, None, "b").features(image)
    ann = torch.from_numpy(sample.mask(1)[0].astype(np.float32))[None, None]
    assert model.training_prompts(feats, ann, feats).shape == (3, 1, 6, 32)
    model.eval()
    dist = model(feats, ann, feats)
    assert torch.equal(model.mean_prompts(feats, ann, feats), dist.mu)


@pytest.mark.parametrize(
    ("method", "options", "config"),
    [
        ("vrp", {}, {}),
        ("prosam", {}, {}),
        ("prosam", {"strategy": "vote", "uncertainty": True}, {}),
        ("vrp", {}, PRIOR_OPTIONS),
        ("vrp", {}, {**PRIOR_OPTIONS, "target_values": "sam+position"}),
    ],
)
def test_prompt_method_predicts_low_res_logits(
    method, options, config, backbone, tiny_sam, dataset
):
    from prosam.evaluation.references import episode_inputs

    predictor = Predictor(tiny_sam)
    model = _model(method, backbone, **config)
    pm = PromptEncoderMethod(tiny_sam, backbone, model, **options)
    assert isinstance(pm, ReferenceMethod)
    ep = epoch_episodes(dataset, [1], TrainSettings(episodes_per_epoch=1), 0)[0]
    refs, target, _, _ = episode_inputs(ep, predictor)
    pm.fit(refs + refs)  # two shots: prompts concatenated
    out = pm.predict(target)
    assert out.low_res_logits.shape == (1, 32, 32)
    if options.get("uncertainty"):
        u = out.extras["uncertainty"]
        assert u.shape == (32, 32) and float(u.min()) >= 0 and float(u.max()) <= 1
    again = pm.predict(target)
    assert torch.equal(out.low_res_logits, again.low_res_logits)


def test_train_writes_checkpoints_and_resumes(backbone, tiny_sam, dataset, tmp_path):
    store = FeatureStore(Predictor(tiny_sam), backbone, 64, tmp_path / "feat", "b")
    settings = TrainSettings(epochs=2, episodes_per_epoch=4, batch_size=2)
    val = epoch_episodes(dataset, [4], TrainSettings(episodes_per_epoch=3, seed=9), 0)
    model = _model("vrp", backbone)
    config = {"model": model.config.to_dict()}
    summary = train(
        model,
        tiny_sam,
        store,
        dataset,
        [1, 2, 3],
        settings,
        tmp_path / "run",
        config=config,
        validate=lambda net: validation_miou(
            PromptEncoderMethod(tiny_sam, store.backbone, net, features=store.features),
            store.predictor,
            val,
        ),
        progress=False,
        log=lambda _: None,
    )
    assert [h["epoch"] for h in summary["history"]] == [0, 1]
    last = load_checkpoint(tmp_path / "run" / "last")
    assert last.extra["epoch"] == 1 and last.config == config and last.optimizer is not None
    for k, v in model.state_dict().items():
        assert torch.equal(last.model[k], v)
    # Asking for one more epoch resumes after epoch 1 instead of starting over.
    more = TrainSettings(epochs=3, episodes_per_epoch=4, batch_size=2)
    resumed = _model("vrp", backbone)
    summary = train(
        resumed,
        tiny_sam,
        store,
        dataset,
        [1, 2, 3],
        more,
        tmp_path / "run",
        config=config,
        resume=True,
        progress=False,
        log=lambda _: None,
    )
    assert [h["epoch"] for h in summary["history"]] == [0, 1, 2]
    assert (tmp_path / "run" / "best.safetensors").is_file()


def test_epoch_episodes_are_reproducible_and_mixed(dataset):
    s = TrainSettings(episodes_per_epoch=20, annotation="mixed")
    a, b = epoch_episodes(dataset, [1, 2], s, 3), epoch_episodes(dataset, [1, 2], s, 3)
    assert a == b and a != epoch_episodes(dataset, [1, 2], s, 4)
    assert len({e.annotation for e in a}) > 1


def test_chunked_decoding_matches_one_batch(tiny_sam):
    from prosam.methods.prompt_encoder.network import decode_prompt_logits

    torch.manual_seed(0)
    size = tuple(tiny_sam.sam.prompt_encoder.image_embedding_size)
    emb = torch.randn(2, tiny_sam.embed_dim, *size)
    prompts = torch.randn(3, 2, 4, tiny_sam.embed_dim)
    with torch.no_grad():
        whole, iou_whole = decode_prompt_logits(tiny_sam, emb, prompts, chunk=3)
        single, iou_single = decode_prompt_logits(tiny_sam, emb, prompts, chunk=1)
        pairs, _ = decode_prompt_logits(tiny_sam, emb, prompts, chunk=2)
    assert whole.shape == (3, 2, 1, *single.shape[-2:])
    torch.testing.assert_close(single, whole, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pairs, whole, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou_single, iou_whole, atol=1e-4, rtol=1e-4)
    with pytest.raises(Exception, match="chunk"):
        decode_prompt_logits(tiny_sam, emb, prompts, chunk=0)


def test_prosam_mean_prompt_starts_as_its_vrp_prompt(backbone):
    model = _model("prosam", backbone).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        feats = backbone(torch.rand(1, 3, 64, 64))
        ann = torch.zeros(1, 1, 64, 64)
        ann[..., 8:40, 8:40] = 1
        mean = model.mean_prompts(feats, ann, feats)
        vrp = model.encoder.encoder(feats.mid, feats.high, ann, feats.mid, feats.high)
    torch.testing.assert_close(mean, vrp)
    other = _model("prosam", backbone, init_mu="default").eval()
    with torch.no_grad():
        assert not torch.allclose(other.mean_prompts(feats, ann, feats), vrp)
    with pytest.raises(ValueError, match="init_mu"):
        _model("prosam", backbone, init_mu="zeros")


@pytest.mark.parametrize("method", ["vrp", "prosam"])
def test_resume_reproduces_an_uninterrupted_run(method, backbone, tiny_sam, dataset, tmp_path):
    store = FeatureStore(Predictor(tiny_sam), backbone, 64, tmp_path / "feat", "b")
    mix = {"paired_fraction": 0.5, "absent_fraction": 0.25}

    def run(out, epochs, resume=False):
        model = _model(method, backbone)
        settings = TrainSettings(epochs=epochs, episodes_per_epoch=4, batch_size=2, lr=1e-2, **mix)
        train(
            model,
            tiny_sam,
            store,
            dataset,
            [1, 2, 3],
            settings,
            out,
            config={},
            resume=resume,
            progress=False,
            log=lambda _: None,
        )
        return model

    whole = run(tmp_path / "whole", 2)
    run(tmp_path / "cut", 1)
    resumed = run(tmp_path / "cut", 2, resume=True)
    start = _model(method, backbone).state_dict()
    changed = [k for k, v in whole.state_dict().items() if not torch.equal(v, start[k])]
    assert changed
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=1e-6)


def test_epoch_units_keep_pairs_together(dataset):
    from prosam.methods.prompt_encoder.train import epoch_units

    settings = TrainSettings(episodes_per_epoch=20, paired_fraction=0.6, absent_fraction=0.2)
    units = epoch_units(dataset, [1, 2, 3, 4], settings, 0)
    pairs = [u for u in units if len(u) == 2]
    assert len(pairs) == 6 and all(a.target is b.target for a, b in pairs)
    flat = epoch_episodes(dataset, [1, 2, 3, 4], settings, 0)
    assert flat == [e for u in units for e in u]
    plain = TrainSettings(episodes_per_epoch=20)
    assert all(len(u) == 1 for u in epoch_units(dataset, [1, 2, 3, 4], plain, 0))
    with pytest.raises(Exception, match="sum to at most 1"):
        TrainSettings(paired_fraction=0.9, absent_fraction=0.2)


def test_target_sam_region_crops_the_padding_and_adds_positions(tiny_sam):
    from prosam.methods.prompt_encoder.network import target_sam_region
    from prosam.sam.predictor import ImageEmbedding
    from prosam.sam.transforms import ImageGeometry

    dim = tiny_sam.embed_dim
    emb = torch.randn(1, dim, 16, 16, generator=torch.Generator().manual_seed(7))
    pe = tiny_sam.sam.prompt_encoder.get_dense_pe()
    side = int(pe.shape[-1]) * 16  # SAM's input side: 16 px per embedding cell
    # A 1:2 image fills the top half of the padded square input.
    geometry = ImageGeometry((50, 100), (side // 2, side), side)
    embedded = ImageEmbedding(emb[..., : pe.shape[-2], : pe.shape[-1]], geometry)
    h, w = pe.shape[-2] // 2, pe.shape[-1]
    plain = target_sam_region(tiny_sam, embedded, (h, w))
    torch.testing.assert_close(plain[0], embedded.embedding[0, :, :h, :w])
    placed = target_sam_region(tiny_sam, embedded, (h, w), with_position=True)
    torch.testing.assert_close(placed - plain, pe[:, :, :h, :w].expand_as(plain))


class _HalfMask:
    """A reference method whose class mask is the left (or right) half of the input."""

    name = "half"

    def __init__(self, left: bool = True) -> None:
        self.left = left
        self.fits = 0
        self.predictions = 0

    def fit(self, references) -> None:
        self.fits += 1

    def predict(self, target):
        from prosam.methods.base import MethodOutput

        self.predictions += 1
        logits = torch.full((1, 32, 32), -20.0)
        if self.left:
            logits[:, :, :16] = 20.0
        else:
            logits[:, :, 16:] = 20.0
        return MethodOutput(logits, 1.0)


def test_method_prior_is_the_methods_mask_on_the_backbone_grid(tiny_sam, dataset):
    from prosam.evaluation.references import episode_inputs
    from prosam.methods.prompt_encoder.method_prior import MethodPrior

    ep = epoch_episodes(dataset, [1], TrainSettings(episodes_per_epoch=1), 0)[0]
    refs, target, _, _ = episode_inputs(ep, Predictor(tiny_sam))
    method = _HalfMask()
    prior = MethodPrior(method, memory=2)
    out = prior(refs, target, (8, 8), key="a")
    assert out.shape == (1, 1, 8, 8)
    # The image covers the whole padded input only if it is square; the left half of the
    # input is at least the left half of the image's columns on the grid.
    assert float(out[0, 0, :, 0].min()) > 0.99
    assert prior(refs, target, (8, 8), key="a") is out and method.predictions == 1
    prior(refs, target, (8, 8), key="b")
    prior(refs, target, (8, 8), key="c")  # memory 2: "a" is forgotten
    prior(refs, target, (8, 8), key="a")
    assert method.predictions == 4
    # The same references are fitted once; other ones are fitted again.
    assert method.fits == 1
    prior(list(refs), target, (8, 8))
    assert method.fits == 2


def test_a_model_on_a_method_prior_trains_and_reads_it(backbone, tiny_sam, dataset):
    from prosam.methods.prompt_encoder.method_prior import MethodPrior

    model = _model("vrp", backbone, pseudo_mask_source="matcher", prior_keep=0.5)
    assert model.needs_method_prior
    settings = TrainSettings(episodes_per_epoch=2, batch_size=2, annotation="point")
    batch = epoch_episodes(dataset, [1, 2, 3], settings, epoch=0)
    model.eval()  # no dropout: the two runs differ only by the prior
    prompts = []

    def recorded(*args):
        prompts.append(model.training_prompts(*args))
        return prompts[-1]

    for left in (True, False):
        store = FeatureStore(
            Predictor(tiny_sam), backbone, 64, None, "b", prior=MethodPrior(_HalfMask(left))
        )
        model.zero_grad()
        episode_loss(recorded, model, tiny_sam, store, batch).backward()
    assert not torch.allclose(prompts[0], prompts[1])
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    no_prior = FeatureStore(Predictor(tiny_sam), backbone, 64, None, "b")
    with pytest.raises(InputError, match="method prior"):
        episode_loss(model.training_prompts, model, tiny_sam, no_prior, batch)


def test_anchor_cells_spread_over_the_objects_cells_then_repeat():
    from prosam.methods.prompt_encoder.anchors import anchor_cells

    prior = torch.zeros(5, 5)
    prior[0, 0], prior[0, 1], prior[4, 4] = 0.9, 0.7, 0.6
    assert anchor_cells(prior, 2).tolist() == [0, 24]  # the likeliest, then the farthest
    assert anchor_cells(prior, 4).tolist() == [0, 24, 1, 0]  # three cells: they repeat
    prior[:] = 0.1
    prior[2, 3] = 0.3
    assert anchor_cells(prior, 3).tolist()[0] == 13  # nothing inside: the likeliest cells
    with pytest.raises(InputError, match="at least 1"):
        anchor_cells(prior, 0)


def test_anchor_prompts_are_sams_clicks_at_the_chosen_cells(tiny_sam):
    from prosam.methods.prompt_encoder.anchors import anchor_prompts
    from prosam.sam.transforms import geometry_for, transform_coords

    geometry = geometry_for((100, 200), tiny_sam.image_size)
    prior = torch.zeros(1, 1, 4, 4)
    prior[0, 0, 1, 2] = 1.0  # the cell centred at x = 2.5 * 200 / 4, y = 1.5 * 100 / 4
    got = anchor_prompts(tiny_sam, prior, [geometry], 2)
    clicks = transform_coords(torch.tensor([[[125.0, 37.5]] * 2]), geometry)
    expected, _ = tiny_sam.sam.prompt_encoder(
        points=(clicks, torch.ones(1, 2, dtype=torch.int64)), boxes=None, masks=None
    )
    assert got.shape == (1, 3, tiny_sam.embed_dim)  # two clicks and SAM's padding token
    torch.testing.assert_close(got, expected)
    with pytest.raises(InputError, match="geometries"):
        anchor_prompts(tiny_sam, prior, [], 2)


def test_anchored_learned_tokens_start_gated_off_and_then_train(backbone, tiny_sam, dataset):
    from prosam.methods.prompt_encoder.method_prior import MethodPrior

    with pytest.raises(InputError, match="method's prior"):
        PromptNetworkConfig(anchor_points=2, pseudo_mask_source="high")
    model = _model("vrp", backbone, pseudo_mask_source="matcher", anchor_points=2)
    store = FeatureStore(
        Predictor(tiny_sam), backbone, 64, None, "b", prior=MethodPrior(_HalfMask())
    )
    batch = epoch_episodes(
        dataset, [1, 2, 3], TrainSettings(episodes_per_epoch=2, batch_size=2), epoch=0
    )
    episode_loss(model.training_prompts, model, tiny_sam, store, batch).backward()
    # at the start only the gate learns: the learned tokens enter multiplied by it (0)
    assert float(model.prompt_gate.grad.abs()) > 0
    assert all(
        p.grad is None or float(p.grad.abs().sum()) == 0
        for name, p in model.named_parameters()
        if name != "prompt_gate"
    )
    with torch.no_grad():
        model.prompt_gate.fill_(0.5)
    model.zero_grad()
    episode_loss(model.training_prompts, model, tiny_sam, store, batch).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in tiny_sam.sam.parameters())
    with pytest.raises(InputError, match="anchors"):
        model.with_anchors(torch.zeros(1, 1, 6, 32), None)


def test_an_anchored_model_clicks_where_its_prior_is(backbone, tiny_sam, dataset):
    from prosam.evaluation.references import episode_inputs
    from prosam.methods.prompt_encoder.method_prior import MethodPrior

    model = _model("prosam", backbone, pseudo_mask_source="matcher", anchor_points=3)
    ep = epoch_episodes(dataset, [1], TrainSettings(episodes_per_epoch=1), 0)[0]
    refs, target, _, _ = episode_inputs(ep, Predictor(tiny_sam))
    masks = []
    for left in (True, False):
        method = PromptEncoderMethod(
            tiny_sam, backbone, model, prior=MethodPrior(_HalfMask(left)), uncertainty=True
        )
        method.fit(refs)
        out = method.predict(target)
        assert out.low_res_logits.shape == (1, *tiny_sam.sam.prompt_encoder.mask_input_size)
        masks.append(out.low_res_logits)
    assert not torch.allclose(masks[0], masks[1])
