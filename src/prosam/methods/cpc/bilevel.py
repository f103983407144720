"""CPC-SAM's bi-level optimisation, first-order, on an episode's support data.

The random annotation draws of every support image are split into two halves of M sets each
(same recipes, different draws): half A and half B. One *round* is

1. **lower level** (``lower_steps`` Adam steps on half A): update the decoder adapter θ
   (:mod:`.adapters`) on the objective of :mod:`.losses`, CaPL fixed (its weights are
   computed without gradient);
2. **upper level** (``upper_steps`` Adam steps on half B): update CaPL φ on the same
   objective, decoded through the *updated* θ used as a constant.

Rounds repeat ``outer_steps`` times. The upper-level gradient is first-order (like
first-order MAML or DARTS' first-order variant): ``∇_φ L_B(φ, θ')`` at the current
``θ' = θ'(φ)``, without the ``∂θ'/∂φ`` term, so no second derivatives. SAM's own weights are
never updated; at each level exactly one parameter group receives gradients (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from prosam.errors import InputError
from prosam.methods.cpc.adapters import DecoderAdapter, decode_sets
from prosam.methods.cpc.capl import CausalPromptLearner, PromptWeights, calibrated_prompt
from prosam.methods.cpc.losses import LossTerms, LossWeights, cumulative_loss
from prosam.sam.model import FrozenSam
from prosam.sam.predictor import ImageEmbedding
from prosam.sam.transforms import resize_nearest


@dataclass
class SupportItem:
    """One entity on one support image: its embedding ``(1, C, h, w)`` and its ground truth
    ``target (1, 1, h', w')`` over the unpadded region of the low-res logits."""

    embedding: Tensor
    target: Tensor
    ignore: Tensor | None = None
    entity: int = 0

    def crop(self, logits: Tensor) -> Tensor:
        """Low-res logits ``(..., H, W)`` cropped to the target's unpadded region."""
        return logits[..., : self.target.shape[-2], : self.target.shape[-1]]


def support_item(
    embedded: ImageEmbedding,
    mask: np.ndarray,
    ignore: np.ndarray | None = None,
    *,
    entity: int = 0,
) -> SupportItem:
    """A :class:`SupportItem` from an image embedding and an ``(H, W)`` mask, as
    ``prosam train`` compares logits with the ground truth (crop, nearest resize)."""
    emb = embedded.embedding.detach().clone()  # a normal tensor, even from inference mode
    g = embedded.geometry
    low = 4 * emb.shape[-1]
    h = max(1, round(low * g.input_size[0] / g.image_size))
    w = max(1, round(low * g.input_size[1] / g.image_size))
    target = torch.from_numpy(resize_nearest(np.asarray(mask, bool), (h, w)).astype(np.float32))
    ign = None
    if ignore is not None:
        ign = torch.from_numpy(resize_nearest(np.asarray(ignore, bool), (h, w)))[None, None]
        ign = ign.to(emb.device)
    return SupportItem(emb, target[None, None].to(emb.device), ign, entity)


@dataclass
class BilevelConfig:
    """The schedule: ``outer_steps`` rounds of ``lower_steps`` θ-steps then ``upper_steps``
    φ-steps (Adam at ``lr_lower`` / ``lr_upper``)."""

    outer_steps: int = 10
    lower_steps: int = 1
    upper_steps: int = 1
    lr_lower: float = 1e-3
    lr_upper: float = 1e-2
    loss: LossWeights = field(default_factory=LossWeights)


#: How the M weighted sets become one prediction (see :func:`decode_calibrated`).
COMBINE_MODES = ("tokens", "masked_tokens", "logits")


def check_combine(combine: str) -> None:
    if combine not in COMBINE_MODES:
        raise InputError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")


def decode_items(
    sam: FrozenSam,
    items: Sequence[SupportItem],
    tokens: Tensor,
    weights: PromptWeights,
    adapter: DecoderAdapter | None,
    *,
    valid: Tensor | None = None,
    combine: str = "tokens",
    pad_token: Tensor | None = None,
    detach_adapter: bool = False,
) -> tuple[list[Tensor], list[Tensor]]:
    """Per item n: its M sets and its calibrated prediction decoded on its image, cropped:
    ``(M, 1, h, w)`` and ``(1, 1, h, w)``.

    ``combine="tokens"`` / ``"masked_tokens"`` decode the calibrated prompt
    (:func:`~.capl.calibrated_prompt`, the latter over valid tokens only);
    ``combine="logits"`` takes ``Σ_m w[n, m] z[n, m]`` of the decoded sets.
    """
    check_combine(combine)
    w = weights.combined
    calibrated = None
    if combine != "logits":
        mask = valid if combine == "masked_tokens" else None
        calibrated = calibrated_prompt(tokens, w, mask, pad_token)
    sets, cals = [], []
    for n, item in enumerate(items):
        batch = tokens[n] if calibrated is None else torch.cat([tokens[n], calibrated[n : n + 1]])
        logits, _ = decode_sets(sam, item.embedding, batch, adapter, detach_adapter=detach_adapter)
        logits = item.crop(logits)
        if calibrated is None:
            sets.append(logits)
            cals.append(torch.einsum("m,mchw->chw", w[n].to(logits), logits)[None])
        else:
            sets.append(logits[:-1])
            cals.append(logits[-1:])
    return sets, cals


