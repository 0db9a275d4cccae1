"""Frames in, frames out: detection -> alignment -> CodeFormer -> paste-back.

The one entry point used by the ComfyUI nodes and the command line alike is
``restore_images``; the steps are public too so the modular nodes can run them one by one.
Frames are processed in chunks (all faces of a chunk go through the network together); on
an out-of-memory error the chunk is halved and retried (``chunks.run_in_chunks``, which also
sizes the network batches).

The face model: anything called as ``model(x, w=..., adain=...)`` on aligned crops [N,3,S,S] in
-1..1 returning the same shape in -1..1, with ``parameters()`` (the first one gives the device and
element size) and a ``variant``. Optionally (``model_crop_size``, ``model_template``,
``model_fixed_batch``): ``crop_size`` (S; default 512), ``template(dtype)`` (the five alignment points
[5,2] in crop pixels; default the FFHQ template scaled to S) and ``fixed_batch`` (the faces one
forward takes at once, e.g. 1 for most ONNX files; None: any number). CodeFormer and the spandrel
face models keep the defaults; ``models.onnx_face.OnnxFaceModel`` says all three (GPEN-BFR 256..2048 ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Iterable, List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from .chunks import DEFAULT_MEMORY_BUDGET, chunk_size_for, run_in_chunks
from .errors import InputError, SettingsError, WrongVariantError
from .faces.align import align_faces, detect_gray_frames, template_for, warp_faces
from .faces.batch import FaceBatch
from .faces.detect import DetectOptions, Detections, FaceDetector
from .faces.masks import check_frame_masks, parse_labels_to_masks
from .faces.paste import PasteOptions, paste_bands
from .faces.reframe import ReframedParseNet
from .faces.temporal import TemporalCodes
from .faces.tracks import DEFAULT_MAX_FILL, LandmarkSmoother, SceneCuts, track_detections
from .pixels import PIXEL_SCALES, to_luminance
from .tasks import BY_VARIANT, TASKS

Tensor = torch.Tensor
Progress = Optional[Callable[[int, int], None]]
Interrupt = Optional[Callable[[], None]]
Sink = Callable[[int, int, Tensor, Tensor], None]   # (first frame, first row, images [n,r,Ws,3], mask [n,r,Ws])

MODEL_SIZE = 512


# -- frames ------------------------------------------------------------------------------------
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


# -- the face model's geometry -------------------------------------------------------------------
def model_crop_size(model) -> int:
    """The side S of the aligned crops the model takes (``crop_size``; 512 when it does not say)."""
    return int(getattr(model, "crop_size", MODEL_SIZE))


def model_template(model) -> Tensor:
    """The model's five alignment points [5,2] float64 in its crop pixels (``template(dtype)``; the
    FFHQ template scaled to the crop size when it does not say)."""
    template = getattr(model, "template", None)
    size = model_crop_size(model)
    if callable(template):
        return template(torch.float64).detach().cpu()
    return template_for(size, torch.float64)


def model_fixed_batch(model) -> Optional[int]:
    """Faces the model takes in one forward (``fixed_batch``; None: any number)."""
    most = getattr(model, "fixed_batch", None)
    return None if most is None else max(1, int(most))


def has_ffhq_framing(model) -> bool:
    """Whether the model's crops are framed as CodeFormer's (the FFHQ template at any size), which
    ParseNet's face mask and the colour-match ellipse assume; GPEN-BFR-256's ArcFace crops are not."""
    size = model_crop_size(model)
    return bool(torch.allclose(model_template(model), template_for(size, torch.float64), atol=1e-3 * size))


def parser_for_model(parser, model):
    """The face parser for ``model``'s crops: ``parser`` itself for FFHQ-framed crops, else a
    ``faces.reframe.ReframedParseNet`` (the crop warped to FFHQ framing, parsed, the labels warped
    back), so the parse mask fits e.g. GPEN-BFR-256's ArcFace crops."""
    if parser is None or has_ffhq_framing(model):
        return parser
    if isinstance(parser, ReframedParseNet):
        return parser
    return ReframedParseNet(parser, model_template(model), model_crop_size(model))


