"""Batched face detection: RetinaFace over all frames of a batch, results in frame pixels.

The network, decoding and NMS run once per chunk of frames on the detector's device (a chunk
that runs out of memory is halved: ``chunks.run_in_chunks``); only the per-frame selection
bookkeeping is done with vectorised index arithmetic afterwards.

Defaults follow CodeFormer's own inference helper (conf 0.8, NMS 0.4, short side 640),
which is what users compare this node pack against. facexlib's helper uses conf 0.97 and
Lanczos resizing; pass ``conf_threshold=0.97`` for its stricter behaviour.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..chunks import run_in_chunks
from ..errors import SettingsError
from ..models.loader import load_retinaface
from ..models.retinaface import (RetinaFace, batched_nms, decode_boxes, decode_landmarks, preprocess_rgb01,
                                 prior_boxes)
from .rows import FrameRows

DEFAULT_CONF_THRESHOLD = 0.8
DEFAULT_NMS_THRESHOLD = 0.4
DEFAULT_RESOLUTION = 640
# Bounds on the network input, whatever the frame's shape or the resolution asked for: an extreme
# aspect ratio (8000x64 at short side 640 would be 80000x640) or a huge frame at resolution 0 is
# scaled down further, aspect kept. Ordinary frames (aspect up to 6.4:1 at 640) are not affected.
# RetinaFace ResNet-50 needs about 300 bytes per network pixel on the CPU: at most ~1.3 GB a frame.
MAX_NETWORK_SIDE = 4096
MAX_NETWORK_PIXELS = 2048 * 2048
SELECTIONS = ("all", "largest", "center", "index")
SORT_KEYS = ("area", "left_to_right", "confidence")


@dataclass
class Detections(FrameRows):
    """All faces of all frames, one row each, in ORIGINAL frame pixel coordinates.

    Within a frame, rows follow the requested sort order; frames are in ascending order.
    Landmarks: left eye, right eye (image left/right), nose, left and right mouth corner.
    """
    boxes: torch.Tensor        # [M,4] float32 x1, y1, x2, y2 (not clipped to the frame)
    scores: torch.Tensor       # [M] float32 face probability
    landmarks: torch.Tensor    # [M,5,2] float32 (x, y)
    frame_index: torch.Tensor  # [M] int64
    num_frames: int = 0
    frame_size: Tuple[int, int] = (0, 0)  # (H, W)
    # Set by faces.tracks.track_detections (None before): [M] int64 face track id (never spans
    # a scene cut), and [M] bool rows filled in for a face the detector missed inside its track.
    track: Optional[torch.Tensor] = None
    interpolated: Optional[torch.Tensor] = None

    def for_frame(self, frame: int) -> "Detections":
        return self.select(self.frame_index == int(frame))

    @classmethod
    def join(cls, parts: Sequence["Detections"]) -> "Detections":
        """``FrameRows.join`` (no parts: no detections). Track ids and interpolation flags are
        kept only when every part has them."""
        return super().join(parts) if parts else Detections.empty()

    def as_rows(self) -> torch.Tensor:
        """[M,15] x1, y1, x2, y2, score, 5 x (x, y): the reference detector's row layout."""
        return torch.cat([self.boxes, self.scores[:, None], self.landmarks.reshape(-1, 10)], dim=1)

    @staticmethod
    def empty(num_frames: int = 0, frame_size: Tuple[int, int] = (0, 0), device=None) -> "Detections":
        z = lambda *s, dt=torch.float32: torch.zeros(*s, dtype=dt, device=device)  # noqa: E731
        return Detections(z(0, 4), z(0), z(0, 5, 2), z(0, dt=torch.int64), num_frames, tuple(frame_size))


@dataclass(frozen=True)
class DetectOptions:
    """Everything ``FaceDetector.detect`` takes besides the frames, as one value a front end
    builds once (see ``FaceDetector.detect`` for each field)."""
    conf_threshold: float = DEFAULT_CONF_THRESHOLD
    nms_threshold: float = DEFAULT_NMS_THRESHOLD
    resolution: Optional[int] = DEFAULT_RESOLUTION
    min_eye_distance: float = 0.0
    selection: str = "all"
    sort_by: str = "area"
    index: int = 0
    max_faces: int = 0
    min_size: float = 0.0
    max_size: float = 0.0
    chunk_size: Optional[int] = None

    def kwargs(self) -> dict:
        """The keyword arguments of ``FaceDetector.detect`` (and ``pipeline.detect_faces``)."""
        return asdict(self)


