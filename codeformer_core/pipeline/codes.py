"""Temporal codes: the logits pass that chooses each face's codebook entries along its track
(``faces.temporal``) for a whole clip, kept as ``TrackCodes`` (512 bytes a face)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..errors import SettingsError
from ..faces.detect import Detections
from ..faces.rows import FrameRows
from ..faces.temporal import TemporalCodes
from .detection import detect_faces
from .frames import to_frames
from .model import MODEL_SIZE, Interrupt, default_network_batch

Tensor = torch.Tensor

@dataclass(frozen=True)
class TrackCodes(FrameRows):
    """The codebook choice of every face of a clip, keyed by (frame, track): ``frame_index`` [M],
    ``track`` [M] int64 and ``codes`` [M,256] int16 (512 bytes a face), on the CPU. Chunked by
    frames like the detections (``take_frames``: ``faces.rows.FrameRows``)."""
    frame_index: Tensor
    track: Tensor
    codes: Tensor
    num_frames: int
    frame_size: Tuple[int, int] = (0, 0)   # not known to the codes; kept for the row container

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