# -- detection ----------------------------------------------------------------------------------
def detect_faces(frames: Tensor, detector: Optional[FaceDetector], crop_size: int = MODEL_SIZE,
                 smoother: Optional[LandmarkSmoother] = None, detections: Optional[Detections] = None,
                 template: Optional[Tensor] = None, **detect_kwargs) -> FaceBatch:
    """Detect and align every face of a frame batch [B,3,H,W] into one FaceBatch.

    ``detections``: these frames' faces found beforehand (``detect_clip``); the detector is then
    not run (it may be None). ``crop_size``, ``template``: the face model's crops
    (``model_crop_size``, ``model_template``; None: the FFHQ template scaled to ``crop_size``).
    """
    if frames.shape[0] == 0:
        return FaceBatch.empty(0, tuple(frames.shape[-2:]), crop_size, frames.device)
    dets = detector.detect(frames, **detect_kwargs) if detections is None else detections.to(frames.device)
    if smoother is not None:
        dets = smoother(dets)
    faces = align_faces(frames, dets.landmarks, dets.frame_index, boxes=dets.boxes, scores=dets.scores,
                        size=crop_size, template=template)
    return faces if dets.track is None else replace(faces, track=dets.track.to(faces.device))


def detect_clip(chunks: Iterable, detector: FaceDetector, smoothing_frames: float = 0.0,
                check_interrupt: Interrupt = None, progress: Progress = None, total: int = 0,
                max_fill: int = DEFAULT_MAX_FILL, **detect_kwargs) -> Detections:
    """Pass one of a video: every face of a clip, tracked, dropouts filled, smoothed along its track.

    ``chunks``: the clip's frames as consecutive batches (slices of an IMAGE batch, a decoder's
    chunks; anything ``to_frames`` takes). Only the detections are kept (on the CPU, a few numbers
    per face), so memory stays flat however long the clip. Scene cuts are found on the way
    (``faces.tracks.SceneCuts``); ``faces.tracks.track_detections`` then gives every face its
    track id (``track``: no track crosses a cut), a row to a face missed for at most ``max_fill``
    frames inside its track (``interpolated``; ``int(d.interpolated.sum())`` is the count to
    report) and, when ``smoothing_frames`` (the Gaussian's sigma in frames) is > 0, landmarks
    smoothed along the track with zero lag. Give the result to ``restore_images`` /
    ``detect_faces`` as ``detections`` for the second pass (and to ``clip_codes`` for temporal codes).
    """
    parts, cut_flags, done = [], [], 0
    cuts = SceneCuts()
    for chunk in chunks:
        if check_interrupt is not None:
            check_interrupt()
        frames = to_frames(chunk, device=detector.device)
        parts.append(detector.detect(frames, **detect_kwargs).to("cpu"))
        cut_flags.append(cuts(frames))
        done += frames.shape[0]
        if progress is not None:
            progress(done, max(done, total))
    return track_detections(Detections.join(parts), sigma=smoothing_frames,
                            cuts=torch.cat(cut_flags) if cut_flags else None, max_fill=max_fill)


def aligned_faces(frames: Tensor, size: int = MODEL_SIZE, template: Optional[Tensor] = None) -> FaceBatch:
    """Frames that already are aligned faces (``--has-aligned``): one face per frame, identity,
    resized to ``size`` (the model's crop size). ``template``: the crops' five points [5,2] at
    ``size`` (None: FFHQ), kept as the faces' landmarks."""
    b, _, h, w = frames.shape
    crops = frames if (h, w) == (size, size) else \
        F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    scale = torch.tensor([[size / w, 0, 0], [0, size / h, 0]], device=frames.device)
    inverse = torch.tensor([[w / size, 0, 0], [0, h / size, 0]], device=frames.device)
    box = torch.tensor([0.0, 0.0, float(w), float(h)], device=frames.device)
    points = template_for(size) if template is None else template
    lm = points.to(frames.device, torch.float32) * torch.tensor([w / size, h / size], device=frames.device)
    return FaceBatch(crops=crops.float(), affines=scale.expand(b, 2, 3).clone(),
                     inverse_affines=inverse.expand(b, 2, 3).clone(),
                     frame_index=torch.arange(b, device=frames.device), boxes=box.expand(b, 4).clone(),
                     scores=torch.ones(b, device=frames.device), landmarks=lm.expand(b, 5, 2).clone(),
                     frame_size=(h, w), num_frames=b, gray=detect_gray_frames(frames))


