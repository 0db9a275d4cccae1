"""The face batch: what flows between detection, restoration and paste-back.

Every per-face tensor has the same first dimension N (all faces of all frames), so the
network and the warps run once per batch instead of once per face. ``frame_index`` maps
each face back to its frame; frames without faces simply have no rows. Indexing, chunking
(``take_frames``), device moves and joins are ``faces.rows.FrameRows``'s, shared with ``Detections``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence, Tuple

import torch

from .rows import FrameRows


@dataclass
class FaceBatch(FrameRows):
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

    @property
    def crop_size(self) -> int:
        return int(self.crops.shape[-1])

    def with_crops(self, crops: torch.Tensor, **meta) -> "FaceBatch":
        """Same faces, new crop pixels (the output of restore/colorize/inpaint or an edit)."""
        if crops.shape[0] != len(self):
            raise ValueError(f"expected {len(self)} crops, got {crops.shape[0]}")
        return replace(self, crops=crops, meta={**self.meta, **meta})

    def to(self, device=None, dtype=None) -> "FaceBatch":
        """Move tensors; only the crops take ``dtype`` (geometry stays float32)."""
        moved = super().to(device) if device is not None else self
        return replace(moved, crops=moved.crops.to(dtype=dtype)) if dtype is not None else moved

    @classmethod
    def join(cls, parts: Sequence["FaceBatch"], meta: Optional[dict] = None) -> "FaceBatch":
        """``FrameRows.join``; ``meta`` replaces the first part's meta when given."""
        joined = super().join(parts)
        return replace(joined, meta=dict(parts[0].meta if meta is None else meta))

    @staticmethod
    def empty(num_frames: int, frame_size: Tuple[int, int], crop_size: int = 512,
              device=None) -> "FaceBatch":
        z = lambda *s, dt=torch.float32: torch.zeros(*s, dtype=dt, device=device)  # noqa: E731
        return FaceBatch(crops=z(0, 3, crop_size, crop_size), affines=z(0, 2, 3),
                         inverse_affines=z(0, 2, 3), frame_index=z(0, dt=torch.int64),
                         boxes=z(0, 4), scores=z(0), landmarks=z(0, 5, 2),
                         frame_size=tuple(frame_size), num_frames=num_frames,
                         gray=z(0, dt=torch.bool))