def network_size(height: int, width: int, resolution: Optional[int]) -> Tuple[int, int]:
    """Size the frames are resized to for the network: short side ``resolution`` (None/0: the
    frame's own size), then scaled down if needed so that the long side is at most
    ``MAX_NETWORK_SIDE`` and the area at most ``MAX_NETWORK_PIXELS``."""
    short, long_ = min(height, width), max(height, width)
    factor = resolution / short if resolution and resolution > 0 else 1.0
    bound = min(MAX_NETWORK_SIDE / long_, math.sqrt(MAX_NETWORK_PIXELS / (height * width)))
    if factor > bound:  # too large: the largest size within both bounds
        return max(1, int(height * bound)), max(1, int(width * bound))
    if factor == 1.0:
        return height, width
    if height <= width:
        return int(resolution), max(1, int(round(width * factor)))
    return max(1, int(round(height * factor))), int(resolution)


def _rank_within_frames(frame_index: torch.Tensor, key: torch.Tensor, descending: bool,
                        num_frames: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Permutation grouping rows by frame, ordered by ``key`` inside each frame (stable), and
    each permuted row's rank inside its frame."""
    by_key = torch.sort(key, descending=descending, stable=True).indices
    by_frame = torch.sort(frame_index[by_key], stable=True).indices
    order = by_key[by_frame]
    frames = frame_index[order]
    counts = torch.bincount(frames, minlength=num_frames)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=order.device) - starts[frames]
    return order, rank