# -- the network -------------------------------------------------------------------------------
def model_task(model) -> str:
    """The task a model performs, by its ``variant`` ("restore" when the variant is unknown)."""
    task = BY_VARIANT.get(getattr(model, "variant", None))
    return task.name if task is not None else "restore"


def check_variant(model, task: str) -> None:
    """Refuse a model of the wrong variant: ``WrongVariantError(have, want)``, a neutral message.

    Each front end words its own hint (the node to use, the command to run) from ``have``/``want``.
    """
    want = TASKS[task].variant
    have = getattr(model, "variant", None)
    if have != want:
        raise WrongVariantError(have, want)


GPU_NETWORK_BATCH = 8


def default_network_batch(device) -> int:
    """Faces per network forward when the caller does not say: 1 on CPU (one 512 px face already
    keeps every core busy; batches of 4 measured 6 % slower per face and 1.7 GiB larger), else 8."""
    return 1 if torch.device(device).type == "cpu" else GPU_NETWORK_BATCH


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


# -- temporal codes ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrackCodes:
    """The codebook choice of every face of a clip, keyed by (frame, track): ``frame_index`` [M],
    ``track`` [M] int64 and ``codes`` [M,256] int16 (512 bytes a face), on the CPU."""
    frame_index: Tensor
    track: Tensor
    codes: Tensor
    num_frames: int

    def take_frames(self, frames: Iterable[int]) -> "TrackCodes":
        """The codes of the given frames, renumbered in that order (as ``Detections.take_frames``)."""
        picked = torch.as_tensor(list(frames), dtype=torch.int64)
        position = torch.full((self.num_frames,), -1, dtype=torch.int64)
        position[picked] = torch.arange(picked.numel())
        new_index = position[self.frame_index]
        keep = new_index >= 0
        return TrackCodes(new_index[keep], self.track[keep], self.codes[keep], int(picked.numel()))

    def lookup(self, frame_index: Tensor, track: Tensor) -> Tensor:
        """[N,256] int64 codes of the faces (frame, track); every face must have its codes."""
        frame_index, track = frame_index.cpu().long(), track.cpu().long()
        if len(frame_index) == 0:
            return torch.zeros(0, self.codes.shape[-1] if self.codes.dim() == 2 else 256, dtype=torch.int64)
        span = int(max(int(self.track.max()) if len(self.track) else 0, int(track.max()))) + 1
        keys = self.frame_index * span + self.track
        order = torch.argsort(keys)
        want = frame_index * span + track
        pos = torch.searchsorted(keys[order], want).clamp(max=max(len(keys) - 1, 0))
        if len(keys) == 0 or not bool((keys[order][pos] == want).all()):
            raise SettingsError("temporal codes were chosen for other faces than these; choose them with the "
                                "same detections (clip_codes)")
        return self.codes[order[pos]].long()


