"""ProSAM's variational prompt encoder (Wang et al., ICCV 2025, sections 4.2-4.3, 8-9).

:class:`VariationalPromptEncoder` puts two ``Linear(dim, dim)`` heads on a
:class:`~prosam.methods.prompt_encoder.encoder.VRPEncoder` to predict the mean ``mu`` and the log
standard deviation ``log_sigma`` of every prompt embedding. Training decodes ``K``
reparameterised samples (:func:`sample_prompts`, eq. 5-7) and minimises the mean of their
BCE + Dice losses (:func:`prosam_loss`, eq. 10); inference decodes ``mu`` alone, or
merges ``K`` sampled masks (:func:`combine_samples`, appendix 9.3), whose spread gives
:func:`uncertainty_map`.

The Student-t of eq. 5 is ``t(mu, diag(sigma^2) / (1 + n/nu), nu + n)`` with ``n`` "the
dimensionality of z". Its per-element variance is
``sigma^2 / (1 + n/nu) * (nu + n) / (nu + n - 2) = sigma^2 * nu / (nu + n - 2)``, so the
noise actually injected depends heavily on ``n`` (``n_mode``); per-element std multipliers
of ``sigma`` at ``nu = 5`` for 50 prompts of 256 dimensions:

============  ============  ===============  =======================================
``n_mode``    ``n``         dof ``nu + n``   std / sigma = ``sqrt(nu / (nu + n - 2))``
============  ============  ===============  =======================================
``token``     256           261              0.1389
``all``       12800         12805            0.0198
``element``   1             6                1.1180
============  ============  ===============  =======================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from prosam.core.losses import bce_dice_loss
from prosam.errors import InputError
from prosam.methods.prompt_encoder.encoder import VRPEncoder

Family = Literal["student_t", "gaussian"]
NMode = Literal["token", "all", "element"]
MuInit = Literal["identity", "default"]
CombineStrategy = Literal["max_logit", "mean_logit", "max_binary", "mean_binary", "vote"]
UncertaintyKind = Literal["vote_entropy", "disagreement", "probability_entropy"]

#: The five K-sample inference strategies of ProSAM's table 8.
COMBINE_STRATEGIES: tuple[CombineStrategy, ...] = (
    "max_logit",
    "mean_logit",
    "max_binary",
    "mean_binary",
    "vote",
)

#: Logit magnitude of the binary strategies' output: ``sigmoid(20)`` rounds to 1 in float32.
BINARY_LOGIT = 20.0

#: Initial ``log_sigma`` (the head's bias; its weights start at zero): ``sigma = e^-2 = 0.135``.
INIT_LOG_SIGMA = -2.0


@dataclass
class PromptDistribution:
    """Per-element mean and log standard deviation of the prompts, both ``(B, Q, D)``."""

    mu: Tensor
    log_sigma: Tensor

    @property
    def sigma(self) -> Tensor:
        return self.log_sigma.exp()


class VariationalPromptEncoder(nn.Module):
    """A :class:`VRPEncoder` with ProSAM's mean and log-sigma heads.

    The paper does not say how the heads start. The log-sigma head starts with zero weights
    and bias ``init_log_sigma`` (-2): every prompt element starts with the same small
    ``sigma = 0.135``, i.e. ~0.019 std per element with the default ``token`` Student-t
    (next to ``mu`` elements of ~0.6 std at initialisation), so early training sees
    near-deterministic prompts and learns where to widen the noise. The mean head starts as
    the identity (``init_mu="identity"``), so an untrained ProSAM's mean prompt is exactly
    its VRP encoder's prompt; ``"default"`` keeps PyTorch's initialisation (on coco-mini it
    trained worse in a short budget: docs/results.md).

    Args:
        encoder: the prompt encoder; a default (ResNet-50 sized) :class:`VRPEncoder` if None.
        init_log_sigma: initial value of every ``log_sigma``.
    """

    def __init__(
        self,
        encoder: VRPEncoder | None = None,
        *,
        init_log_sigma: float = INIT_LOG_SIGMA,
        init_mu: MuInit = "identity",
    ) -> None:
        super().__init__()
        self.encoder = encoder if encoder is not None else VRPEncoder()
        dim = self.encoder.dim
        self.mu_head = nn.Linear(dim, dim)
        if init_mu == "identity":
            with torch.no_grad():
                self.mu_head.weight.copy_(torch.eye(dim))
                self.mu_head.bias.zero_()
        elif init_mu != "default":
            raise InputError(f"init_mu must be 'identity' or 'default', got {init_mu!r}")
        self.log_sigma_head = nn.Linear(dim, dim)
        nn.init.zeros_(self.log_sigma_head.weight)
        nn.init.constant_(self.log_sigma_head.bias, init_log_sigma)

    def count_parameters(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameters, the encoder's included."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def forward(
        self,
        ref_mid: tuple[Tensor, Tensor],
        ref_high: Tensor,
        ref_annotation: Tensor,
        tgt_mid: tuple[Tensor, Tensor],
        tgt_high: Tensor,
        tgt_sam: Tensor | None = None,
        tgt_prior: Tensor | None = None,
    ) -> PromptDistribution:
        """The prompt distribution; arguments as :meth:`VRPEncoder.forward`."""
        features = self.encoder(
            ref_mid, ref_high, ref_annotation, tgt_mid, tgt_high, tgt_sam, tgt_prior
        )
        return PromptDistribution(self.mu_head(features), self.log_sigma_head(features))


def effective_dimension(n_mode: NMode, num_tokens: int, dim: int) -> int:
    """ProSAM's ``n`` for a ``(num_tokens, dim)`` prompt set: ``dim``, ``num_tokens * dim``
    or 1 for ``token``, ``all`` or ``element``."""
    if n_mode == "token":
        return dim
    if n_mode == "all":
        return num_tokens * dim
    if n_mode == "element":
        return 1
    raise InputError(f"n_mode must be 'token', 'all' or 'element', got {n_mode!r}")


def student_t_std_multiplier(nu: float, n: int) -> float:
    """Per-element std of eq. 5's t over ``sigma``: ``sqrt(nu / (nu + n - 2))`` (inf if
    ``nu + n <= 2``)."""
    return math.sqrt(nu / (nu + n - 2)) if nu + n > 2 else math.inf


def chi2_sample(
    df: float,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``chi2(df)`` draws of ``shape``, reproducible with ``generator``.

    ``torch.distributions.Chi2`` takes no generator, so this is ``2 * Gamma(df / 2)`` by
    Marsaglia and Tsang's rejection method (float64, vectorised; ~96% acceptance per
    round), with the ``U^(1/a)`` boost for shapes below 1.
    """
    if df <= 0:
        raise InputError(f"df must be positive, got {df}")
    alpha = df / 2.0
    a = alpha + 1.0 if alpha < 1.0 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    numel = math.prod(shape)
    opts = {"generator": generator, "device": device, "dtype": torch.float64}

    def propose(m: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(m, **opts)
        v = (1.0 + c * x) ** 3
        log_u = torch.log(torch.rand(m, **opts))
        ok = (v > 0) & (log_u < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        return d * v, ok

    out, ok = propose(numel)
    pending = (~ok).nonzero().flatten()
    while pending.numel():
        value, ok = propose(pending.numel())
        out[pending[ok]] = value[ok]
        pending = pending[~ok]
    if alpha < 1.0:
        out = out * torch.rand(numel, **opts) ** (1.0 / alpha)
    return (2.0 * out).reshape(shape).to(dtype)


def sample_prompts(
    dist: PromptDistribution,
    k: int,
    *,
    family: Family = "student_t",
    nu: float = 5.0,
    n_mode: NMode = "token",
    generator: torch.Generator | None = None,
) -> Tensor:
    """``k`` reparameterised prompt samples ``(k, B, Q, D)``, differentiable in mu and sigma.

    Student-t (ProSAM eq. 5-7)::

        z = mu + sigma / sqrt(1 + n / nu) * eps / sqrt(delta / (nu + n))

    with ``eps ~ N(0, I)`` per element and ``delta ~ chi2(nu + n)`` (no gradient) shared
    by the group that ``n`` describes (``n_mode``):

    - ``token`` (default): ``n = D``, one ``delta`` per prompt token, so each of the ``Q``
      prompts is its own multivariate t, as the paper's "50 multivariate prompt
      distributions per target image" reads;
    - ``all``: ``n = Q * D``, one ``delta`` per sample (eq. 3's ``z`` in ``R^{m x c}``);
    - ``element``: ``n = 1``, an independent ``delta`` per element (heavy-tailed marginals).

    The per-element std is ``sigma * sqrt(nu / (nu + n - 2))``: x0.139, x0.0198 and x1.118
    of ``sigma`` for ``token``, ``all`` and ``element`` at ``nu = 5``, ``Q = 50``,
    ``D = 256`` (:func:`student_t_std_multiplier`). Elements are uncorrelated in every
    mode; sharing ``delta`` makes their magnitudes dependent.

    Gaussian (the paper's ablation): ``z = mu + sigma * eps``; ``nu`` and ``n_mode`` unused.
    """
    mu, log_sigma = dist.mu, dist.log_sigma
    if mu.shape != log_sigma.shape or mu.ndim != 3:
        raise InputError(
            f"mu {tuple(mu.shape)} and log_sigma {tuple(log_sigma.shape)} must both be (B, Q, D)"
        )
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    b, q, d = mu.shape
    eps = torch.randn((k, b, q, d), generator=generator, device=mu.device, dtype=mu.dtype)
    sigma = log_sigma.exp()
    if family == "gaussian":
        return mu + sigma * eps
    if family != "student_t":
        raise InputError(f"family must be 'student_t' or 'gaussian', got {family!r}")
    if nu <= 0:
        raise InputError(f"nu must be positive, got {nu}")
    n = effective_dimension(n_mode, q, d)
    delta_shape = {"token": (k, b, q, 1), "all": (k, b, 1, 1), "element": (k, b, q, d)}[n_mode]
    df = nu + n
    delta = chi2_sample(df, delta_shape, generator=generator, device=mu.device, dtype=mu.dtype)
    scale = torch.sqrt(df / delta) / math.sqrt(1.0 + n / nu)
    return mu + sigma * (eps * scale)


def _check_samples(logits: Tensor) -> None:
    if logits.ndim != 5 or logits.shape[2] != 1:
        raise InputError(f"logits must be (k, B, 1, H, W), got {tuple(logits.shape)}")


def combine_samples(logits: Tensor, strategy: CombineStrategy) -> Tensor:
    """Merge ``(k, B, 1, H, W)`` sample logits into ``(B, 1, H, W)`` logits (``> 0`` = object).

    A sample's binary mask is ``logit > 0`` (``sigmoid >= 0.5`` up to the tie at 0).

    - ``max_logit`` / ``mean_logit``: the max / mean of the logits;
    - ``max_binary``: object where any sample says so;
    - ``mean_binary``: object where the mean of the binary masks is ``>= 0.5`` (a tie of an
      even ``k`` counts as object);
    - ``vote``: object where a strict majority of samples says so (a tie does not).

    The binary strategies return ``+BINARY_LOGIT`` / ``-BINARY_LOGIT`` (+-20).
    """
    _check_samples(logits)
    if strategy == "max_logit":
        return logits.amax(dim=0)
    if strategy == "mean_logit":
        return logits.mean(dim=0)
    binary = (logits > 0).to(logits.dtype)
    if strategy == "max_binary":
        fg = binary.amax(dim=0) > 0
    elif strategy == "mean_binary":
        fg = binary.mean(dim=0) >= 0.5
    elif strategy == "vote":
        fg = 2 * binary.sum(dim=0) > logits.shape[0]
    else:
        raise InputError(f"strategy must be one of {COMBINE_STRATEGIES}, got {strategy!r}")
    return torch.where(fg, BINARY_LOGIT, -BINARY_LOGIT).to(logits.dtype)


def _binary_entropy(p: Tensor) -> Tensor:
    """Entropy in bits of Bernoulli(p), 0 at p in {0, 1}."""
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p)) / math.log(2.0)


