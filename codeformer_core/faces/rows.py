"""Things per frame: the one container behind ``Detections`` and ``FaceBatch``.

A batch of frames has any number of faces; each face is one *row*. Every tensor field of a
``FrameRows`` subclass is per row (first dimension = the number of rows; an optional one may be
None), ``frame_index`` [N] int64 says which frame each row belongs to, and ``num_frames`` /
``frame_size`` describe the frames, so frames without a row still count. Indexing, chunking by
frames, device moves and joins are written once here.
"""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Iterable, List, Sequence, Tuple, TypeVar

import torch

R = TypeVar("R", bound="FrameRows")


class FrameRows:
    """Base of the per-frame row containers (``faces.detect.Detections``, ``faces.batch.FaceBatch``).

    Subclasses are dataclasses that declare ``frame_index`` ([N] int64), ``num_frames`` (int),
    ``frame_size`` ((H, W)) and their per-row tensors; every field holding a tensor (or None) is
    per row. (The base declares no fields, so each subclass keeps its own field order.)
    """

    frame_index: torch.Tensor
    num_frames: int
    frame_size: Tuple[int, int]

    def __len__(self) -> int:
        return int(self.frame_index.shape[0])

    @property
    def device(self) -> torch.device:
        return self.frame_index.device

    def _row_fields(self) -> List[str]:
        """Names of the per-row fields: those holding a tensor, or None (an absent optional one)."""
        return [f.name for f in fields(self) if f.name not in ("num_frames", "frame_size")
                and (getattr(self, f.name) is None or isinstance(getattr(self, f.name), torch.Tensor))]

    def to(self: R, device) -> R:
        """Every tensor moved to ``device``."""
        return replace(self, **{n: getattr(self, n).to(device) for n in self._row_fields()
                                if getattr(self, n) is not None})

    def select(self: R, index: torch.Tensor) -> R:
        """A subset of rows (bool mask or int index); the frames' bookkeeping is unchanged."""
        return replace(self, **{n: getattr(self, n)[index] for n in self._row_fields()
                                if getattr(self, n) is not None})

    def counts_per_frame(self) -> torch.Tensor:
        """[num_frames] int64 number of rows in each frame (on the CPU)."""
        return torch.bincount(self.frame_index.cpu(), minlength=self.num_frames)

    def take_frames(self: R, frames: Iterable[int]) -> R:
        """The rows of the given frames (e.g. ``range(start, stop)``, a chunk of a clip) as rows of
        a batch of ``len(frames)`` frames, renumbered in that order. ``join`` puts consecutive
        ranges back together."""
        picked = torch.as_tensor(list(frames), dtype=torch.int64)
        if picked.numel() and not (0 <= int(picked.min()) and int(picked.max()) < self.num_frames):
            raise ValueError(f"frames {picked.tolist()} are outside the {self.num_frames} frames of this batch")
        if picked.numel() == self.num_frames and torch.equal(picked, torch.arange(self.num_frames)):
            return self
        position = torch.full((self.num_frames,), -1, dtype=torch.int64)
        position[picked] = torch.arange(picked.numel())
        new_index = position[self.frame_index.cpu()].to(self.device)
        keep = new_index >= 0
        return replace(self.select(keep), frame_index=new_index[keep], num_frames=int(picked.numel()))

    @classmethod
    def join(cls, parts: Sequence[R]) -> R:
        """Rows of consecutive frame batches (in order) as one, over all their frames: the inverse
        of ``take_frames`` over consecutive ranges. An optional field absent in any part is absent."""
        if not parts:
            raise ValueError(f"nothing to join: give at least one {cls.__name__}")
        first = parts[0]
        if any(tuple(p.frame_size) != tuple(first.frame_size) for p in parts):
            raise ValueError(f"cannot join {cls.__name__} of different frame sizes: {[p.frame_size for p in parts]}")
        offsets = torch.cumsum(torch.tensor([0] + [p.num_frames for p in parts]), 0).tolist()
        joined = {}
        for name in first._row_fields():
            values = [getattr(p, name) for p in parts]
            joined[name] = None if any(v is None for v in values) else torch.cat(values)
        joined["frame_index"] = torch.cat([p.frame_index + o for p, o in zip(parts, offsets)])
        return replace(first, **joined, num_frames=int(offsets[-1]))