class CodeChooser:
    """Temporal codes for the faces of one clip, fed in frame order: each ``add`` encodes the crops
    (encoder and Transformer only, w = 0: no fusion taps kept) in network batches and pushes their
    logits into a ``faces.temporal.TemporalCodes``; only the decided codes are kept (int16), so
    memory is the temporal window (about 20 MiB per face track at sigma 2) plus 512 bytes a face."""

    def __init__(self, model, sigma: float, batch_size: Optional[int] = None, check_interrupt: Interrupt = None):
        if not hasattr(model, "encode_faces"):
            raise SettingsError("temporal codes need the CodeFormer model itself (PyTorch); this model does not "
                                "expose its code choice: set temporal to 0")
        self.model, self.fuser = model, TemporalCodes(sigma)
        self.device = next(model.parameters()).device
        self.batch_size = default_network_batch(self.device) if batch_size is None else int(batch_size)
        self.check_interrupt = check_interrupt
        self._parts: List[tuple] = []

    def add(self, crops: Tensor, frame_index: Tensor, track: Tensor) -> None:
        """Faces [N] of frames after those already added (clip frame numbers), every face of each frame."""
        n = int(crops.shape[0])
        if n == 0:
            return
        order = torch.sort(frame_index.cpu(), stable=True).indices
        frames, tracks = frame_index.cpu()[order], track.cpu()[order]
        held, held_logits = 0, None     # faces [held, start) encoded, their frame not complete yet
        for start in range(0, n, self.batch_size):
            if self.check_interrupt is not None:
                self.check_interrupt()
            stop = min(n, start + self.batch_size)
            x = crops[order[start:stop].to(crops.device)].to(self.device, torch.float32)
            if tuple(x.shape[-2:]) != (MODEL_SIZE, MODEL_SIZE):
                x = F.interpolate(x, size=(MODEL_SIZE, MODEL_SIZE), mode="bilinear", align_corners=False,
                                  antialias=True)
            logits = self.model.encode_faces(x * 2 - 1, w=0.0).logits
            rows = torch.arange(held, stop)
            logits = logits if held == start else torch.cat([held_logits, logits])
            # a frame split between two batches is complete only with the next batch: its faces wait
            done = int((frames[held:stop] < frames[stop]).sum()) if stop < n else stop - held
            upto = int(frames[stop]) - 1 if stop < n else int(frames[-1])
            self._keep(self.fuser.push(logits[:done], frames[rows[:done]], tracks[rows[:done]], upto=upto))
            held, held_logits = held + done, logits[done:]

    def finish(self, num_frames: int) -> TrackCodes:
        self._keep(self.fuser.finish())
        if not self._parts:
            z = torch.zeros(0, dtype=torch.int64)
            return TrackCodes(z, z, torch.zeros(0, 256, dtype=torch.int16), num_frames)
        return TrackCodes(*(torch.cat([p[i] for p in self._parts]) for i in range(3)), num_frames)

    def _keep(self, decided) -> None:
        frames, tracks, codes = decided
        if len(frames):
            self._parts.append((frames.cpu(), tracks.cpu(), codes.cpu().to(torch.int16)))


def clip_codes(chunks: Iterable, model, detections: Detections, temporal: float,
               check_interrupt: Interrupt = None, batch_size: Optional[int] = None) -> TrackCodes:
    """The logits pass of temporal codes: every face of a clip (``detections`` from ``detect_clip``,
    with track ids) aligned again from ``chunks`` (the clip's frames as consecutive batches, as
    ``detect_clip`` takes them), encoded, and its codes chosen along its track (sigma ``temporal``
    frames). Returns ``TrackCodes`` for ``restore_images(codes=...)``; memory stays bounded."""
    if detections.track is None:
        raise SettingsError("temporal codes need face tracks: detections from detect_clip")
    device = next(model.parameters()).device
    chooser = CodeChooser(model, temporal, batch_size=batch_size, check_interrupt=check_interrupt)
    start = 0
    for chunk in chunks:
        frames = to_frames(chunk, device=device)
        stop = start + frames.shape[0]
        faces = detect_faces(frames, None, detections=detections.take_frames(range(start, stop)))
        chooser.add(faces.crops, faces.frame_index + start, faces.track)
        del frames, faces
        start = stop
    return chooser.finish(detections.num_frames)


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
    from .models.parsenet import parse_faces
    chunk = default_network_batch(next(parser.parameters()).device)
    return parse_labels_to_masks(parse_faces(parser, crops, chunk_size=chunk), regions)


# -- all in one ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PasteSettings:
    """How restored faces go back into the frames (``restore_images``).

    ``options``: the compositor's choices (``faces.paste.PasteOptions``: upscale, visibility,
    colour matching, regions, mask grow / blur, ...); ``parser``: a ParseNet whose face mask,
    restricted to ``options.regions``, shapes the blend (None: the feathered square);
    ``background_upscaler``: enlarges the frames when ``options.upscale`` > 1 (None: resize);
    ``face_upscaler`` (crops [N,3,512,512] -> [N,3,S,S]) enlarges the restored faces before
    paste-back, like the original's ``--face_upsample``; ``frame_masks`` [1 or B,H,W] (the call's
    frames' size): restored pixels are pasted only where it is set (soft values blend).
    """
    options: PasteOptions = field(default_factory=PasteOptions)
    parser: Optional[torch.nn.Module] = None
    background_upscaler: Optional[Callable[[Tensor], Tensor]] = None
    face_upscaler: Optional[Callable[[Tensor], Tensor]] = None
    frame_masks: Optional[Tensor] = None

    @property
    def upscale(self) -> float:
        return float(self.options.upscale)