class FaceDetector:
    """RetinaFace wrapper that detects faces in a batch of RGB 0..1 frames ([B,3,H,W])."""

    def __init__(self, net: RetinaFace, chunk_size: int = 8) -> None:
        self.net = net.eval()
        self.chunk_size = int(chunk_size)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def backbone(self) -> str:
        return self.net.backbone

    # no_grad, not inference_mode: callers may edit the returned tensors in place.
    @torch.no_grad()
    def detect(self, frames: torch.Tensor, conf_threshold: float = DEFAULT_CONF_THRESHOLD,
               nms_threshold: float = DEFAULT_NMS_THRESHOLD, resolution: Optional[int] = DEFAULT_RESOLUTION,
               min_eye_distance: float = 0.0, selection: str = "all", sort_by: str = "area",
               index: int = 0, max_faces: int = 0, min_size: float = 0, max_size: float = 0,
               chunk_size: Optional[int] = None) -> Detections:
        """Detect, filter and select faces per frame.

        resolution: short side the frames are resized to for the network (area when
            shrinking, bilinear when enlarging); None or 0 keeps the original size.
        min_eye_distance: drop faces whose eye landmarks are closer than this (frame pixels).
        min_size, max_size: drop faces whose box's short side (frame pixels) is below / above
            these (0 = no limit); selection and index apply to the faces left.
        selection: 'all' (every face, up to ``max_faces`` per frame in ``sort_by`` order),
            'largest' (largest box area inside the frame), 'center' (box centre nearest the
            frame centre), 'index' (the ``index``-th face in ``sort_by`` order; negative counts
            from the end; frames with too few faces get none).
        sort_by: 'area' (largest first), 'left_to_right' (box centre x), 'confidence' (highest
            first, the reference detector's order). Ties keep the confidence order.
        Returns Detections on the frames' device, in original frame coordinates.
        """
        _check_selection(selection, sort_by)
        _check_sizes(min_size, max_size)
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be [B,3,H,W] RGB, got shape {tuple(frames.shape)}")
        if not frames.is_floating_point():
            raise ValueError(f"frames must be float RGB in 0..1, got {frames.dtype}")
        dets = self._detect_all(frames, float(conf_threshold), float(nms_threshold), resolution,
                                int(chunk_size or self.chunk_size))
        dets = select_faces(dets, min_eye_distance=min_eye_distance, selection=selection,
                            sort_by=sort_by, index=index, max_faces=max_faces, min_size=min_size, max_size=max_size)
        return dets.to(frames.device)

    def _detect_all(self, frames: torch.Tensor, conf_threshold: float, nms_threshold: float,
                    resolution: Optional[int], chunk_size: int) -> Detections:
        """Every face above the threshold after NMS; per frame in descending score order."""
        num_frames, _, height, width = (int(s) for s in frames.shape)
        if num_frames == 0 or height == 0 or width == 0:
            return Detections.empty(num_frames, (height, width), self.device)
        device = self.device
        net_dtype = next(self.net.parameters()).dtype
        net_h, net_w = network_size(height, width, resolution)
        priors = prior_boxes(net_h, net_w, device)
        # Decoded coordinates are fractions of the network input, which spans the whole frame,
        # so scaling by the ORIGINAL size maps straight back to frame pixels.
        box_scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=device)
        point_scale = torch.tensor([width, height], dtype=torch.float32, device=device)

        def chunk(start: int, stop: int):
            x = frames[start:stop].to(device=device, dtype=torch.float32)
            if (net_h, net_w) != (height, width):
                shrink = net_h < height
                x = F.interpolate(x, size=(net_h, net_w), mode="area" if shrink else "bilinear",
                                  **({} if shrink else {"align_corners": False}))
            loc, conf, landms = self.net(preprocess_rgb01(x).to(net_dtype))
            scores = conf[..., 1].float()
            frame_ids, prior_ids = torch.nonzero(scores > conf_threshold, as_tuple=True)
            cand_priors = priors[prior_ids]
            boxes = decode_boxes(loc[frame_ids, prior_ids].float(), cand_priors) * box_scale
            points = decode_landmarks(landms[frame_ids, prior_ids].float(), cand_priors) * point_scale
            cand_scores = scores[frame_ids, prior_ids]
            keep = batched_nms(boxes, cand_scores, frame_ids, nms_threshold)
            return boxes[keep], cand_scores[keep], points[keep], frame_ids[keep] + start

        # Frames per network batch: as asked, within MAX_NETWORK_PIXELS (always at least one frame).
        per_chunk = min(num_frames if chunk_size <= 0 else chunk_size, max(1, MAX_NETWORK_PIXELS // (net_h * net_w)))
        parts = run_in_chunks(num_frames, per_chunk, chunk, device=device,
                              describe=lambda i: f"face detection on frame {i + 1} ({width}x{height}, "
                                                 f"network input {net_w}x{net_h})")
        if not parts:
            return Detections.empty(num_frames, (height, width), device)
        boxes, scores, points, frame_index = (torch.cat(p) for p in zip(*parts))
        # NMS output is score-descending across the chunk; regroup by frame, keeping that order.
        order = torch.sort(frame_index, stable=True).indices
        return Detections(boxes[order], scores[order], points[order], frame_index[order].long(),
                          num_frames, (height, width))


def _check_selection(selection: str, sort_by: str) -> None:
    if selection not in SELECTIONS:
        raise SettingsError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if sort_by not in SORT_KEYS:
        raise SettingsError(f"sort_by must be one of {SORT_KEYS}, got {sort_by!r}")


def _check_sizes(min_size: float, max_size: float) -> None:
    if min_size < 0 or max_size < 0:
        raise SettingsError(f"min_size and max_size must be >= 0 (0 = no limit), got {min_size} and {max_size}")
    if min_size > 0 and max_size > 0 and min_size > max_size:
        raise SettingsError(f"min_size {min_size:g} is more than max_size {max_size:g}: no face can be both")


def select_faces(dets: Detections, min_eye_distance: float = 0.0, selection: str = "all",
                 sort_by: str = "area", index: int = 0, max_faces: int = 0, min_size: float = 0,
                 max_size: float = 0) -> Detections:
    """Per-frame filtering, ordering and picking (see FaceDetector.detect for the options).

    Separate from detection so a node can re-select faces without running the network again.
    """
    _check_selection(selection, sort_by)
    _check_sizes(min_size, max_size)
    if min_eye_distance and min_eye_distance > 0 and len(dets):
        eye_distance = torch.linalg.vector_norm(dets.landmarks[:, 0] - dets.landmarks[:, 1], dim=-1)
        dets = dets.select(eye_distance >= min_eye_distance)
    if (min_size > 0 or max_size > 0) and len(dets):   # faces of other sizes are left alone
        wh = dets.boxes[:, 2:] - dets.boxes[:, :2]
        short = wh.amin(1)
        keep = torch.ones_like(short, dtype=torch.bool)
        if min_size > 0:
            keep &= short >= min_size
        if max_size > 0:
            keep &= short <= max_size
        dets = dets.select(keep)
    if len(dets) == 0:
        return dets
    index, max_faces = int(index), int(max_faces)
    height, width = dets.frame_size
    boxes = dets.boxes
    clamped = torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                           boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)], dim=1)
    area = (clamped[:, 2] - clamped[:, 0]) * (clamped[:, 3] - clamped[:, 1])
    if selection == "largest":
        key, descending = area, True
    elif selection == "center":
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        frame_centre = torch.tensor([width / 2, height / 2], dtype=boxes.dtype, device=boxes.device)
        key, descending = ((centre - frame_centre) ** 2).sum(dim=1), False
    elif sort_by == "area":
        key, descending = area, True
    elif sort_by == "left_to_right":
        key, descending = (boxes[:, 0] + boxes[:, 2]) / 2, False
    else:
        key, descending = dets.scores, True
    order, rank = _rank_within_frames(dets.frame_index, key, descending, dets.num_frames)
    if selection in ("largest", "center"):
        keep = rank == 0
    elif selection == "index":
        if index >= 0:
            keep = rank == index
        else:
            counts = torch.bincount(dets.frame_index, minlength=dets.num_frames)
            keep = rank == counts[dets.frame_index[order]] + index
    else:
        keep = rank < max_faces if max_faces and max_faces > 0 else torch.ones_like(rank, dtype=torch.bool)
    return dets.select(order[keep])


def load_detector(source, device=None, chunk_size: int = 8) -> FaceDetector:
    """FaceDetector from a RetinaFace checkpoint path or state dict (backbone from the keys)."""
    return FaceDetector(load_retinaface(source, device=device), chunk_size=chunk_size)
