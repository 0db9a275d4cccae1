"""Frames in any form the front ends have (ComfyUI IMAGE, numpy arrays, integer pixels) as
the float [B,3,H,W] frames the pipeline works on, and back."""
from __future__ import annotations

from typing import Union

import numpy as np
import torch

from ..errors import InputError
from ..pixels import PIXEL_SCALES

Tensor = torch.Tensor

def image_batch(images: Union[Tensor, np.ndarray]) -> Tensor:
    """Any image input as a [B,H,W,C] tensor, without copying (a numpy array is shared).

    Accepts ComfyUI IMAGE tensors [B,H,W,C] (C = 1, 3 or 4; alpha is dropped, gray is
    replicated), single images [H,W] / [H,W,C], and uint8 / uint16 / float numpy arrays.
    """
    t = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(t, Tensor):
        raise TypeError(f"expected an image tensor or array, got {type(images).__name__}")
    if t.dim() == 2:
        t = t[None, :, :, None]
    elif t.dim() == 3:
        t = t[None] if t.shape[-1] in (1, 2, 3, 4) else t[..., None]
    if t.dim() != 4:
        raise InputError(f"expected images [B,H,W,C], got shape {tuple(t.shape)}")
    if t.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"expected 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA) channels, got {t.shape[-1]}")
    return t


def rgb_planes(batch: Tensor) -> Tensor:
    """[B,H,W,C] -> a [B,3,H,W] view of the same pixels: gray replicated, alpha dropped."""
    c = batch.shape[-1]
    return (batch[..., :1].expand(*batch.shape[:-1], 3) if c <= 2 else batch[..., :3]).permute(0, 3, 1, 2)


def to_frames(images: Union[Tensor, np.ndarray], device=None) -> Tensor:
    """Any image batch (see ``image_batch``) to float32 [B,3,H,W] RGB in 0..1.

    Integer pixels are scaled by ``faces.paste.PIXEL_SCALES`` (uint8 by 255, 16-bit by 65535).
    NaN or infinite values are refused rather than silently spread into the output.
    """
    t = image_batch(images)
    scale = PIXEL_SCALES.get(t.dtype)
    if scale is None and t.numel() and not torch.isfinite(t).all():
        raise InputError("image contains NaN or infinite values; fix the node that produced it "
                         "(for example a VAE decode in the wrong precision)")
    # One float32 copy in the [B,3,H,W] layout, then scaled and clamped in place (a large photo
    # is 12 bytes a pixel; no second or third copy on the way).
    x = rgb_planes(t).to(device=device, dtype=torch.float32, memory_format=torch.contiguous_format)
    if scale is not None:
        return x.div_(scale).clamp_(0, 1)
    return x.clamp(0, 1) if x.data_ptr() == t.data_ptr() else x.clamp_(0, 1)


def from_frames(frames: Tensor) -> Tensor:
    """[B,3,H,W] back to the ComfyUI layout [B,H,W,3] (float32, 0..1, on the CPU)."""
    return frames.clamp(0, 1).permute(0, 2, 3, 1).float().cpu().contiguous()