@dataclass(frozen=True)
class RunOptions:
    """How ``restore_images`` spends memory and reports: none of it changes the output.

    ``memory_budget`` (bytes; ``chunks.DEFAULT_MEMORY_BUDGET`` when None) is the working memory
    of the call besides the networks' weights: it sizes the frame chunks (``frames_per_chunk``
    None), caps the network batch (``batch_size`` is the most; None: ``default_network_batch``),
    sets the height of the bands the output is pasted in and how many faces' layers are made at
    once (``faces.paste.paste_bands``). Free memory is never looked at: on a shared machine it is
    someone else's. ``device``: where frames are worked on (None: the model's device).
    ``progress(done_faces, total_faces)`` and ``check_interrupt()`` are called between batches.
    """
    batch_size: Optional[int] = None
    frames_per_chunk: Optional[int] = None
    memory_budget: Optional[int] = None
    device: Optional[Union[str, torch.device]] = None
    progress: Progress = None
    check_interrupt: Interrupt = None

    @property
    def budget(self) -> int:
        return DEFAULT_MEMORY_BUDGET if self.memory_budget is None else int(self.memory_budget)


@dataclass
class RestoreResult:
    images: Optional[Tensor]      # [B,Hs,Ws,3] float32 0..1 (CPU); None when a sink took the bands
    mask: Optional[Tensor]        # [B,Hs,Ws] float32 share of each pixel taken from restored faces
    face_counts: List[int] = field(default_factory=list)  # faces found per frame

    @property
    def total_faces(self) -> int:
        return int(sum(self.face_counts))


DEFAULT_DETECT, DEFAULT_PASTE, DEFAULT_RUN = DetectOptions(), PasteSettings(), RunOptions()  # frozen values


