"""Frames -> faces: detection (or detections found beforehand), alignment at the face model's
crop size and template, and the clip pass of zero-lag smoothing with tracks and scene cuts."""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Optional

import torch
import torch.nn.functional as F

from ..faces.align import align_faces, detect_gray_frames, template_for
from ..faces.batch import FaceBatch
from ..faces.detect import Detections, FaceDetector
from ..faces.tracks import DEFAULT_MAX_FILL, LandmarkSmoother, SceneCuts, track_detections
from .frames import to_frames
from .model import MODEL_SIZE, Interrupt, Progress

Tensor = torch.Tensor

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
