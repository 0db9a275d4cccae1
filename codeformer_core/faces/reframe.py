"""ParseNet on crops of another framing than FFHQ's (an ONNX face model aligned to ArcFace's
template, e.g. GPEN-BFR-256): the crop is warped into FFHQ framing, parsed, and the labels'
logits warped back. Stands where a ParseNet stands (``models.parsenet.parse_faces``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.parsenet import INPUT_SIZE
from ..templates import FFHQ_TEMPLATE_512
from .align import estimate_similarity
from .geometry import compose_affine, invert_affine64, pixel_to_normalized, window_grid


class ReframedParseNet(nn.Module):
    """ParseNet for crops aligned to another five-point template than FFHQ's (GPEN-BFR-256's ArcFace
    crops): ParseNet was trained on FFHQ crops, so its input is warped into the FFHQ framing first and
    its logits are warped back into the crop's own framing. Called as a ParseNet (``parse_faces``):
    [N,3,512,512] in -1..1 (the crop resized to 512) -> (logits [N,19,512,512], the rest as ParseNet).

    ``template``: the crops' five points [5,2] in pixels of a ``size`` px crop. Where the FFHQ frame
    reaches past the crop, the crop's edge pixels are repeated (the ArcFace crop is nearly a part of
    the FFHQ one). Moves with ``to`` like any module (the parser inside is the same object)."""

    def __init__(self, parser: nn.Module, template: torch.Tensor, size: int):
        super().__init__()
        self.parser = parser
        own = template.detach().to("cpu", torch.float64).reshape(1, 5, 2) * (INPUT_SIZE / float(size))
        to_ffhq = estimate_similarity(own, FFHQ_TEMPLATE_512, robust=False).double()   # own px -> FFHQ px
        norm = pixel_to_normalized(INPUT_SIZE, INPUT_SIZE)[None]
        # FFHQ pixel u samples the crop at inverse(to_ffhq) u; crop pixel v samples the logits at to_ffhq v
        self.register_buffer("grid_in", window_grid(compose_affine(norm, invert_affine64(to_ffhq)),
                                                    INPUT_SIZE, INPUT_SIZE, "cpu"), persistent=False)
        self.register_buffer("grid_back", window_grid(compose_affine(norm, to_ffhq), INPUT_SIZE, INPUT_SIZE, "cpu"),
                             persistent=False)

    def forward(self, x: torch.Tensor):
        n = x.shape[0]
        ffhq = F.grid_sample(x.float(), self.grid_in.expand(n, -1, -1, -1), mode="bilinear",
                             padding_mode="border", align_corners=False)
        logits, *rest = self.parser(ffhq.to(x.dtype).contiguous(memory_format=torch.channels_last))
        back = F.grid_sample(logits.float(), self.grid_back.expand(n, -1, -1, -1), mode="bilinear",
                             padding_mode="border", align_corners=False)
        return (back.to(logits.dtype), *rest)
