"""Promptable prediction with a frozen SAM: points, boxes and mask input, as SAM does it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from prosam.errors import InputError
from prosam.sam.embedding_cache import EmbeddingCache
from prosam.sam.model import FrozenSam
from prosam.sam.prompt_graph import graph_prompts
from prosam.sam.transforms import (
    ImageGeometry,
    check_image,
    geometry_for,
    postprocess_logits,
    preprocess_image,
    transform_boxes,
    transform_coords,
)


@dataclass
class ImageEmbedding:
    """An image's SAM embedding ``(1, C, h, w)`` and its geometry."""

    embedding: torch.Tensor
    geometry: ImageGeometry


@dataclass
class Prediction:
    """Masks at the original size ``(M, H, W)``, predicted IoUs ``(M,)``, low-res logits."""

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: torch.Tensor

    def best(self) -> tuple[np.ndarray, float]:
        """The mask with the highest predicted IoU and that score."""
        i = int(np.argmax(self.scores))
        return self.masks[i], float(self.scores[i])


class Predictor:
    """SAM's promptable interface over a :class:`FrozenSam`, with an optional embedding cache.

    Coordinates are in original-image pixels, ``x`` to the right and ``y`` down; boxes are
    ``(x0, y0, x1, y1)``.
    """

    def __init__(
        self, model: FrozenSam, *, cache: EmbeddingCache | None = None, mask_threshold: float = 0.0
    ) -> None:
        self.model = model
        self.cache = cache
        self.mask_threshold = mask_threshold

    @torch.inference_mode()
    def _encode(self, image: np.ndarray) -> tuple[torch.Tensor, ImageGeometry]:
        x, geometry = preprocess_image(self.model.sam, image)
        return self.model.encode(x), geometry

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        """Encode an ``(H, W, 3) uint8`` RGB image (from the cache when possible)."""
        image = check_image(image)
        if self.cache is None:
            emb, geometry = self._encode(image)
            return ImageEmbedding(emb, geometry)

        def compute() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
            emb, _ = self._encode(image)
            return {"embedding": emb}, {}

        tensors, _ = self.cache.get_or_compute(image, compute)
        geometry = geometry_for(image.shape[:2], self.model.image_size)
        return ImageEmbedding(tensors["embedding"].to(self.model.device), geometry)

    @torch.inference_mode()
    def predict_low_res(
        self,
        embedded: ImageEmbedding,
        *,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's ``(M, 256, 256)`` low-res logits and ``(M,)`` predicted IoUs for
        the prompts of :meth:`predict`, without upsampling to the image."""
        geometry = embedded.geometry
        device = self.model.device
        point_arg = None
        if points is not None:
            point_arg = self._point_sets(embedded, points, point_labels, sets=False)
        box_arg = None
        if box is not None:
            b = np.asarray(box, dtype=np.float64).ravel()
            if b.shape != (4,) or not np.isfinite(b).all() or b[2] < b[0] or b[3] < b[1]:
                raise InputError(
                    f"box must be finite x0,y0,x1,y1 with x0<=x1 and y0<=y1, got {box}"
                )
            box_arg = transform_boxes(b[None], geometry).to(device)
        mask_arg = None
        if mask_input is not None:
            mask_arg = torch.as_tensor(mask_input, dtype=torch.float32, device=device)
            mask_arg = mask_arg.reshape(1, 1, *mask_arg.shape[-2:])
        if point_arg is None and box_arg is None and mask_arg is None:
            raise InputError("give at least one prompt: points, a box or a mask input")
        runtime = self.model.decoder_runtime()
        if runtime is not None and (point_arg is not None or box_arg is not None):
            inputs = graph_prompts(
                None if point_arg is None else point_arg[0].cpu(),
                None if point_arg is None else point_arg[1].cpu(),
                None if box_arg is None else box_arg.cpu(),
                None if mask_arg is None else mask_arg.cpu(),
                tuple(self.model.sam.prompt_encoder.mask_input_size),
            )
            low_res, iou = runtime(embedded.embedding, *inputs)
            keep = slice(1, None) if multimask_output else slice(0, 1)
            return low_res[0, keep].to(device), iou[0, keep].to(device)
        sam = self.model.sam
        sparse, dense = sam.prompt_encoder(points=point_arg, boxes=box_arg, masks=mask_arg)
        low_res, iou = sam.mask_decoder(
            image_embeddings=embedded.embedding,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )
        return low_res[0], iou[0]

    def _point_sets(
        self,
        embedded: ImageEmbedding,
        points: np.ndarray,
        point_labels: np.ndarray | None,
        *,
        sets: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked points as SAM's ``(S, N, 2)`` input-frame coordinates and ``(S, N)``
        labels; ``points`` is ``(S, N, 2)`` when ``sets``, else ``(N, 2)`` (then S = 1)."""
        pts = np.asarray(points, dtype=np.float64)
        if sets and (pts.ndim != 3 or pts.shape[-1] != 2):
            raise InputError(f"point sets must be (S, N, 2), got shape {pts.shape}")
        pts = pts.reshape(pts.shape if sets else (1, -1, 2))
        if pts.size == 0:
            raise InputError("points is empty")
        if not np.isfinite(pts).all():
            raise InputError("point coordinates must be finite numbers")
        if point_labels is None:
            labels = np.ones(pts.shape[:2])
        else:
            labels = np.asarray(point_labels)
            if labels.size != pts.shape[0] * pts.shape[1]:
                raise InputError(f"{pts.shape[0] * pts.shape[1]} points but {labels.size} labels")
            labels = labels.reshape(pts.shape[:2])
        if not set(np.unique(labels).tolist()) <= {0, 1}:
            raise InputError("point labels must be 0 (background) or 1 (foreground)")
        device = self.model.device
        coords = transform_coords(pts.reshape(-1, 2), embedded.geometry)
        return (
            coords.reshape(*pts.shape).to(device),
            torch.as_tensor(labels, dtype=torch.int64, device=device),
        )

    @torch.inference_mode()
    def predict_low_res_sets(
        self,
        embedded: ImageEmbedding,
        points: np.ndarray,
        point_labels: np.ndarray | None = None,
        *,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode ``S`` point prompts of ``N`` points each (``points (S, N, 2)``, labels
        ``(S, N)``): low-res logits ``(S, M, 256, 256)`` and predicted IoUs ``(S, M)``, each
        set as :meth:`predict_low_res` would give it alone. An exported decoder graph takes
        them in one call (1.28x faster than one call each with ONNX Runtime, 12 sets)."""
        coords, labels = self._point_sets(embedded, points, point_labels, sets=True)
        runtime = self.model.decoder_runtime()
        keep = slice(1, None) if multimask_output else slice(0, 1)
        if runtime is not None:
            side = tuple(self.model.sam.prompt_encoder.mask_input_size)
            parts = [
                graph_prompts(c, lab, None, None, side)  # type: ignore[arg-type]
                for c, lab in zip(coords.cpu(), labels.cpu(), strict=True)
            ]
            low_res, iou = runtime(
                embedded.embedding,
                torch.cat([p[0] for p in parts]),
                torch.cat([p[1] for p in parts]),
                torch.cat([p[2] for p in parts]),
                parts[0][3],
            )
            return low_res[:, keep].to(self.model.device), iou[:, keep].to(self.model.device)
        # PyTorch's decoder ran 12 sets in one batch 0.7x as fast as one by one on this
        # project's CPU (benchmarks/sam_latency.py), so it decodes them one by one
        sets = np.asarray(points, dtype=np.float64)
        kinds = labels.cpu().numpy()
        outputs = [
            self.predict_low_res(
                embedded, points=sets[i], point_labels=kinds[i], multimask_output=multimask_output
            )
            for i in range(len(sets))
        ]
        return torch.stack([o[0] for o in outputs]), torch.stack([o[1] for o in outputs])

    @torch.inference_mode()
    def predict(
        self,
        embedded: ImageEmbedding,
        *,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> Prediction:
        """Predict masks from prompts.

        Arguments:
          points: ``(N, 2)`` xy pixel coordinates in the original image.
          point_labels: ``(N,)``, 1 = foreground, 0 = background (all 1 when omitted).
          box: ``(4,)`` xyxy in the original image.
          mask_input: ``(1, 256, 256)`` low-res logits from an earlier prediction.
          multimask_output: three candidate masks (SAM's choice for a single point) or one.
        """
        low_res, iou = self.predict_low_res(
            embedded,
            points=points,
            point_labels=point_labels,
            box=box,
            mask_input=mask_input,
            multimask_output=multimask_output,
        )
        logits = postprocess_logits(low_res[None], embedded.geometry)
        masks = (logits > self.mask_threshold)[0].cpu().numpy()
        return Prediction(masks, iou.float().cpu().numpy(), low_res)

    def predict_image(self, image: np.ndarray, **prompts: object) -> Prediction:
        """Embed ``image`` and predict in one call; see :meth:`predict` for the prompts."""
        return self.predict(self.embed(image), **prompts)  # type: ignore[arg-type]
