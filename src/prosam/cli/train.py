"""``prosam train``: episodic training of a VRP or ProSAM prompt encoder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from prosam.cli.options import (
    add_data_args,
    add_model_args,
    dataset_and_classes,
    load_model,
)
from prosam.cli.outputs import run_log
from prosam.errors import InputError
from prosam.methods.registry import method_names

if TYPE_CHECKING:
    pass


def add_parser(
    sub: argparse._SubParsersAction,
) -> None:
    p = sub.add_parser("train", help="train a VRP or ProSAM prompt encoder on base classes")
    add_data_args(p)
    p.set_defaults(classes="base")  # --classes all: a model for users, nothing held out
    trained = method_names(trained=True)
    p.add_argument("--method", choices=trained, required=True, help=" | ".join(trained))
    p.add_argument("--out", required=True, help="run folder (checkpoints, log, tensorboard)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--episodes-per-epoch", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=1e-6)
    p.add_argument(
        "--scheduler",
        choices=["cosine", "cosine_restarts"],
        default=None,
        help="default: cosine_restarts (every 15 epochs) for prosam, cosine for vrp",
    )
    p.add_argument("--restart-every", type=int, default=15)
    p.add_argument("--seed", type=int, default=321)
    p.add_argument(
        "--extra-data",
        action="append",
        default=[],
        metavar="SPEC",
        help="more training images (e.g. coco:../shared/data/msrc-v2), their classes joined "
        "to --data's by name and following its folds; unmatched classes are dropped "
        "(repeatable)",
    )
    for kind, what in (
        ("paired", "a target with two training classes, seen with a reference of each"),
        ("absent", "a target without the reference's class (empty ground truth)"),
        ("distractor", "a target where another class covers more than the reference's"),
    ):
        p.add_argument(
            f"--{kind}",
            type=float,
            default=0.0,
            metavar="FRACTION",
            help=f"fraction of {kind} episodes: {what} (default 0)",
        )
    p.add_argument(
        "--annotation", default="mask", choices=["point", "scribble", "box", "mask", "mixed"]
    )
    p.add_argument(
        "--val-episodes",
        default=None,
        help="episode file to choose the best checkpoint on (never the test list)",
    )
    p.add_argument(
        "--val-wrong-reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also validate with a reference of another class and report the reference gain "
        "and prediction overlap (default on; doubles the validation time)",
    )
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--backbone-checkpoint", default=None)
    p.add_argument("--backbone-input", type=int, default=512)
    p.add_argument("--samples", type=int, default=10, help="ProSAM: Monte-Carlo samples K")
    p.add_argument("--nu", type=float, default=5.0, help="ProSAM: degrees of freedom")
    p.add_argument(
        "--n-mode",
        choices=["token", "all", "element"],
        default="token",
        help="ProSAM: what the t-distribution's dimensionality n counts",
    )
    p.add_argument("--family", choices=["student_t", "gaussian"], default="student_t")
    p.add_argument(
        "--init-mu",
        choices=["identity", "default"],
        default="identity",
        help="ProSAM: the mean head starts as the identity (default) or PyTorch's init",
    )
    p.add_argument(
        "--prior",
        choices=["high", "fused", "reduced", "matcher"],
        default="high",
        help="the target prior (pseudo-mask): stride-32 backbone features (VRP-SAM), "
        "stride-16 + stride-32 matched together, the encoder's reduced features, or the "
        "training-free matcher's class mask",
    )
    p.add_argument(
        "--prior-bidirectional",
        action="store_true",
        help="keep only target cells whose best reference match is annotated (Matcher)",
    )
    p.add_argument(
        "--prior-attention",
        type=float,
        default=0.0,
        metavar="S",
        help="bias the target cross-attention by S x the normalised prior (0: VRP-SAM)",
    )
    p.add_argument(
        "--target-values",
        choices=["backbone", "sam", "sam+position"],
        default="backbone",
        help="what the prompts are read from in the target: the backbone's enhanced "
        "features (VRP-SAM), SAM's own image embedding, or that plus SAM's positional "
        "encoding of each cell",
    )
    p.add_argument(
        "--no-target-residual",
        dest="target_residual",
        action="store_false",
        help="prompts made only of what the queries read in the target (no query residual "
        "around the target cross-attention)",
    )
    p.add_argument(
        "--prior-keep",
        type=float,
        default=0.0,
        metavar="T",
        help="the target cross-attention reads only cells whose normalised prior is >= T "
        "(0: all cells)",
    )
    p.add_argument(
        "--anchor-points",
        type=int,
        default=0,
        metavar="K",
        help="also prompt SAM with K clicks spread over the prior's object cells, the learned "
        "tokens joining them through a gate that starts at 0 (needs --prior matcher; "
        "0: the papers' prompts only)",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/last")
    p.add_argument("--no-progress", action="store_true")
    add_model_args(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from prosam.backbones import build_backbone
    from prosam.core.files import cache_root
    from prosam.data.episodes import load_episodes
    from prosam.data.merge import merge_by_class_name
    from prosam.data.specs import load_dataset_spec
    from prosam.evaluation.evaluate import validation_miou, validation_scores
    from prosam.io import write_bytes_atomic
    from prosam.methods.prompt_encoder.feature_store import FeatureStore
    from prosam.methods.prompt_encoder.method import PromptEncoderMethod
    from prosam.methods.prompt_encoder.network import PromptNetwork, PromptNetworkConfig
    from prosam.methods.prompt_encoder.train import TrainSettings, train
    from prosam.sam import Predictor

    if args.classes == "novel":
        raise InputError(
            "training on a fold's novel classes would train on its test classes: use "
            "--classes base (the protocol) or all (a model for users, nothing held out)"
        )
    dataset, classes, scheme = dataset_and_classes(args)
    for spec in args.extra_data:
        extra = load_dataset_spec(spec, min_area_fraction=args.min_area)
        name = Path(spec.partition(":")[2].split(",")[0]).name or "extra"
        dataset, dropped = merge_by_class_name(dataset, extra, prefix=f"{name}/")
        print(
            f"{spec}: {dataset.stats['extra_images']} images joined"
            + (f"; classes without a counterpart dropped: {', '.join(dropped)}" if dropped else ""),
            flush=True,
        )
    model_sam, cache = load_model(args)
    backbone = build_backbone(args.backbone, weights=args.backbone_checkpoint)
    backbone.to(model_sam.device)
    config = PromptNetworkConfig(
        method=args.method,
        backbone=args.backbone,
        backbone_input=args.backbone_input,
        dim=model_sam.embed_dim,
        family=args.family,
        nu=args.nu,
        n_mode=args.n_mode,
        init_mu=args.init_mu,
        samples_train=args.samples,
        pseudo_mask_source=args.prior,
        bidirectional_prior=args.prior_bidirectional,
        prior_attention=args.prior_attention,
        target_values=args.target_values,
        target_residual=args.target_residual,
        prior_keep=args.prior_keep,
        anchor_points=args.anchor_points,
    )
    model = PromptNetwork(config, backbone.mid_channels).to(model_sam.device)
    val_episodes, val_classes = None, None
    if args.val_episodes:
        val_episodes, meta = load_episodes(args.val_episodes, dataset)
        val_classes = meta.get("classes")
        if set(val_classes or []) & set(classes):
            raise InputError(f"{args.val_episodes} holds base classes of fold {args.fold}")
    settings = TrainSettings(
        epochs=args.epochs,
        episodes_per_epoch=args.episodes_per_epoch,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        scheduler=args.scheduler or ("cosine_restarts" if args.method == "prosam" else "cosine"),
        restart_every=args.restart_every,
        seed=args.seed,
        annotation=args.annotation,
        paired_fraction=args.paired,
        absent_fraction=args.absent,
        distractor_fraction=args.distractor,
    )
    feature_root = cache_root(args.cache_dir) / "features"
    method_prior = None
    if model.needs_method_prior:
        from prosam.methods.matching.features import SemanticFeatures
        from prosam.methods.prompt_encoder.method_prior import matcher_prior

        semantic = SemanticFeatures(
            device=model_sam.device, cache_dir=cache_root(args.cache_dir) / "semantic"
        )
        method_prior = matcher_prior(model_sam, features=semantic)
    store = FeatureStore(
        Predictor(model_sam, cache=cache),
        backbone,
        args.backbone_input,
        feature_root,
        f"{args.backbone}:{args.backbone_checkpoint or 'default'}",
        prior=method_prior,
    )
    validate = None
    wrong_reference = args.val_wrong_reference
    if val_episodes and wrong_reference and len({e.class_id for e in val_episodes}) < 2:
        print("validation episodes of one class: no wrong-reference validation", flush=True)
        wrong_reference = False
    if val_episodes:

        def validate(net: PromptNetwork) -> float | dict[str, float]:
            method = PromptEncoderMethod(
                model_sam, backbone, net, features=store.features, prior=store.prior
            )
            if wrong_reference:
                return validation_scores(method, store.predictor, val_episodes, val_classes)
            return validation_miou(method, store.predictor, val_episodes, val_classes)

    run_config = {
        "model": config.to_dict(),
        "backbone_mid_channels": list(backbone.mid_channels),
        "backbone_checkpoint": args.backbone_checkpoint,
        "sam_model": model_sam.name,
        "sam_variant": model_sam.variant,
        "sam_weights_sha256": model_sam.weights_sha256,
        "sam_embed_dim": model_sam.embed_dim,
        "data": args.data,
        "extra_data": args.extra_data,
        "fold": args.fold,
        "folds": args.folds,
        "scheme": scheme,
        "train_classes": classes,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = run_log(out / "train.log")

    log(
        f"{args.method}: {run_config['trainable_parameters']:,} trainable parameters, "
        f"{len(classes)} {args.classes} classes, backbone {args.backbone}, SAM {model_sam.name}"
    )
    summary = train(
        model,
        model_sam,
        store,
        dataset,
        classes,
        settings,
        out,
        config=run_config,
        validate=validate,
        resume=args.resume,
        progress=not args.no_progress,
        log=log,
    )
    write_bytes_atomic(out / "summary.json", json.dumps(summary, indent=1).encode())
    log(
        f"done: {summary['train_seconds']:.0f} s training, "
        f"{summary['seconds_per_episode']:.2f} s per episode; checkpoints in {out}"
    )
    return 0
