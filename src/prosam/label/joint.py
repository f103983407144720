"""One method fitted on every class of a job at once (CPC-SAM's multi-entity path).

A method with the ``multi_entity`` capability (:data:`prosam.methods.capabilities.MULTI_ENTITY`)
is fitted once on all classes' references (``fit_entities``: its calibration sees every
entity) and predicts them together (``predict_entities``). :class:`JointClasses` holds
that one method and gives each class a view (:class:`ClassView`) with the usual
``predict(target)``, so the rest of the labelling code sees one method per class; the
joint prediction runs once per target and is shared by the views.

The calibration (the expensive part) runs once per job: :meth:`JointClasses.prepare`
saves its fitted state in ``OUT/calibration.safetensors`` + ``.json`` (prosam's checkpoint
format: tensors, and JSON with the sha256 of the tensors), tagged with the configuration
it was fitted for, and a rerun of the same job loads it instead of fitting again. The
sha256 of the tensors goes into ``job.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prosam.core.checkpoint import Checkpoint, checkpoint_files, load_checkpoint, save_checkpoint
from prosam.core.files import sha256_file
from prosam.errors import InputError, WeightsError
from prosam.methods.base import MethodOutput, Reference, ReferenceMethod, Target
from prosam.methods.capabilities import MULTI_ENTITY, capabilities_of

CALIBRATION_STEM = "calibration"
"""``OUT/calibration.safetensors`` and ``OUT/calibration.json``."""


def fits_jointly(method: object) -> bool:
    """Whether ``method`` fits and predicts several classes together."""
    return MULTI_ENTITY in capabilities_of(method)


class JointClasses:
    """A ``multi_entity`` method and the references of each class, fitted lazily: by
    :meth:`prepare` in a job (calibration saved and reloaded), or by :meth:`ensure_fitted`."""

    def __init__(self, method: Any, references: Mapping[str, Sequence[Reference]]) -> None:
        if not fits_jointly(method):
            raise InputError(f"method {getattr(method, 'name', method)!r} cannot fit jointly")
        if not references or any(not refs for refs in references.values()):
            raise InputError("every class needs at least one reference")
        self.method = method
        self.classes = list(references)
        self.references = {c: list(r) for c, r in references.items()}
        self.fitted = False
        self._last: tuple[object, list[MethodOutput]] | None = None

    @property
    def name(self) -> str:
        return str(getattr(self.method, "name", type(self.method).__name__))

    def _entities(self) -> list[list[Reference]]:
        return [self.references[c] for c in self.classes]

    def ensure_fitted(self) -> None:
        """Fit (calibrate) now unless done."""
        if not self.fitted:
            self.method.fit_entities(self._entities())
            self.fitted = True
            self._last = None

    def prepare(self, out_dir: str | Path, key: str) -> str:
        """Load the calibration saved in ``out_dir`` for ``key`` (the job's configuration
        digest), or save this one's (fitting it first unless done); the sha256 of the saved
        tensors."""
        stem = Path(out_dir) / CALIBRATION_STEM
        tensors, _ = checkpoint_files(stem)
        saved = None
        if tensors.is_file():
            try:
                saved = load_checkpoint(stem)
            except WeightsError:
                saved = None  # unreadable or half-written: fit again
        if saved is not None and saved.config.get("key") == key:
            self.method.fit_entities(self._entities(), calibration=saved.model)
        else:
            if not self.fitted:
                self.method.fit_entities(self._entities())
            state = self.method.calibration_state()
            config = {"key": key, "method": self.name, "classes": self.classes}
            save_checkpoint(stem, Checkpoint(model=state, config=config))
        self.fitted = True
        self._last = None
        return sha256_file(tensors)

    def outputs(self, target: Target) -> list[MethodOutput]:
        """Every class's output on ``target`` (computed once per target)."""
        self.ensure_fitted()
        if self._last is not None and self._last[0] is target.embedded:
            return self._last[1]
        pred = self.method.predict_entities(target)
        scores = pred.scores.reshape(-1)
        outs = [
            MethodOutput(pred.logits[e], float(scores[e]), pred.extras[e])
            for e in range(len(self.classes))
        ]
        self._last = (target.embedded, outs)
        return outs

    def views(self) -> dict[str, ClassView]:
        """One method-like view per class, in class order."""
        return {c: ClassView(self, i) for i, c in enumerate(self.classes)}


class ClassView:
    """One class of a :class:`JointClasses`, with a :class:`ReferenceMethod`'s ``predict``."""

    def __init__(self, joint: JointClasses, index: int) -> None:
        self.joint = joint
        self.index = index
        self.name = joint.name

    def fit(self, references: Sequence[Reference]) -> None:
        raise InputError("a joint class view is fitted through its JointClasses")

    def predict(self, target: Target) -> MethodOutput:
        return self.joint.outputs(target)[self.index]


def joint_of(methods: Mapping[str, ReferenceMethod | ClassView]) -> list[JointClasses]:
    """The distinct :class:`JointClasses` behind ``methods``' views, in order."""
    seen: dict[int, JointClasses] = {}
    for m in methods.values():
        if isinstance(m, ClassView):
            seen.setdefault(id(m.joint), m.joint)
    return list(seen.values())