def uncertainty_map(logits: Tensor, kind: UncertaintyKind = "vote_entropy") -> Tensor:
    """Per-pixel uncertainty ``(B, 1, H, W)`` in ``[0, 1]`` from ``(k, B, 1, H, W)`` samples.

    With ``f`` the fraction of samples whose mask (``logit > 0``) covers the pixel:

    - ``vote_entropy`` (default): binary entropy of ``f`` in bits, 0 where all samples
      agree, 1 where they split evenly;
    - ``disagreement``: ``2 * min(f, 1 - f)``, the fraction of samples outvoted by the
      majority, doubled: 0 when unanimous, 1 on an even split (linear in between);
    - ``probability_entropy``: binary entropy of the mean ``sigmoid(logit)``; also
      reflects confidence, so it is 0 only where all samples are saturated.
    """
    _check_samples(logits)
    if kind == "probability_entropy":
        return _binary_entropy(torch.sigmoid(logits).mean(dim=0))
    f = (logits > 0).to(logits.dtype).mean(dim=0)
    if kind == "vote_entropy":
        return _binary_entropy(f)
    if kind == "disagreement":
        return 2 * torch.minimum(f, 1 - f)
    raise InputError(
        f"kind must be 'vote_entropy', 'disagreement' or 'probability_entropy', got {kind!r}"
    )


def prosam_loss(
    logits: Tensor, target: Tensor, ignore: Tensor | None = None, *, smooth: float = 1.0
) -> Tensor:
    """ProSAM's eq. 10: the mean over ``k`` samples of :func:`bce_dice_loss`.

    Args:
        logits: ``(k, B, 1, H, W)`` decoder logits of the ``k`` prompt samples.
        target: ``(B, 1, H, W)``, shared by the samples; ``ignore`` likewise.
    """
    _check_samples(logits)
    k = logits.shape[0]
    flat = logits.flatten(0, 1)

    def repeat(x: Tensor) -> Tensor:
        return x[None].expand(k, *x.shape).flatten(0, 1)

    # BCE's pixel mean and Dice's image mean over k * B rows equal the mean of the k losses.
    return bce_dice_loss(
        flat, repeat(target), None if ignore is None else repeat(ignore), smooth=smooth
    )
