"""Drawing masks over images for previews."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from prosam.errors import InputError

PALETTE = np.array(
    [[30, 144, 255], [255, 99, 71], [50, 205, 50], [255, 215, 0], [186, 85, 211], [0, 206, 209]],
    dtype=np.float32,
)


def overlay_masks(
    image: np.ndarray, masks: list[np.ndarray] | np.ndarray, *, alpha: float = 0.45
) -> np.ndarray:
    """Blend each boolean ``(H, W)`` mask in its own colour over ``image``, with an outline."""
    out = image.astype(np.float32).copy()
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.shape[:2]:
            raise InputError(f"mask {mask.shape} does not match image {image.shape[:2]}")
        colour = PALETTE[i % len(PALETTE)]
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
        edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
        out[edge] = colour
    return np.clip(out, 0, 255).astype(np.uint8)


def draw_points(
    image: np.ndarray, points: np.ndarray, labels: np.ndarray, radius: int = 5
) -> np.ndarray:
    """Mark prompt points: green for foreground, red for background."""
    out = image.copy()
    h, w = out.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    for (x, y), label in zip(np.asarray(points), np.asarray(labels), strict=True):
        disk = (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
        out[disk] = (0, 220, 0) if label == 1 else (230, 0, 0)
    return out


def draw_box(image: np.ndarray, box: np.ndarray, width: int = 2) -> np.ndarray:
    """Draw an xyxy box outline in yellow."""
    out = image.copy()
    h, w = out.shape[:2]
    x0, y0, x1, y1 = (int(np.round(v)) for v in box)
    x0, x1 = np.clip([x0, x1], 0, w - 1)
    y0, y1 = np.clip([y0, y1], 0, h - 1)
    colour = (255, 230, 0)
    out[y0 : y0 + width, x0 : x1 + 1] = colour
    out[max(y1 - width + 1, 0) : y1 + 1, x0 : x1 + 1] = colour
    out[y0 : y1 + 1, x0 : x0 + width] = colour
    out[y0 : y1 + 1, max(x1 - width + 1, 0) : x1 + 1] = colour
    return out


def draw_legend(image: np.ndarray, entries: Sequence[tuple[str, int]]) -> np.ndarray:
    """Write each ``(text, palette index)`` entry in the top-left corner, one a line: a
    swatch of the :data:`PALETTE` colour of its index, then the text in white, on a dark
    band."""
    if not entries:
        return image
    h, w = image.shape[:2]
    size = max(11, min(h, w) // 18)
    font = ImageFont.load_default(size=size)
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas, "RGBA")
    pad = max(2, size // 4)
    y = pad
    for text, index in entries:
        x = pad + size + pad
        _, _, right, bottom = draw.textbbox((x, y), text, font=font)
        draw.rectangle((0, y - pad, right + pad, bottom + pad), fill=(0, 0, 0, 170))
        colour = tuple(int(v) for v in PALETTE[index % len(PALETTE)])
        draw.rectangle((pad, y, pad + size - 1, y + size - 1), fill=colour)
        draw.text((x, y), text, fill=(255, 255, 255), font=font)
        y = max(bottom, y + size) + 2 * pad
        if y >= h:
            break
    return np.asarray(canvas)
