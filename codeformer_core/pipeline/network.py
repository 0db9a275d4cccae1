"""Faces -> restored faces: the face model run over the crops in network batches (restore,
colorize, inpaint), and the parse masks of the restored crops."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Union

import torch
import torch.nn.functional as F

from ..chunks import run_in_chunks
from ..errors import SettingsError
from ..faces.align import warp_faces
from ..faces.batch import FaceBatch
from ..faces.masks import check_frame_masks, parse_labels_to_masks
from ..models.parsenet import parse_faces
from ..pixels import to_luminance
from ..tasks import TASKS
from .codes import CodeChooser
from .model import Interrupt, Progress, check_variant, default_network_batch, model_crop_size, model_fixed_batch

Tensor = torch.Tensor

def run_network(model, crops: Tensor, w: Union[float, Tensor, None] = None, adain: Optional[bool] = None,
                batch_size: Optional[int] = None, progress: Progress = None, check_interrupt: Interrupt = None,
                done_offset: int = 0, total: Optional[int] = None, codes: Optional[Tensor] = None) -> Tensor:
    """Crops [N,3,s,s] 0..1 -> model output [N,3,S,S] clamped and mapped back to 0..1, S the
    model's crop size (``model_crop_size``; crops of another size are resized to it), in batches of
    ``batch_size`` (None: ``default_network_batch``; at most ``model_fixed_batch``). ``codes``
    [N,256]: decode these codebook entries instead of each face's own argmax (temporal codes,
    ``clip_codes``; CodeFormer only).

    Halves the batch on out-of-memory. Stays on the model's device; returns on the crops' device.
    """
    n = int(crops.shape[0])
    total = n if total is None else total
    device = next(model.parameters()).device
    size = model_crop_size(model)
    batch_size = default_network_batch(device) if batch_size is None else batch_size
    if model_fixed_batch(model) is not None:
        batch_size = min(batch_size, model_fixed_batch(model))
    out = torch.empty(n, 3, size, size, device=crops.device, dtype=torch.float32)
    w_all = w.to(torch.float32).reshape(-1) if isinstance(w, Tensor) else None

    def batch(start: int, stop: int) -> None:
        x = crops[start:stop].to(device, torch.float32, non_blocking=True)
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        w_b = w_all[start:stop] if w_all is not None else w
        with torch.inference_mode():
            if codes is None:
                y = model(x * 2 - 1, w=w_b, adain=adain)
            else:       # the encoder again (its fusion taps), then the codes chosen along the tracks
                y = model.decode_faces(model.encode_faces(x * 2 - 1, w_b, adain),
                                       codes[start:stop].to(device, torch.int64))
        out[start:stop] = ((y.clamp(-1, 1) + 1) / 2).to(out.device)
        if progress is not None:
            progress(done_offset + stop, total)

    run_in_chunks(n, batch_size, batch, device=device, check_interrupt=check_interrupt)
    return out


def restore_faces(model, faces: FaceBatch, w: Union[float, Tensor, None] = None, temporal: float = 0.0,
                  codes: Optional[Tensor] = None, **run_kwargs) -> FaceBatch:
    """CodeFormer restoration of every crop; ``w`` 0 = strongest restoration, 1 = most faithful
    (None: the task's default, ``tasks.TASKS["restore"].default_w``).

    ``temporal`` (sigma in frames, 0 = off, the output bit for bit as without it): codebook
    choices combined along each face track (``faces.temporal``) so a video does not flicker; the
    faces must carry track ids (``faces.track``: detected with smoothing, ``detect_clip``). The
    encoder then runs twice per face (once for the code logits of every face, once before
    decoding). ``codes`` [N,256]: codes chosen beforehand (``TrackCodes.lookup``) instead."""
    check_variant(model, "restore")
    w = TASKS["restore"].default_w if w is None else w
    if codes is None and temporal > 0 and len(faces):
        if faces.track is None:
            raise SettingsError("temporal codes need face tracks: detect the faces of the video with smoothing "
                                "above 0 (it tracks each face), or set temporal to 0")
        chooser = CodeChooser(model, temporal, batch_size=run_kwargs.get("batch_size"),
                              check_interrupt=run_kwargs.get("check_interrupt"))
        chooser.add(faces.crops, faces.frame_index, faces.track)
        codes = chooser.finish(faces.num_frames).lookup(faces.frame_index, faces.track)
    out = run_network(model, faces.crops, w=w, codes=codes, **run_kwargs)
    return faces.with_crops(out, variant="restoration", w=w)


def gray_model_input(crops: Tensor) -> Tensor:
    """The colorization model's input: luminance (ITU-R 601, as OpenCV's BGR2GRAY) in 3 channels."""
    return to_luminance(crops)


def colorize_faces(model, faces: FaceBatch, **run_kwargs) -> FaceBatch:
    """Colorize gray (or faded) faces; the result is colour, so paste-back keeps it colour."""
    check_variant(model, "colorize")
    task = TASKS["colorize"]
    out = run_network(model, gray_model_input(faces.crops), w=task.default_w, adain=task.adain, **run_kwargs)
    result = faces.with_crops(out, variant="colorization")
    return replace(result, gray=torch.zeros_like(faces.gray) if faces.gray is not None else None)


def inpaint_faces(model, faces: FaceBatch, frame_masks: Optional[Tensor] = None, threshold: float = 0.5,
                  **run_kwargs) -> FaceBatch:
    """Fill the hole of every face; pixels outside the hole keep the input exactly.

    ``frame_masks`` [B,H,W] (1 = hole, in frame space, e.g. a ComfyUI MASK) is warped into each
    crop; without it, pure-white crop pixels are the hole, as in the original entry point.
    """
    check_variant(model, "inpaint")
    hole = crop_hole_masks(faces, frame_masks, threshold)
    x = torch.where(hole, torch.ones_like(faces.crops), faces.crops)
    task = TASKS["inpaint"]
    out = run_network(model, x, w=task.default_w, adain=task.adain, **run_kwargs)
    filled = torch.where(hole, out, faces.crops)
    return faces.with_crops(filled, variant="inpainting")


def crop_hole_masks(faces: FaceBatch, frame_masks: Optional[Tensor], threshold: float = 0.5) -> Tensor:
    """[N,1,S,S] bool hole per crop, from frame-space masks or the crops' pure-white pixels."""
    if frame_masks is None:
        return (faces.crops >= 1.0).all(dim=1, keepdim=True)
    m = check_frame_masks(frame_masks.to(faces.device), faces.num_frames, faces.frame_size)
    if len(faces) == 0:
        return torch.zeros(0, 1, faces.crop_size, faces.crop_size, dtype=torch.bool, device=faces.device)
    warped = warp_faces(m[:, None].expand(-1, 3, -1, -1), faces.affines, faces.frame_index,
                        size=faces.crop_size, border_rgb=(0, 0, 0))
    return warped[:, :1] > threshold


def parse_masks_for(parser, crops: Tensor, regions=None) -> Tensor:
    """Soft face-region masks [N,1,S,S] from a ParseNet (skin, brows, eyes, nose, mouth...), in
    network batches of ``default_network_batch`` (ParseNet keeps 64 channels at 512 px).
    ``regions``: the labels pasted (``PasteOptions.regions``; None: the reference's)."""
    chunk = default_network_batch(next(parser.parameters()).device)
    return parse_labels_to_masks(parse_faces(parser, crops, chunk_size=chunk), regions)
