"""CaPL, the lightweight causal prompt learner: it reweights M prompt sets per entity.

Input: ``tokens (N, M, T, D)`` (N entity instances, M prompt sets each, T aligned tokens) and
``valid (N, M, T)``. Each token goes through a small MLP ``h = MLP(LayerNorm(x))``; a set's
summary ``s[n, m]`` is the attention-pooled ``Σ_t α_t h_t`` over its valid tokens
(``α = softmax`` of a per-token score; uniform over valid tokens with
``token_scores=False``), concatenated with the fraction of valid tokens.

Two levels of weights (the abstract's "task and entity levels"):

- task level, shared by every entity of the episode: ``b[m] = head_task(mean_n s[n, m])``,
  ``τ = softmax_m(b / temperature)``;
- entity level: ``a[n, m] = head_entity(s[n, m])``, ``ε[n] = softmax_m(a[n] / temperature)``;
- combined: ``w[n, m] = τ[m] ε[n, m] / Σ_m' τ[m'] ε[n, m']`` (the normalised product, which
  equals ``softmax_m((a[n, m] + b[m]) / temperature)``); ``Σ_m w[n, m] = 1`` for every n.

Both heads start at zero, so an untrained CaPL gives uniform weights ``1/M`` (the
``cpc_uniform`` baseline). The calibrated ("causal") prompt of entity n is the token-wise
weighted average of its aligned sets: ``P[n, t] = Σ_m w[n, m] X[n, m, t]``
(``combine="tokens"``), or over the sets where token ``t`` is valid
(``combine="masked_tokens"``); ``combine="logits"`` instead averages the M sets' decoded
logits with the same weights (:mod:`.bilevel`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prosam.errors import InputError


@dataclass
class PromptWeights:
    """Task-level ``task (M,)``, entity-level ``entity (N, M)`` and ``combined (N, M)``."""

    task: Tensor
    entity: Tensor
    combined: Tensor


def combine_weights(task: Tensor, entity: Tensor) -> Tensor:
    """The normalised product ``τ ε / Σ_m τ ε``: ``(M,)`` and ``(N, M)`` -> ``(N, M)``."""
    prod = task[None, :] * entity
    return prod / prod.sum(dim=1, keepdim=True)


def uniform_weights(n: int, m: int, device: torch.device | str = "cpu") -> PromptWeights:
    """Equal weights ``1/M`` at both levels (the ``cpc_uniform`` baseline)."""
    task = torch.full((m,), 1.0 / m, device=device)
    entity = torch.full((n, m), 1.0 / m, device=device)
    return PromptWeights(task, entity, combine_weights(task, entity))


def one_hot_weights(choice: Tensor, m: int) -> PromptWeights:
    """Weight 1 on set ``choice[n]`` for each entity (the ``cpc_best_single`` baseline)."""
    entity = torch.nn.functional.one_hot(choice.long(), m).float()
    task = torch.full((m,), 1.0 / m, device=entity.device)
    return PromptWeights(task, entity, combine_weights(task, entity))


def calibrated_prompt(
    tokens: Tensor,
    weights: Tensor,
    valid: Tensor | None = None,
    pad_token: Tensor | None = None,
) -> Tensor:
    """Token-wise weighted average ``(N, T, D)`` of ``tokens (N, M, T, D)`` by ``(N, M)``.

    Without ``valid`` (``combine="tokens"``): ``P[n, t] = Σ_m w[n, m] X[n, m, t]``, invalid
    (padding) tokens included. With ``valid (N, M, T)`` (``combine="masked_tokens"``): the
    average over the sets where token ``t`` is valid, ``Σ_m w v X / Σ_m w v``, and
    ``pad_token`` (zeros when omitted) where no set has it.
    """
    if tokens.ndim != 4 or weights.shape != tokens.shape[:2]:
        raise InputError(
            f"tokens (N, M, T, D) {tuple(tokens.shape)} and weights (N, M) "
            f"{tuple(weights.shape)} do not match"
        )
    w = weights.to(tokens)
    if valid is None:
        return torch.einsum("nm,nmtd->ntd", w, tokens)
    wv = w[:, :, None] * valid.to(tokens)  # (N, M, T)
    den = wv.sum(1)[..., None]  # (N, T, 1)
    num = torch.einsum("nmt,nmtd->ntd", wv, tokens)
    pad = torch.zeros(tokens.shape[-1]) if pad_token is None else pad_token
    out = num / den.clamp_min(1e-12)
    return torch.where(den > 1e-12, out, pad.to(tokens).expand_as(out))


class CausalPromptLearner(nn.Module):
    """CaPL: scores each prompt set from its pooled token summary (module docstring)."""

    def __init__(
        self,
        dim: int,
        hidden: int = 64,
        *,
        token_scores: bool = True,
        task_level: bool = True,
        entity_level: bool = True,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise InputError(f"temperature must be > 0, got {temperature}")
        self.task_level = task_level
        self.entity_level = entity_level
        self.temperature = temperature
        self.token_mlp = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        self.token_score = nn.Linear(hidden, 1) if token_scores else None
        self.task_head = nn.Linear(hidden + 1, 1)
        self.entity_head = nn.Linear(hidden + 1, 1)
        for layer in (self.token_score, self.task_head, self.entity_head):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def summaries(self, tokens: Tensor, valid: Tensor | None = None) -> Tensor:
        """Per-set summaries ``(N, M, hidden + 1)``: pooled token features, valid fraction."""
        if tokens.ndim != 4:
            raise InputError(f"tokens must be (N, M, T, D), got {tuple(tokens.shape)}")
        if valid is None:
            valid = torch.ones(tokens.shape[:3], dtype=torch.bool, device=tokens.device)
        h = self.token_mlp(tokens)
        if self.token_score is not None:
            scores = self.token_score(h)[..., 0]
        else:
            scores = torch.zeros(h.shape[:3], device=h.device, dtype=h.dtype)
        scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
        # A set without any valid token pools to zero.
        alpha = torch.softmax(scores, dim=-1) * valid.any(dim=-1, keepdim=True).to(h.dtype)
        pooled = torch.einsum("nmt,nmth->nmh", alpha, h)
        frac = valid.to(h.dtype).mean(dim=-1, keepdim=True)
        return torch.cat([pooled, frac], dim=-1)

    def forward(self, tokens: Tensor, valid: Tensor | None = None) -> PromptWeights:
        """Weights for ``tokens (N, M, T, D)``; ``combined`` sums to 1 over M per entity."""
        s = self.summaries(tokens, valid)
        n, m = s.shape[:2]
        if self.task_level:
            task = torch.softmax(self.task_head(s.mean(dim=0))[:, 0] / self.temperature, dim=0)
        else:
            task = torch.full((m,), 1.0 / m, device=s.device, dtype=s.dtype)
        if self.entity_level:
            entity = torch.softmax(self.entity_head(s)[..., 0] / self.temperature, dim=1)
        else:
            entity = torch.full((n, m), 1.0 / m, device=s.device, dtype=s.dtype)
        return PromptWeights(task, entity, combine_weights(task, entity))