def decode_calibrated(
    sam: FrozenSam,
    embedding: Tensor,
    tokens: Tensor,
    valid: Tensor,
    weights: PromptWeights,
    adapter: DecoderAdapter | None,
    *,
    combine: str = "tokens",
    pad_token: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The N calibrated predictions on one ``(1, C, h, w)`` image (no grad to the adapter):
    logits ``(N, 1, 4h, 4w)`` and predicted IoUs ``(N,)`` (for ``"logits"``, both are the
    weighted averages over the M sets)."""
    check_combine(combine)
    w = weights.combined
    if combine != "logits":
        mask = valid if combine == "masked_tokens" else None
        prompts = calibrated_prompt(tokens, w, mask, pad_token)
        return decode_sets(sam, embedding, prompts, adapter, detach_adapter=True)
    n, m = tokens.shape[:2]
    logits, iou = decode_sets(sam, embedding, tokens.flatten(0, 1), adapter, detach_adapter=True)
    logits = logits.reshape(n, m, *logits.shape[1:])
    wt = w.to(logits)
    return torch.einsum("nm,nmchw->nchw", wt, logits), (wt * iou.reshape(n, m)).sum(1)


class BilevelCalibrator:
    """Runs the first-order bi-level schedule of the module docstring."""

    def __init__(
        self,
        sam: FrozenSam,
        capl: CausalPromptLearner,
        adapter: DecoderAdapter | None,
        config: BilevelConfig | None = None,
        *,
        combine: str = "tokens",
        pad_token: Tensor | None = None,
    ) -> None:
        check_combine(combine)
        self.combine = combine
        self.pad_token = pad_token
        self.sam = sam
        self.capl = capl
        self.adapter = adapter
        self.config = config or BilevelConfig()
        c = self.config
        has_lower = adapter is not None and any(True for _ in adapter.parameters())
        self.opt_lower = (
            torch.optim.Adam(adapter.parameters(), lr=c.lr_lower)
            if has_lower and adapter is not None
            else None
        )
        self.opt_upper = torch.optim.Adam(capl.parameters(), lr=c.lr_upper)

    def _zero_grads(self) -> None:
        for module in (self.capl, self.adapter):
            if module is not None:
                module.zero_grad(set_to_none=True)

    def losses(
        self, items: Sequence[SupportItem], tokens: Tensor, valid: Tensor, *, level: str
    ) -> LossTerms:
        """The objective at ``level``: ``"lower"`` (grad to θ only), ``"upper"`` (to φ only)
        or ``"eval"`` (no grad)."""
        if level not in ("lower", "upper", "eval"):
            raise InputError(f"level must be lower, upper or eval, got {level!r}")
        with torch.set_grad_enabled(level == "upper"):
            weights = self.capl(tokens, valid)
        with torch.set_grad_enabled(level != "eval"):
            sets, cals = decode_items(
                self.sam,
                items,
                tokens,
                weights,
                self.adapter,
                valid=valid,
                combine=self.combine,
                pad_token=self.pad_token,
                detach_adapter=level != "lower",
            )
            return cumulative_loss(
                sets,
                cals,
                [i.target for i in items],
                weights,
                self.config.loss,
                [i.ignore for i in items],
            )

    def lower_step(self, items: Sequence[SupportItem], tokens: Tensor, valid: Tensor) -> LossTerms:
        """One θ-step on (a half of) the support sets, CaPL fixed."""
        self._zero_grads()
        terms = self.losses(items, tokens, valid, level="lower")
        if self.opt_lower is not None:
            terms.total.backward()
            self.opt_lower.step()
        return terms

    def upper_step(self, items: Sequence[SupportItem], tokens: Tensor, valid: Tensor) -> LossTerms:
        """One first-order φ-step, decoding through the current θ as a constant."""
        self._zero_grads()
        terms = self.losses(items, tokens, valid, level="upper")
        terms.total.backward()
        self.opt_upper.step()
        return terms

    def run(
        self,
        items: Sequence[SupportItem],
        half_a: tuple[Tensor, Tensor],
        half_b: tuple[Tensor, Tensor],
    ) -> list[dict[str, float]]:
        """The whole schedule; returns per-round losses (lower on A, upper on B)."""
        c = self.config
        history = []
        with torch.inference_mode(False), torch.enable_grad():
            self.capl.train()
            for _ in range(c.outer_steps):
                lower = upper = None
                for _ in range(c.lower_steps if self.opt_lower is not None else 0):
                    lower = self.lower_step(items, *half_a)
                for _ in range(c.upper_steps):
                    upper = self.upper_step(items, *half_b)
                row = {}
                if lower is not None:
                    row.update({f"lower_{k}": v for k, v in lower.as_floats().items()})
                if upper is not None:
                    row.update({f"upper_{k}": v for k, v in upper.as_floats().items()})
                history.append(row)
            self._zero_grads()
        self.capl.eval()
        return history
