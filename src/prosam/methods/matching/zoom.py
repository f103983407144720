"""A zoomed view of a small reference object, so its features fill more than a cell or two.

At a 512-pixel longest side and stride 16, an object a tenth of the image wide covers about
three cells, most of them half background: too few, too mixed to match. The crop around the
object, resized to the same longest side, shows it several times larger; its cells join the
reference's own (``MatcherMethod(zoom_context=...)``), so the target can match either
scale. prosam's addition, not Matcher's or GF-SAM's.
"""

from __future__ import annotations

import numpy as np

from prosam.errors import InputError


def zoom_box(mask: np.ndarray, context: float, below: float) -> tuple[int, int, int, int] | None:
    """The square crop ``(y0, y1, x0, x1)`` around the object of ``mask`` with side
    ``context`` times the object's larger side (clipped to the image, shifted inside it),
    or ``None`` when the object is not small (its larger side over ``below`` of the image's
    side along that axis) or the mask is empty."""
    if context < 1:
        raise InputError(f"zoom context must be >= 1, got {context}")
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    h, w = mask.shape
    bh, bw = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
    if max(bh / h, bw / w) > below:
        return None
    side = max(1, round(context * max(bh, bw)))
    sh, sw = min(side, h), min(side, w)
    cy, cx = (int(ys.min()) + int(ys.max()) + 1) / 2, (int(xs.min()) + int(xs.max()) + 1) / 2
    y0 = int(np.clip(round(cy - sh / 2), 0, h - sh))
    x0 = int(np.clip(round(cx - sw / 2), 0, w - sw))
    return y0, y0 + sh, x0, x0 + sw