def restore_images(images, model, detector: Optional[FaceDetector] = None, w: Optional[float] = None, *,
                   task: Optional[str] = None, inpaint_masks: Optional[Tensor] = None, has_aligned: bool = False,
                   detections: Optional[Detections] = None, smoother: Optional[LandmarkSmoother] = None,
                   detect: DetectOptions = DEFAULT_DETECT, paste: PasteSettings = DEFAULT_PASTE,
                   run: RunOptions = DEFAULT_RUN, sink: Optional[Sink] = None, temporal: float = 0.0,
                   codes: Optional[TrackCodes] = None) -> RestoreResult:
    """Restore (or colorize / inpaint, by the model's variant) every face of an image batch.

    ``images``: ComfyUI IMAGE [B,H,W,C] or any array ``to_frames`` accepts. Frames with no
    face come back unchanged (upscaled if asked) with a count of 0. ``w``: the fidelity weight
    of restoration (None: the task's default, ``tasks.TASKS["restore"].default_w``).
    ``detect``: how ``FaceDetector.detect`` finds faces (``faces.detect.DetectOptions``);
    ``paste``: how they go back (``PasteSettings``); ``run``: memory, batches, progress
    (``RunOptions``).
    ``detections``: the faces of all ``images`` found beforehand (``detect_clip``, e.g. smoothed
    over the clip); the detector is then not run. ``has_aligned``: the images are aligned faces.
    ``sink(first_frame, first_row, images [n,r,Ws,3], mask [n,r,Ws])`` (CPU float32) takes the
    output band by band instead of it being collected, so a caller that writes files never holds
    the whole float output; ``images`` and ``mask`` of the result are then None. A band may come
    again when its chunk is retried after running out of memory.
    Out of memory on a single frame raises ``NotEnoughMemoryError`` naming the frame and its size.
    ``temporal`` (restoration; sigma in frames, 0 = off and the output bit for bit as without it):
    codebook choices combined along each face track so a video does not flicker
    (``faces.temporal``); needs ``detections`` with track ids (``detect_clip``). The faces of the
    whole batch are encoded first (logits pass, ``clip_codes``: only the chosen codes are kept),
    then each chunk is encoded again and decoded with them: the encoder runs twice.
    ``codes``: codes chosen beforehand for these frames (``clip_codes(...).take_frames(...)``, a
    video restored chunk by chunk); ``temporal`` is then not looked at.
    """
    task = task or model_task(model)
    check_variant(model, task)
    if detector is None and detections is None and not has_aligned:
        raise SettingsError("a face detector is needed unless the images are already aligned faces "
                            "(or their faces were detected beforehand)")
    batch = image_batch(images)  # as given; each chunk is converted to float frames on its own
    b, height, width = batch.shape[:3]
    if b == 0:
        return RestoreResult(torch.zeros(0, height, width, 3), torch.zeros(0, height, width), [])
    if paste.parser is not None:
        paste = replace(paste, parser=parser_for_model(paste.parser, model))
    work_device = run.device or next(model.parameters()).device
    budget = run.budget
    per_chunk = run.frames_per_chunk or auto_frames_per_chunk(height, width, work_device, paste.upscale,
                                                              budget=budget, output_whole=False)
    if codes is None and temporal > 0 and task == "restore" and not has_aligned:
        if detections is None or detections.track is None:
            raise SettingsError("temporal codes need face tracks: give detections from detect_clip "
                                "(detection with smoothing), or set temporal to 0")
        codes = clip_codes((batch[s:s + per_chunk] for s in range(0, b, per_chunk)), model, detections, temporal,
                           check_interrupt=run.check_interrupt, batch_size=run.batch_size)
    collected = _Collector(b, int(height * paste.upscale), int(width * paste.upscale)) if sink is None else None
    job = _ChunkJob(
        batch=batch, model=model, task=task, w=TASKS["restore"].default_w if w is None else float(w),
        detector=detector, detect=detect, detections=detections, smoother=smoother, has_aligned=has_aligned,
        inpaint_masks=inpaint_masks, paste=paste, device=work_device, budget=budget,
        batch_size=min(int(default_network_batch(next(model.parameters()).device) if run.batch_size is None
                           else run.batch_size), faces_per_batch(model, budget)),
        progress=run.progress, check_interrupt=run.check_interrupt, sink=sink or collected,
        codes=codes if task == "restore" else None)
    parts = run_in_chunks(b, per_chunk, job.chunk, device=work_device, describe=job.describe)
    if collected is None:
        return RestoreResult(None, None, [c for p in parts for c in p])
    return RestoreResult(collected.images, collected.mask, [c for p in parts for c in p])


class _Collector:
    """The sink ``restore_images`` uses when the caller gives none: every band straight into the
    result, no per-chunk copies."""

    def __init__(self, b: int, height: int, width: int):
        self.images, self.mask = torch.empty(b, height, width, 3), torch.empty(b, height, width)

    def __call__(self, first: int, row0: int, rgb: Tensor, mask: Tensor) -> None:
        self.images[first:first + rgb.shape[0], row0:row0 + rgb.shape[1]] = rgb
        self.mask[first:first + rgb.shape[0], row0:row0 + rgb.shape[1]] = mask


