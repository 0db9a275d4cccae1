"""``restore_images``: the steps joined, chunk by chunk, with the caller's option values."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, List, Optional, Union

import torch
import torch.nn.functional as F

from ..chunks import DEFAULT_MEMORY_BUDGET, run_in_chunks
from ..errors import SettingsError
from ..faces.batch import FaceBatch
from ..faces.detect import Detections, DetectOptions, FaceDetector
from ..faces.paste import PasteOptions, paste_bands
from ..faces.tracks import LandmarkSmoother
from ..pixels import PIXEL_SCALES
from ..tasks import TASKS
from .codes import TrackCodes, clip_codes
from .detection import aligned_faces, detect_faces
from .frames import from_frames, image_batch, rgb_planes, to_frames
from .memory import auto_frames_per_chunk, band_rows_for, faces_per_batch
from .model import (
    Interrupt,
    Progress,
    check_variant,
    default_network_batch,
    model_crop_size,
    model_task,
    model_template,
    parser_for_model,
)
from .network import colorize_faces, inpaint_faces, parse_masks_for, restore_faces

Tensor = torch.Tensor
Sink = Callable[[int, int, Tensor, Tensor], None]   # (first frame, first row, images [n,r,Ws,3], mask [n,r,Ws])

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
