"""Pixel formats: the integer types frames may come in and their scale, float 0..1 conversion, and
the luminance a grey face is pasted as. Shared by the pipeline's frame conversion and the paste-back."""
from __future__ import annotations

import torch

__all__ = ["PIXEL_SCALES", "to_unit", "to_luminance", "float_dtype"]

# Integer pixel types frames may come in, and the value that is 1.0 (as pipeline.to_frames reads them).
PIXEL_SCALES = {torch.uint8: 255.0, torch.int16: 65535.0, torch.int32: 65535.0,
                **({torch.uint16: 65535.0} if hasattr(torch, "uint16") else {})}

LUMA = (0.299, 0.587, 0.114)  # BT.601, sums to 1 so a grey face stays exactly grey


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Pixels as float 0..1: integer types scaled by ``PIXEL_SCALES`` into a new float32 tensor,
    float tensors as they are."""
    scale = PIXEL_SCALES.get(x.dtype)
    if scale is None:
        return x
    return x.to(torch.float32, memory_format=torch.contiguous_format).div_(scale)


def to_luminance(rgb: torch.Tensor) -> torch.Tensor:
    """[N,3,H,W] -> same shape with R = G = B = BT.601 luma (a grey photo stays grey)."""
    c = torch.tensor(LUMA, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb * c).sum(1, keepdim=True).expand_as(rgb).contiguous()


def float_dtype(frames: torch.Tensor) -> torch.dtype:
    """The float type frames are pasted in: their own when float, else float32."""
    return frames.dtype if frames.is_floating_point() else torch.float32
