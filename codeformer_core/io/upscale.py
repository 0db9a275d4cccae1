"""Background upscalers: any RGB image upscaler spandrel can load (RealESRGAN_x2plus.pth, ...),
run tile by tile so a 4K frame never needs the memory of the whole image at once.

spandrel is optional (the pack's ``[upscale]`` extra); it is imported only when an upscaler is
loaded. The result is a plain callable ``frames [B,3,H,W] 0..1 -> [B,3,H*s,W*s]`` with ``scale``
and ``name`` attributes, the shape ``pipeline.restore_images`` takes for ``background_upscaler``
and ``face_upscaler``; its ``rows(frames, y0, y1)`` gives the output of a band of tile rows
(``row_step`` input rows), which lets the paste build a large output band by band.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from ..errors import CheckpointError
from ..models.face_model import read_spandrel_model

Tensor = torch.Tensor


def tiled(run: Callable[[Tensor], Tensor], frames: Tensor, scale: int, tile: int, tile_pad: int = 10,
          rows: Optional[Tuple[int, int]] = None) -> Tensor:
    """``run`` (an s-times upscaler) over ``tile`` x ``tile`` pieces of ``frames`` [B,3,H,W].

    Each tile is upscaled with ``tile_pad`` pixels of context on every side that has image,
    and only its centre is kept, so the seams see (almost) what the whole-image run would.
    ``tile`` 0, or frames no larger than a tile, run in one piece. ``rows`` (y0, y1): only the
    output of input rows y0..y1 (multiples of ``tile``, or y1 = H), from the very tiles the
    whole image uses, so a caller can take the output in bands of tile rows.
    """
    b, _, h, w = frames.shape
    y_start, y_stop = (0, h) if rows is None else (int(rows[0]), int(rows[1]))
    if not tile or (h <= tile and w <= tile):
        out = run(frames).to(frames.device)
        return out if rows is None else out[:, :, y_start * scale:y_stop * scale]
    if y_start % tile or (y_stop % tile and y_stop != h):
        raise ValueError(f"rows {y_start}:{y_stop} are not on {tile}-row tile boundaries")
    out = torch.empty(b, 3, (y_stop - y_start) * scale, w * scale, dtype=torch.float32, device=frames.device)
    for y0 in range(y_start, y_stop, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            py0, px0 = max(0, y0 - tile_pad), max(0, x0 - tile_pad)
            py1, px1 = min(h, y1 + tile_pad), min(w, x1 + tile_pad)
            t = run(frames[:, :, py0:py1, px0:px1])
            oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
            out[:, :, (y0 - y_start) * scale:(y1 - y_start) * scale, x0 * scale:x1 * scale] = \
                t[:, :, oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale].to(out.device)
    return out


def load_upscaler(path: Union[str, Path], device, half: bool = False, tile: int = 400,
                  tile_pad: int = 10) -> Callable[[Tensor], Tensor]:
    """An upscaler file as frames [B,3,H,W] 0..1 -> [B,3,H*s,W*s] (float32, on the frames' device).

    ``half`` runs it in float16 where spandrel allows it and the device is CUDA. Raises
    ``MissingDependencyError`` without spandrel and ``CheckpointError`` for a file that is not an
    RGB image upscaler.
    """
    path = Path(path)
    desc = read_spandrel_model(path, device)
    import spandrel  # present: read_spandrel_model raised MissingDependencyError otherwise
    if not isinstance(desc, spandrel.ImageModelDescriptor) or desc.input_channels != 3 \
            or desc.output_channels != 3:
        raise CheckpointError(f"{path.name}: not an RGB image upscaler ({desc.architecture.name})")
    desc.eval()
    use_half = bool(half and desc.supports_half and torch.device(device).type == "cuda")
    if use_half:
        desc.half()
    scale = int(desc.scale)
    req = desc.size_requirements

    def run(x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        th, tw = max(h, req.minimum), max(w, req.minimum)
        m = max(1, int(req.multiple_of))
        th, tw = -(-th // m) * m, -(-tw // m) * m
        if (th, tw) != (h, w):
            x = F.pad(x, (0, tw - w, 0, th - h), mode="replicate")
        with torch.inference_mode():
            y = desc(x.to(device, torch.float16 if use_half else torch.float32)).float()
        return y[..., :h * scale, :w * scale].clamp(0, 1)

    def upscale(frames: Tensor) -> Tensor:
        return tiled(run, frames, scale, tile, tile_pad)

    def upscale_rows(frames: Tensor, y0: int, y1: int) -> Tensor:
        return tiled(run, frames, scale, tile, tile_pad, rows=(y0, y1))

    upscale.scale = scale
    upscale.rows = upscale_rows      # output of input rows y0..y1 (multiples of row_step): paste_bands
    upscale.row_step = int(tile)     # 0: no tiles, the whole frame in one piece
    upscale.name = path.name
    return upscale
