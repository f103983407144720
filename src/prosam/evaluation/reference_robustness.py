"""Robustness of a reference method to how its reference was annotated, and to prompt noise.

Stable-SAM's protocol (:mod:`prosam.stable.robustness`) perturbs SAM's *prompts*. A
reference method's input is the *reference annotation*, and a prompt-encoder method (VRP,
ProSAM) has prompt *embeddings* in between, whose robustness is ProSAM's claim. For every
episode of a saved list and every perturbation, ``b`` perturbed predictions of the target
are made; per perturbation the report gives

- ``miou``: mean over episodes of the mean IoU of the episode's ``b`` masks (original size);
- ``msf``: mean over episodes of the mask stability (Stable-SAM eq. 1) of those ``b`` masks.

Perturbations (strings, so they travel through a command line):

- ``annotation:KIND``: the reference is re-annotated ``b`` times, a fresh random draw of
  ``KIND`` each time: ``point`` and ``scribble`` (:func:`prosam.prompts.simulate_annotation`),
  ``noisy_box`` (the tight box moved by HQ-SAM's noise, scale 0.4, filled), or the
  deterministic ``box`` / ``mask`` (``b`` identical references: mSF 100 for a deterministic
  method, a sanity check).
- ``prompt_noise:S``: the method's deterministic prompt (VRP's prompts, ProSAM's mean prompt)
  plus ``S * eps``, ``eps ~ N(0, I)`` per element, ``b`` draws; only for methods with
  ``predict(target, prompt_noise=, generator=)`` (:class:`prosam.methods.PromptEncoderMethod`).

Draw ``j`` of episode ``i`` under perturbation ``p`` is seeded by ``(seed, i, crc32(p), j)``.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from prosam.data.types import Episode
from prosam.errors import InputError
from prosam.evaluation.references import episode_inputs
from prosam.methods.base import Reference, ReferenceMethod
from prosam.methods.capabilities import PROMPT_NOISE, capabilities_of
from prosam.metrics import mask_iou, mask_stability
from prosam.prompts import box_to_mask, mask_to_box, noisy_box, simulate_annotation
from prosam.sam.predictor import Predictor
from prosam.sam.transforms import original_size_mask

__all__ = [
    "ANNOTATION_PERTURBATIONS",
    "evaluate_reference_robustness",
    "parse_perturbation",
    "to_markdown",
]

ANNOTATION_PERTURBATIONS = ("point", "scribble", "box", "noisy_box", "mask")
NOISY_BOX_SCALE = 0.4


def parse_perturbation(spec: str) -> tuple[str, str | float]:
    """``"annotation:KIND"`` -> ``("annotation", KIND)``; ``"prompt_noise:S"`` ->
    ``("prompt_noise", S)``."""
    family, _, value = spec.partition(":")
    if family == "annotation" and value in ANNOTATION_PERTURBATIONS:
        return family, value
    if family == "prompt_noise":
        try:
            scale = float(value)
        except ValueError:
            scale = -1.0
        if scale >= 0:
            return family, scale
    raise InputError(
        f"perturbation {spec!r}: use annotation:KIND (KIND in {ANNOTATION_PERTURBATIONS}) "
        f"or prompt_noise:S with S >= 0"
    )


def _annotation(mask: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "noisy_box":
        box = noisy_box(mask_to_box(mask), rng, NOISY_BOX_SCALE, image_size=mask.shape)
        return box_to_mask(box, mask.shape)
    return simulate_annotation(mask, kind, rng)  # type: ignore[arg-type]


def evaluate_reference_robustness(
    method: ReferenceMethod,
    predictor: Predictor,
    episodes: Sequence[Episode],
    perturbations: Sequence[str],
    *,
    b: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Per-perturbation mIoU and mSF of ``method`` over ``episodes`` (see the module).

    Returns ``{"perturbations": {spec: {"miou", "msf", "episodes"}}, "b", "seed",
    "episodes", "seconds"}`` with fractions in [0, 1].
    """
    if b < 1:
        raise InputError(f"b must be >= 1, got {b}")
    parsed = {spec: parse_perturbation(spec) for spec in perturbations}
    wants_noise = any(f == "prompt_noise" for f, _ in parsed.values())
    if wants_noise and PROMPT_NOISE not in capabilities_of(method):
        raise InputError(f"method {method.name!r} has no prompt embeddings to perturb")
    sums = {spec: {"iou": 0.0, "sf": 0.0, "n": 0} for spec in parsed}
    t0 = time.perf_counter()
    for i, episode in enumerate(tqdm(episodes, desc="robustness", disable=not progress)):
        references, target, truth, ignore = episode_inputs(episode, predictor)
        geometry = target.embedded.geometry
        for spec, (family, value) in parsed.items():
            masks = []
            for j in range(b):
                key = [int(seed), i, zlib.crc32(spec.encode()), j]
                if family == "annotation":
                    rng = np.random.default_rng(key)
                    method.fit(
                        [
                            Reference(
                                r.image,
                                _annotation(s.mask(episode.class_id)[0], str(value), rng),
                                r.embedded,
                                kind="box" if value == "noisy_box" else str(value),
                            )
                            for r, s in zip(references, episode.references, strict=True)
                        ]
                    )
                    out = method.predict(target)
                else:
                    if j == 0:
                        method.fit(references)
                    state = np.random.SeedSequence(key).generate_state(1)[0]
                    gen = torch.Generator().manual_seed(int(state))
                    out = method.predict(target, prompt_noise=float(value), generator=gen)  # type: ignore[call-arg]
                masks.append(original_size_mask(out.low_res_logits, geometry))
            s = sums[spec]
            s["iou"] += float(np.mean([mask_iou(m, truth, ignore) for m in masks]))
            s["sf"] += mask_stability(np.stack(masks))
            s["n"] += 1
    return {
        "perturbations": {
            spec: {
                "miou": s["iou"] / s["n"] if s["n"] else float("nan"),
                "msf": s["sf"] / s["n"] if s["n"] else float("nan"),
                "episodes": s["n"],
            }
            for spec, s in sums.items()
        },
        "b": b,
        "seed": seed,
        "episodes": len(episodes),
        "seconds": time.perf_counter() - t0,
    }


def to_markdown(report: dict[str, Any], *, title: str | None = None) -> str:
    """A Markdown table of an :func:`evaluate_reference_robustness` report (percent)."""
    lines = [] if title is None else [f"**{title}**", ""]
    lines += ["| perturbation | mIoU | mSF | episodes |", "|---|---:|---:|---:|"]
    for spec, r in report["perturbations"].items():
        lines.append(f"| {spec} | {100 * r['miou']:.1f} | {100 * r['msf']:.1f} | {r['episodes']} |")
    lines += ["", f"{report['b']} draws per episode and perturbation, seed {report['seed']}."]
    return "\n".join(lines)
