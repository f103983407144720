"""What a method can do beyond ``fit`` / ``predict``, declared rather than probed.

A method class declares ``capabilities`` (a frozenset of the names below; absent means
none), and its registry spec declares the same set (the registry-wide tests check that they
agree). Callers ask :func:`capabilities_of`, never the method's signature.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from prosam.methods.base import MethodOutput, Reference, Target

#: Fits several entities (classes) on shared references and predicts them together:
#: :class:`MultiEntityMethod`.
MULTI_ENTITY = "multi_entity"
#: ``predict(target, prompt_noise=s)`` adds ``N(0, s^2)`` noise to its prompt embeddings:
#: :class:`PromptNoiseMethod`.
PROMPT_NOISE = "prompt_noise"
#: Built with ``uncertainty=True``, its outputs carry a per-pixel ``uncertainty`` map in
#: ``MethodOutput.extras``.
UNCERTAINTY = "uncertainty"
#: Its outputs list the separate objects found (``MethodOutput.instances``).
INSTANCES = "instances"

CAPABILITIES: dict[str, str] = {
    MULTI_ENTITY: "several entities fitted and predicted jointly",
    PROMPT_NOISE: "prompt embeddings that can be perturbed",
    UNCERTAINTY: "a per-pixel uncertainty map",
    INSTANCES: "one mask per object found",
}


class MultiEntityMethod(Protocol):
    """A method that fits and predicts several entities jointly (CPC-SAM)."""

    def fit_entities(self, entities: Sequence[Sequence[Reference]]) -> None: ...

    def predict_entities(self, target: Target) -> Any: ...


class PromptNoiseMethod(Protocol):
    """A method whose prompt embeddings can be perturbed at prediction time."""

    def predict(self, target: Target, *, prompt_noise: float = 0.0) -> MethodOutput: ...


def capabilities_of(method: object) -> frozenset[str]:
    """The capabilities ``method`` declares."""
    return frozenset(getattr(method, "capabilities", frozenset()))
