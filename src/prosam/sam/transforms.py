"""SAM's input geometry: resize the longest side, normalise, pad; and back again.

Resizing uses segment-anything's own :class:`ResizeLongestSide` so that prosam's inputs are
bit-identical to what SAM's predictor feeds its encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from prosam.errors import InputError


@dataclass(frozen=True)
class ImageGeometry:
    """Sizes relating an original image to SAM's padded square input, all ``(H, W)``."""

    original_size: tuple[int, int]
    input_size: tuple[int, int]
    image_size: int

    @property
    def scale(self) -> tuple[float, float]:
        """``(sy, sx)`` from original pixels to model-input pixels."""
        return (
            self.input_size[0] / self.original_size[0],
            self.input_size[1] / self.original_size[1],
        )


def geometry_for(original_size: tuple[int, int], image_size: int) -> ImageGeometry:
    """Geometry of an image of ``original_size`` fed to a model of square side ``image_size``.

    An image so thin that its short side would be resized to 0 pixels is an
    :class:`InputError` (SAM cannot see it).
    """
    h, w = original_size
    input_size = ResizeLongestSide.get_preprocess_shape(h, w, image_size)
    if min(input_size) < 1:
        raise InputError(
            f"image is {w}x{h} pixels: too thin for SAM (its short side would be resized to "
            f"0 of {image_size} pixels)"
        )
    return ImageGeometry((int(h), int(w)), input_size, image_size)


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an ``(H, W, 3) uint8`` RGB image."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise InputError(f"expected an (H, W, 3) RGB array, got shape {shape}")
    if image.dtype != np.uint8:
        raise InputError(f"expected a uint8 image, got {image.dtype}")
    if min(image.shape[:2]) < 1:
        raise InputError(f"empty image of shape {image.shape}")
    return image


def preprocess_image(sam: Sam, image: np.ndarray) -> tuple[torch.Tensor, ImageGeometry]:
    """Resize, normalise and pad an RGB image into SAM's ``(1, 3, S, S)`` input."""
    image = check_image(image)
    size = int(sam.image_encoder.img_size)
    geometry = geometry_for(image.shape[:2], size)
    resized = ResizeLongestSide(size).apply_image(image)
    x = torch.as_tensor(resized, device=sam.pixel_mean.device).permute(2, 0, 1)[None]
    return sam.preprocess(x.float()), geometry


def transform_coords(coords: np.ndarray | torch.Tensor, geometry: ImageGeometry) -> torch.Tensor:
    """Map ``(..., 2)`` xy coordinates from original pixels to model-input pixels."""
    coords = torch.as_tensor(coords, dtype=torch.float32).clone()
    sy, sx = geometry.scale
    coords[..., 0] = coords[..., 0] * sx
    coords[..., 1] = coords[..., 1] * sy
    return coords


def transform_boxes(boxes: np.ndarray | torch.Tensor, geometry: ImageGeometry) -> torch.Tensor:
    """Map ``(N, 4)`` xyxy boxes from original pixels to model-input pixels."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 2, 2)
    return transform_coords(boxes, geometry).reshape(-1, 4)


def postprocess_logits(low_res_logits: torch.Tensor, geometry: ImageGeometry) -> torch.Tensor:
    """Upsample ``(B, M, h, w)`` decoder logits to the original image size, as SAM does."""
    s = geometry.image_size
    x = F.interpolate(low_res_logits, (s, s), mode="bilinear", align_corners=False)
    x = x[..., : geometry.input_size[0], : geometry.input_size[1]]
    return F.interpolate(x, geometry.original_size, mode="bilinear", align_corners=False)


def logits_at_input_resolution(
    low_res_logits: torch.Tensor, geometry: ImageGeometry, size: tuple[int, int]
) -> torch.Tensor:
    """Resample decoder logits to ``size`` over the unpadded image area (for training losses)."""
    s = geometry.image_size
    h = low_res_logits.shape[-2] * geometry.input_size[0] / s
    w = low_res_logits.shape[-1] * geometry.input_size[1] / s
    crop = low_res_logits[..., : max(1, round(h)), : max(1, round(w))]
    return F.interpolate(crop, size, mode="bilinear", align_corners=False)


def to_low_res_frame(
    x: torch.Tensor, geometry: ImageGeometry, side: tuple[int, int], *, fill: float, mode: str
) -> torch.Tensor:
    """A ``(N, C, H, W)`` map at the original size resampled into the decoder's ``side``
    frame over the padded square input: resized to the input size (``mode``), padded with
    ``fill``, then area-averaged to ``side`` (the inverse of :func:`postprocess_logits`)."""
    resized = F.interpolate(x, geometry.input_size, mode=mode)
    s = geometry.image_size
    pad = (0, s - geometry.input_size[1], 0, s - geometry.input_size[0])
    return F.interpolate(F.pad(resized, pad, value=fill), side, mode="area")


def low_res_valid_size(geometry: ImageGeometry, low: int) -> tuple[int, int]:
    """``(h, w)`` of the unpadded image area in ``low x low`` decoder logits."""
    return (
        max(1, round(low * geometry.input_size[0] / geometry.image_size)),
        max(1, round(low * geometry.input_size[1] / geometry.image_size)),
    )


def mask_to_low_res(
    mask: np.ndarray, geometry: ImageGeometry, low: int
) -> tuple[torch.Tensor, tuple[int, int]]:
    """A boolean ``(H, W)`` mask as a float ``(1, 1, h, w)`` training target (nearest
    resampling) for the unpadded area of ``low x low`` logits, and that ``(h, w)``."""
    h, w = low_res_valid_size(geometry, low)
    t = torch.from_numpy(np.asarray(mask, dtype=np.uint8))[None, None]
    return F.interpolate(t, (h, w), mode="nearest").float(), (h, w)


def resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a boolean mask with nearest neighbour."""
    t = torch.from_numpy(mask.astype(np.uint8))[None, None]
    return F.interpolate(t, size, mode="nearest")[0, 0].numpy().astype(bool)


def original_size_mask(
    low_res_logits: torch.Tensor, geometry: ImageGeometry, threshold: float = 0.0
) -> np.ndarray:
    """A method's ``(1, h, w)`` (or ``(h, w)``) low-res logits as a boolean mask at the
    original image size: upsampled, un-padded, then ``> threshold``."""
    logits = low_res_logits.float().reshape(1, 1, *low_res_logits.shape[-2:])
    return (postprocess_logits(logits, geometry)[0, 0] > threshold).cpu().numpy()
