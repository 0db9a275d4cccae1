"""The face batch: what flows between detection, restoration and paste-back.

Every per-face tensor has the same first dimension N (all faces of all frames), so the
network and the warps run once per batch instead of once per face. ``frame_index`` maps
each face back to its frame; frames without faces simply have no rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Optional, Sequence, Tuple

import torch


@dataclass
class FaceBatch:
    crops: torch.Tensor            # [N,3,S,S] float32, RGB, 0..1 (aligned faces)
    affines: torch.Tensor          # [N,2,3] float32, frame pixels -> crop pixels
    inverse_affines: torch.Tensor  # [N,2,3] float32, crop pixels -> frame pixels (upscale 1)
    frame_index: torch.Tensor      # [N] int64, which frame each face came from
    boxes: torch.Tensor            # [N,4] float32 x1,y1,x2,y2 in frame pixels
    scores: torch.Tensor           # [N] float32 detector confidence (1.0 when given by hand)
    landmarks: torch.Tensor        # [N,5,2] float32 eyes (image left, right), nose, mouth corners
    frame_size: Tuple[int, int]    # (H, W) of the source frames
    num_frames: int                # B, so frames with no face still count
    gray: Optional[torch.Tensor] = None  # [N] bool, source frame was grayscale
    track: Optional[torch.Tensor] = None  # [N] int64 face track id (faces.tracks.track_detections; None:
                                          # not tracked), what temporal codes combine frames by
    meta: dict = field(default_factory=dict)  # free-form (e.g. the model variant that produced crops)

    def __len__(self) -> int:
        return int(self.crops.shape[0])

    @property
    def crop_size(self) -> int:
        return int(self.crops.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.crops.device

    def with_crops(self, crops: torch.Tensor, **meta) -> "FaceBatch":
        """Same faces, new crop pixels (the output of restore/colorize/inpaint or an edit)."""
        if crops.shape[0] != len(self):
            raise ValueError(f"expected {len(self)} crops, got {crops.shape[0]}")
        return replace(self, crops=crops, meta={**self.meta, **meta})

    def to(self, device=None, dtype=None) -> "FaceBatch":
        """Move tensors; only the crops take ``dtype`` (geometry stays float32)."""
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                kw[f.name] = v.to(device=device, dtype=dtype) if f.name == "crops" and dtype else v.to(device)
        return replace(self, **kw)

    def select(self, index: torch.Tensor) -> "FaceBatch":
        """Subset of faces (bool mask or int index), frame bookkeeping unchanged."""
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == len(self):
                kw[f.name] = v[index]
        return replace(self, **kw)

    def frame_range(self, start: int, stop: int) -> "FaceBatch":
        """The faces of frames [start, stop) as their own batch, frame indices counted from ``start``
        (a chunk of a video); ``FaceBatch.join`` puts such parts back together."""
        if not 0 <= start <= stop <= self.num_frames:
            raise ValueError(f"frame range [{start}, {stop}) is outside the {self.num_frames} frames of this batch")
        if start == 0 and stop == self.num_frames:
            return self
        part = self.select((self.frame_index >= start) & (self.frame_index < stop))
        return replace(part, frame_index=part.frame_index - start, num_frames=stop - start)

    @staticmethod
    def join(parts: Sequence["FaceBatch"], meta: Optional[dict] = None) -> "FaceBatch":
        """Batches of consecutive frame ranges (in order) as one batch over all their frames: the
        inverse of ``frame_range``. ``meta`` replaces the first part's meta when given."""
        if not parts:
            raise ValueError("nothing to join: give at least one FaceBatch")
        first = parts[0]
        if any(tuple(p.frame_size) != tuple(first.frame_size) for p in parts):
            raise ValueError(f"cannot join face batches of different frame sizes: {[p.frame_size for p in parts]}")
        offsets, total = [], 0
        for p in parts:
            offsets.append(total)
            total += p.num_frames

        def cat(name):   # per-face tensors; an optional one (gray) absent in any part stays absent
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else torch.cat(values)
        per_face = {f.name: cat(f.name) for f in fields(first) if f.name not in ("frame_size", "num_frames", "meta")}
        per_face["frame_index"] = torch.cat([p.frame_index + o for p, o in zip(parts, offsets)])
        return replace(first, **per_face, num_frames=total, meta=dict(first.meta if meta is None else meta))

    def counts_per_frame(self) -> torch.Tensor:
        """[num_frames] int64 number of faces in each frame."""
        return torch.bincount(self.frame_index.cpu(), minlength=self.num_frames)

    @staticmethod
    def empty(num_frames: int, frame_size: Tuple[int, int], crop_size: int = 512,
              device=None) -> "FaceBatch":
        z = lambda *s, dt=torch.float32: torch.zeros(*s, dtype=dt, device=device)  # noqa: E731
        return FaceBatch(crops=z(0, 3, crop_size, crop_size), affines=z(0, 2, 3),
                         inverse_affines=z(0, 2, 3), frame_index=z(0, dt=torch.int64),
                         boxes=z(0, 4), scores=z(0), landmarks=z(0, 5, 2),
                         frame_size=tuple(frame_size), num_frames=num_frames,
                         gray=z(0, dt=torch.bool))
