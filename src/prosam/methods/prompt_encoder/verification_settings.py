"""The verification study's settings, importable without model code (the CLI's help shows
their defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prosam.errors import InputError


@dataclass
class VerificationSettings:
    """Settings of :func:`run_verification` (the paper's values where it gives them)."""

    starts: int = 20
    tokens: int = 50
    init_std: float = 25.0
    lr: float = 0.1
    max_steps: int = 500
    patience: int = 100
    min_delta: float = 3e-4
    samples: int = 10
    family: str = "student_t"
    nu: float = 5.0
    n_mode: str = "token"
    init_log_sigma: float = 0.0
    eval_samples: int = 20
    perturbation_scales: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
    perturbation_draws: int = 10
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("starts", "tokens", "max_steps", "samples", "eval_samples"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.patience < 1 or self.perturbation_draws < 1:
            raise InputError("patience and perturbation_draws must be at least 1")
        if any(s < 0 for s in self.perturbation_scales):
            raise InputError("perturbation scales must be non-negative")
        if self.lr <= 0 or self.init_std < 0:
            raise InputError("lr must be positive and init_std non-negative")
