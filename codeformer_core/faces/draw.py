"""Face boxes drawn onto output images (the original scripts' ``--draw_box``)."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

GREEN = (0.0, 1.0, 0.0)


def draw_boxes(img: torch.Tensor, boxes: Iterable[Sequence[float]], scale: float = 1.0,
               color: Sequence[float] = GREEN) -> torch.Tensor:
    """Rectangles on an image [H,W,3] (float 0..1), in place; returns ``img``.

    ``boxes`` are (x1, y1, x2, y2) in input-frame pixels, multiplied by ``scale`` (the output's
    upscale factor); lines are ``round(2 * scale)`` pixels thick, drawn inside the box and clipped
    to the image. Boxes that collapse to nothing after clipping are skipped.
    """
    h, w = img.shape[:2]
    t = max(1, int(round(2 * scale)))
    c = img.new_tensor(list(color))
    for x1, y1, x2, y2 in boxes:
        x1, y1, x2, y2 = (int(round(v * scale)) for v in (x1, y1, x2, y2))
        x1, x2 = max(0, min(x1, w - 1)), max(0, min(x2, w - 1))
        y1, y2 = max(0, min(y1, h - 1)), max(0, min(y2, h - 1))
        if x2 <= x1 or y2 <= y1:
            continue
        img[y1:y1 + t, x1:x2 + 1] = c
        img[max(y1, y2 - t + 1):y2 + 1, x1:x2 + 1] = c
        img[y1:y2 + 1, x1:x1 + t] = c
        img[y1:y2 + 1, max(x1, x2 - t + 1):x2 + 1] = c
    return img
