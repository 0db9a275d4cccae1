"""Working-memory rules of thumb: frames per chunk, faces per network batch and rows per paste
band within a budget (bytes), never against what happens to be free."""
from __future__ import annotations

from typing import Optional

import torch

from ..chunks import DEFAULT_MEMORY_BUDGET, chunk_size_for
from .model import MODEL_SIZE, model_crop_size, model_fixed_batch

Tensor = torch.Tensor

# Working-memory rules of thumb (bytes), for sizing chunks against the budget.
FRAME_COPIES = 4            # float copies of an input frame a chunk holds: frame, detector input, crops' share
OUTPUT_COPIES = 6           # float copies of the output frame when it is pasted whole (out, mask, resize work)
BAND_COPIES = 8             # float copies of a band of output rows while it is made (background resize, blend)
FORWARD_BYTES_PER_FACE = 640 * 2 ** 20  # CodeFormer forward, one 512x512 face, float32 (measured ~630 MB on CPU);
                                        # the nodes free this much per face before a batch too


def auto_frames_per_chunk(height: int, width: int, device=None, upscale: float = 1.0,
                          max_frames: int = 64, budget: Optional[int] = None, output_whole: bool = True) -> int:
    """Frames per chunk within half of ``budget`` bytes (``chunks.DEFAULT_MEMORY_BUDGET`` when
    None), whatever the device (kept as an argument for callers) has free.

    A frame costs ``FRAME_COPIES`` float32 copies of itself, plus ``OUTPUT_COPIES`` of the
    upscaled output when the chunk pastes it whole (``output_whole``; ``restore_images`` pastes
    in bands, bounded by ``band_rows_for``); the network batch is bounded by ``faces_per_batch``.
    """
    copies = FRAME_COPIES + (OUTPUT_COPIES * max(1.0, float(upscale)) ** 2 if output_whole else 0)
    budget = DEFAULT_MEMORY_BUDGET if budget is None else int(budget)
    return chunk_size_for(height * width * 3 * 4 * copies, budget // 2, most=max_frames)


def forward_bytes_per_face(model) -> int:
    """Working memory of one face's forward: ``FORWARD_BYTES_PER_FACE`` scaled by the element size
    and by the crop area ((S/512)^2: a 1024 px model ~4x, a 2048 one ~16x)."""
    bytes_per_value = next(model.parameters()).element_size()
    area = (model_crop_size(model) / MODEL_SIZE) ** 2
    return int(FORWARD_BYTES_PER_FACE * bytes_per_value / 4 * area)


def faces_per_batch(model, budget: Optional[int] = None) -> int:
    """Faces per network batch whose forward fits in half of ``budget`` (at least one; at most the
    model's ``fixed_batch``: a fixed-batch file gains nothing from more)."""
    budget = DEFAULT_MEMORY_BUDGET if budget is None else int(budget)
    most = model_fixed_batch(model)
    return chunk_size_for(forward_bytes_per_face(model), budget // 2, most=64 if most is None else most)


def band_rows_for(out_width: int, frames: int, budget: Optional[int] = None) -> int:
    """Output rows per paste band for ``frames`` frames ``out_width`` wide, within an eighth of
    ``budget``."""
    budget = DEFAULT_MEMORY_BUDGET if budget is None else int(budget)
    return chunk_size_for(max(1, frames) * out_width * 3 * 4 * BAND_COPIES, budget // 8, most=1 << 30)
