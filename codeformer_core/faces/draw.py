"""Face boxes drawn onto output images (the original scripts' ``--draw_box``)."""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

import torch

GREEN = (0.0, 1.0, 0.0)


def box_strokes(boxes: Iterable[Sequence[float]], scale: float, height: int,
                width: int) -> List[Tuple[int, int, int, int]]:
    """The filled rectangles (y0, y1, x0, x1; ends exclusive) that outline ``boxes`` in an image
    ``height`` x ``width``: see ``draw_boxes``."""
    t = max(1, int(round(2 * scale)))
    strokes = []
    for x1, y1, x2, y2 in boxes:
        x1, y1, x2, y2 = (int(round(v * scale)) for v in (x1, y1, x2, y2))
        x1, x2 = max(0, min(x1, width - 1)), max(0, min(x2, width - 1))
        y1, y2 = max(0, min(y1, height - 1)), max(0, min(y2, height - 1))
        if x2 <= x1 or y2 <= y1:
            continue
        strokes += [(y1, y1 + t, x1, x2 + 1), (max(y1, y2 - t + 1), y2 + 1, x1, x2 + 1),
                    (y1, y2 + 1, x1, x1 + t), (y1, y2 + 1, max(x1, x2 - t + 1), x2 + 1)]
    return strokes


def draw_boxes(img: torch.Tensor, boxes: Iterable[Sequence[float]], scale: float = 1.0,
               color: Sequence[float] = GREEN, row0: int = 0, height: Optional[int] = None) -> torch.Tensor:
    """Rectangles on an image [H,W,3] (float 0..1), in place; returns ``img``.

    ``boxes`` are (x1, y1, x2, y2) in input-frame pixels, multiplied by ``scale`` (the output's
    upscale factor); lines are ``round(2 * scale)`` pixels thick, drawn inside the box and clipped
    to the image. Boxes that collapse to nothing after clipping are skipped. ``img`` may be a band:
    rows ``row0 ..`` of an image ``height`` rows tall, which gets just its part of the lines.
    """
    h, w = img.shape[:2]
    c = img.new_tensor(list(color))
    for y0, y1, x0, x1 in box_strokes(boxes, scale, h if height is None else height, w):
        y0, y1 = max(y0 - row0, 0), min(y1 - row0, h)
        if y0 < y1:
            img[y0:y1, x0:x1] = c
    return img