@dataclass
class _ChunkJob:
    """One ``restore_images`` call, run chunk by chunk by ``run_in_chunks``. Everything is fixed
    for the call except ``faces_done`` (faces of the chunks finished so far: the progress offset)."""
    batch: Tensor
    model: torch.nn.Module
    task: str
    w: float
    detector: Optional[FaceDetector]
    detect: DetectOptions
    detections: Optional[Detections]
    smoother: Optional[LandmarkSmoother]
    has_aligned: bool
    inpaint_masks: Optional[Tensor]
    paste: PasteSettings
    device: Union[str, torch.device]
    budget: int
    batch_size: int
    progress: Progress
    check_interrupt: Interrupt
    sink: Sink
    codes: Optional[TrackCodes] = None
    faces_done: int = 0

    def chunk(self, start: int, stop: int) -> List[int]:
        """Frames ``start:stop``: found, restored, pasted and handed to the sink; faces per frame."""
        part = self.batch[start:stop]
        frames = to_frames(part, device=self.device)
        size, template = model_crop_size(self.model), model_template(self.model)
        faces = aligned_faces(frames, size, template) if self.has_aligned else detect_faces(
            frames, self.detector, crop_size=size, template=template, smoother=self.smoother,
            **self.detect.kwargs(),
            detections=None if self.detections is None else self.detections.take_frames(range(start, stop)))
        # Pasted from the pixels as read: the float copy is let go before the network runs.
        paste_frames = rgb_planes(part).to(self.device) if self.batch.dtype in PIXEL_SCALES and \
            not self.has_aligned else frames
        del frames
        faces = self.run_network(faces, start, stop)
        for row0, pasted, mask in self.paste_back(paste_frames, faces, start, stop):
            self.sink(start, row0, from_frames(pasted), mask[:, 0].float().cpu())
        self.faces_done += len(faces)
        return faces.counts_per_frame().tolist()

    def run_network(self, faces: FaceBatch, start: int, stop: int) -> FaceBatch:
        progress = None if self.progress is None else \
            partial(_offset_progress, self.progress, self.faces_done + len(faces))
        run = dict(batch_size=self.batch_size, check_interrupt=self.check_interrupt, done_offset=self.faces_done,
                   progress=progress)
        if self.task == "restore":
            codes = None if self.codes is None or len(faces) == 0 else \
                self.codes.take_frames(range(start, stop)).lookup(faces.frame_index, faces.track)
            return restore_faces(self.model, faces, w=self.w, codes=codes, **run)
        if self.task == "colorize":
            return colorize_faces(self.model, faces, **run)
        masks = None if self.inpaint_masks is None else _chunk_masks(self.inpaint_masks, start, stop)
        return inpaint_faces(self.model, faces, masks, **run)

    def paste_back(self, frames: Tensor, faces: FaceBatch, start: int, stop: int) -> list:
        paste, n_faces = self.paste, len(faces)
        if self.has_aligned:
            return [(0, *_resize_aligned(faces, paste.upscale))]
        parse = parse_masks_for(paste.parser, faces.crops, paste.options.regions) \
            if paste.parser is not None and n_faces else None
        restored = paste.face_upscaler(faces.crops) if paste.face_upscaler is not None and n_faces else None
        out_w = int(frames.shape[-1] * paste.upscale)
        masks = None if paste.frame_masks is None else _chunk_masks(paste.frame_masks, start, stop)
        return paste_bands(frames, faces, restored, paste.options, parse_masks=parse, frame_masks=masks,
                           background_upscaler=paste.background_upscaler,
                           band_rows=band_rows_for(out_w, stop - start, self.budget), layer_bytes=self.budget // 4)

    def describe(self, i: int) -> str:
        """How an out-of-memory error names frame ``i``."""
        b, height, width = self.batch.shape[:3]
        out_h, out_w = int(height * self.paste.upscale), int(width * self.paste.upscale)
        what = "the image" if b == 1 else f"frame {i + 1} of {b}"
        size = f"{width}x{height} pixels" + (f", output {out_w}x{out_h}" if (out_h, out_w) != (height, width) else "")
        return f"{what} ({size})"


def _offset_progress(progress: Callable[[int, int], None], chunk_total: int, done: int, _total: int) -> None:
    """A chunk's network progress as progress over the call (faces of earlier chunks counted)."""
    progress(done, max(done, chunk_total))


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


def _chunk_masks(masks: Tensor, start: int, stop: int) -> Tensor:
    m = masks if masks.dim() == 3 else masks[None]
    return m if m.shape[0] == 1 else m[start:stop]


def _resize_aligned(faces: FaceBatch, upscale: float) -> tuple:
    """Aligned input: the restored crop is the output, resized to the input size x upscale."""
    h, w = faces.frame_size
    size = (int(h * upscale), int(w * upscale))
    out = faces.crops if size == tuple(faces.crops.shape[-2:]) else \
        F.interpolate(faces.crops, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return out, torch.ones(out.shape[0], 1, *size, device=out.device)
