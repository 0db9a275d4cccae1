"""Temporal smoothing of face landmarks: online for streams, zero-lag for whole clips.

Detected landmarks jitter by a pixel or two from frame to frame, and the aligned crop (hence the
restored face) jitters with them. Two smoothers:

* ``LandmarkSmoother``: an online exponential filter, frame after frame, for streams (a clip that
  is seen once, chunk by chunk). It lags behind a moving face by ``strength / (1 - strength)``
  frames.
* ``smooth_detections``: when every frame's detections are at hand (a ComfyUI IMAGE batch, a video
  file the command line reads twice), each face is followed from frame to frame
  (``track_faces``) and smoothed along its track with a centred window (``smooth_tracks``):
  jitter goes, and nothing lags.

The centred window is a local linear fit weighted by a Gaussian of ``sigma`` frames (radius
3 sigma). Inside a track with every frame present the window is symmetric and the fit is exactly
the Gaussian-weighted mean; at the start and end of a track, and around frames where the face was
missed, only frames where the face really is take part (no pull toward missing frames), and the
linear term keeps a one-sided window from dragging a moving face back toward where it was (a
truncated mean would lag there). ``codeformer_core.dev.bench_smoothing`` measures both smoothers.

For video, ``track_detections`` gives every face its track id (``Detections.track``; the temporal
code choice, ``faces.temporal``, combines frames of one track only), fills in a face the detector
missed for at most ``max_fill`` frames inside its track (interpolated landmarks, flagged in
``Detections.interpolated``: it is restored like the others instead of blinking), and ends every
track at a scene cut (``SceneCuts``: a frame-difference test run in the detection pass), so that
neither landmark smoothing nor temporal codes blend two shots.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional, Tuple

import torch

from .detect import Detections

Tensor = torch.Tensor

__all__ = ["LandmarkSmoother", "SceneCuts", "box_iou", "track_faces", "fill_gaps", "smooth_tracks",
           "smooth_detections", "track_detections", "DEFAULT_MAX_FILL"]

DEFAULT_MAX_FILL = 3        # frames a face may be missed inside its track and still be restored


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """[A,B] intersection over union of x1,y1,x2,y2 boxes [A,4] and [B,4]."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]).clamp(min=0) * (x[:, 3] - x[:, 1]).clamp(min=0)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter).clamp(min=1e-9)


class LandmarkSmoother:
    """Exponential smoothing of landmarks across consecutive frames, to reduce flicker (streams).

    A face is matched to the previous frame's face with the highest box IoU (above
    ``min_iou``); unmatched faces start fresh. State carries over between calls so a video
    processed in chunks is smoothed seamlessly.
    """

    def __init__(self, strength: float = 0.5, min_iou: float = 0.3):
        if not 0 <= strength < 1:
            raise ValueError("smoothing strength must be in [0, 1)")
        self.strength, self.min_iou = float(strength), float(min_iou)
        self._prev_boxes: Optional[Tensor] = None
        self._prev_points: Optional[Tensor] = None

    def __call__(self, dets: Detections) -> Detections:
        if self.strength == 0 or len(dets) == 0:
            self._prev_boxes = self._prev_points = None if len(dets) == 0 else self._prev_boxes
            return dets
        points = dets.landmarks.clone()
        counts = dets.counts_per_frame().tolist()
        start = 0
        for count in counts:  # frames are sequential by nature; faces within a frame are vectorised
            rows = slice(start, start + count)
            start += count
            if count and self._prev_boxes is not None and len(self._prev_boxes):
                iou = box_iou(dets.boxes[rows], self._prev_boxes)
                best, j = iou.max(dim=1)
                hit = best >= self.min_iou
                blended = self.strength * self._prev_points[j] + (1 - self.strength) * points[rows]
                points[rows] = torch.where(hit[:, None, None], blended, points[rows])
            self._prev_boxes, self._prev_points = dets.boxes[rows], points[rows]
        return replace(dets, landmarks=points)


def track_faces(dets: Detections, min_iou: float = 0.3, max_distance: float = 0.5,
                max_gap: int = 2, cuts: Optional[Tensor] = None) -> Tensor:
    """[M] int64 track id of every detection (0, 1, ... in order of first appearance).

    ``cuts``: [num_frames] bool, True where a frame starts a new shot (``SceneCuts``): no
    track continues across it.

    Frame after frame, each face is matched to a track last seen at most ``max_gap`` frames
    before (a missed detection or two does not split a track): candidates overlap the track's last
    box by ``min_iou`` or have landmarks within ``max_distance`` face sizes of its last ones
    (mean over the 5 points; face size = square root of the box area); the best pairs (IoU minus
    distance) are taken first, one face per track. A face left over starts a new track.
    """
    m = len(dets)
    track = torch.full((m,), -1, dtype=torch.int64)
    if m == 0:
        return track
    boxes, points = dets.boxes.detach().cpu().double(), dets.landmarks.detach().cpu().double()
    frame_of = dets.frame_index.cpu()
    order = torch.sort(frame_of, stable=True).indices
    counts = torch.bincount(frame_of, minlength=dets.num_frames).tolist()
    last_box, last_points = boxes[:0], points[:0]
    last_frame = torch.zeros(0, dtype=torch.int64)
    cut_at = [] if cuts is None else torch.nonzero(torch.as_tensor(cuts).cpu()).flatten().tolist()
    shot_start, start = 0, 0
    cut_at = set(cut_at)
    for frame, count in enumerate(counts):
        rows = order[start:start + count]
        start += count
        if frame in cut_at:
            shot_start = frame
        if not count:
            continue
        live = torch.nonzero(last_frame >= max(frame - 1 - max_gap, shot_start)).flatten()
        taken = torch.full((count,), -1, dtype=torch.int64)
        if len(live):
            iou = box_iou(boxes[rows], last_box[live])
            tb = last_box[live]
            size = ((tb[:, 2] - tb[:, 0]).clamp(min=1) * (tb[:, 3] - tb[:, 1]).clamp(min=1)).sqrt()
            dist = (points[rows][:, None] - last_points[live][None]).norm(dim=-1).mean(-1) / size[None]
            score = torch.where((iou >= min_iou) | (dist <= max_distance), iou - dist,
                                torch.full_like(iou, -math.inf))
            for _ in range(min(count, len(live))):   # greedy: best remaining pair first
                best = int(torch.argmax(score))
                i, j = divmod(best, len(live))
                if score[i, j] == -math.inf:
                    break
                taken[i] = live[j]
                score[i, :] = -math.inf
                score[:, j] = -math.inf
        new = taken < 0
        n_new = int(new.sum())
        taken[new] = torch.arange(len(last_frame), len(last_frame) + n_new)
        last_box = torch.cat([last_box, boxes[rows][new]])
        last_points = torch.cat([last_points, points[rows][new]])
        last_frame = torch.cat([last_frame, torch.full((n_new,), frame, dtype=torch.int64)])
        last_box[taken], last_points[taken], last_frame[taken] = boxes[rows], points[rows], frame
        track[rows] = taken
    return track


def smooth_tracks(values: Tensor, frame_index: Tensor, track: Tensor, sigma: float) -> Tensor:
    """Per track, values [M,K] smoothed over time by a Gaussian-weighted local linear fit.

    ``sigma`` in frames (0 = unchanged); the window reaches 3 sigma on each side and uses only
    frames of the same track (see the module notes). Returns float64 [M,K] on the CPU.
    """
    v = values.detach().cpu().double().reshape(values.shape[0], -1)
    if sigma <= 0 or v.shape[0] == 0:
        return v.clone()
    out = v.clone()
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-offsets ** 2 / (2 * sigma * sigma))
    frame_of, track = frame_index.cpu(), track.cpu()
    for t in torch.unique(track).tolist():
        rows = torch.nonzero(track == t).flatten()
        f = frame_of[rows]
        length = int(f.max() - f.min()) + 1
        pos = f - f.min() + radius
        y = torch.zeros(length + 2 * radius, v.shape[1], dtype=torch.float64)
        present = torch.zeros(length + 2 * radius, dtype=torch.float64)
        y[pos], present[pos] = v[rows], 1.0
        s0, s1, s2 = (torch.zeros(length, dtype=torch.float64) for _ in range(3))
        sy = torch.zeros(length, v.shape[1], dtype=torch.float64)
        sdy = torch.zeros(length, v.shape[1], dtype=torch.float64)
        for d, w in zip(offsets.tolist(), weights.tolist()):
            lo = radius + int(d)
            wp = w * present[lo:lo + length]
            s0 += wp
            s1 += wp * d
            s2 += wp * d * d
            sy += wp[:, None] * y[lo:lo + length]
            sdy += (wp * d)[:, None] * y[lo:lo + length]
        det = s0 * s2 - s1 * s1
        linear = det > 1e-9 * s0 * s0
        safe = torch.where(linear, det, torch.ones_like(det))
        fit = torch.where(linear[:, None], (s2[:, None] * sy - s1[:, None] * sdy) / safe[:, None],
                          sy / s0.clamp(min=1e-300)[:, None])
        out[rows] = fit[pos - radius]
    return out


def smooth_detections(dets: Detections, sigma: float, **track_kwargs) -> Detections:
    """Landmarks and boxes of every face smoothed along its track (zero lag; ``sigma`` in frames,
    0 = unchanged). ``track_kwargs`` go to ``track_faces``."""
    if sigma <= 0 or len(dets) == 0:
        return dets
    track = track_faces(dets, **track_kwargs)
    m = len(dets)
    values = torch.cat([dets.landmarks.reshape(m, -1), dets.boxes], 1)
    smooth = smooth_tracks(values, dets.frame_index, track, sigma).to(device=dets.device,
                                                                       dtype=dets.landmarks.dtype)
    return replace(dets, landmarks=smooth[:, :10].reshape(m, 5, 2), boxes=smooth[:, 10:])


def fill_gaps(dets: Detections, track: Tensor, max_fill: int = DEFAULT_MAX_FILL) -> Tuple[Detections, Tensor]:
    """A face missed for at most ``max_fill`` frames between two detections of its track gets a
    row in each missed frame: landmarks, box and score interpolated linearly in time. Returns
    (detections, track ids), rows in frame order (a frame's filled rows after its detected
    ones) and ``interpolated`` set (True for the filled rows)."""
    flags = torch.zeros(len(dets), dtype=torch.bool) if dets.interpolated is None else dets.interpolated.cpu()
    frame_of, track = dets.frame_index.cpu(), track.cpu()
    by_frame = torch.sort(frame_of, stable=True).indices
    order = by_frame[torch.sort(track[by_frame], stable=True).indices]      # by track, then frame
    t_sorted, f_sorted = track[order], frame_of[order]
    gap = f_sorted[1:] - f_sorted[:-1] - 1
    fill = torch.nonzero((t_sorted[1:] == t_sorted[:-1]) & (gap >= 1) & (gap <= max_fill)).flatten()
    values = torch.cat([dets.landmarks.reshape(len(dets), -1), dets.boxes, dets.scores[:, None]], 1).cpu().double()
    new_values, new_frames, new_tracks = [], [], []
    for i in fill.tolist():                  # one short loop per gap (a few per clip)
        a, b = order[i], order[i + 1]
        fa, fb = int(f_sorted[i]), int(f_sorted[i + 1])
        s = (torch.arange(fa + 1, fb, dtype=torch.float64) - fa) / (fb - fa)
        new_values.append(values[a] + s[:, None] * (values[b] - values[a]))
        new_frames.append(torch.arange(fa + 1, fb))
        new_tracks.append(torch.full((fb - fa - 1,), int(t_sorted[i]), dtype=torch.int64))
    if not new_values:
        return replace(dets, track=track.to(dets.device), interpolated=flags.to(dets.device)), track
    v = torch.cat(new_values).to(dets.landmarks.dtype)
    n = v.shape[0]
    added = Detections(v[:, 10:14], v[:, 14], v[:, :10].reshape(n, 5, 2), torch.cat(new_frames),
                       dets.num_frames, dets.frame_size, torch.cat(new_tracks), torch.ones(n, dtype=torch.bool))
    base = replace(dets.to("cpu"), track=track, interpolated=flags)
    both = Detections(*(torch.cat([getattr(base, k), getattr(added, k)]) for k in ("boxes", "scores", "landmarks",
                                                                                  "frame_index")),
                      dets.num_frames, dets.frame_size, torch.cat([track, added.track]),
                      torch.cat([flags, added.interpolated]))
    by_frame = torch.sort(both.frame_index, stable=True).indices
    out = both.select(by_frame).to(dets.device)
    return out, out.track.cpu()


def track_detections(dets: Detections, sigma: float = 0.0, cuts: Optional[Tensor] = None,
                     max_fill: int = DEFAULT_MAX_FILL, **track_kwargs) -> Detections:
    """The video pass between detection and restoration: track ids (``Detections.track``; no
    track crosses a ``cuts`` frame), faces missed for at most ``max_fill`` frames filled in
    (``Detections.interpolated``; ``int(d.interpolated.sum())`` is the count to report), then,
    when ``sigma`` > 0, landmarks and boxes smoothed along the tracks (``smooth_detections``).
    ``track_kwargs`` go to ``track_faces`` (its ``max_gap`` defaults to ``max_fill`` here)."""
    track_kwargs.setdefault("max_gap", max(max_fill, 0))
    if len(dets) == 0:      # no face in the clip: nothing to track
        return replace(dets, track=torch.zeros(0, dtype=torch.int64, device=dets.device),
                       interpolated=torch.zeros(0, dtype=torch.bool, device=dets.device))
    track = track_faces(dets, cuts=cuts, **track_kwargs)
    out, track = fill_gaps(dets, track, max_fill) if max_fill > 0 else \
        (replace(dets, track=track.to(dets.device), interpolated=torch.zeros(len(dets), dtype=torch.bool,
                                                                           device=dets.device)), track)
    if sigma <= 0 or len(out) == 0:
        return out
    m = len(out)
    values = torch.cat([out.landmarks.reshape(m, -1), out.boxes], 1)
    smooth = smooth_tracks(values, out.frame_index, track, sigma).to(device=out.device, dtype=out.landmarks.dtype)
    return replace(out, landmarks=smooth[:, :10].reshape(m, 5, 2), boxes=smooth[:, 10:])


class SceneCuts:
    """Hard-cut detector for the detection pass, chunk after chunk (state carries over).

    Each frame is reduced to a ``size`` x ``size`` gray thumbnail (area average); a frame starts a
    new shot when the mean absolute difference to the previous thumbnail (0..1 gray levels) is
    above ``threshold`` and above ``ratio`` times the median of the recent differences (the last
    ``history``; with fewer than two, ``ratio`` times ``threshold``): a pan or a fast motion
    raises every difference alike, a cut only one. Call with frames [B,3,H,W] RGB 0..1 (the detector's
    input); returns [B] bool.
    """

    def __init__(self, threshold: float = 0.06, ratio: float = 4.0, history: int = 8, size: int = 32):
        self.threshold, self.ratio, self.history, self.size = float(threshold), float(ratio), int(history), int(size)
        self._prev: Optional[Tensor] = None
        self._recent: list = []

    def differences(self, frames: Tensor) -> Tensor:
        """[B] mean absolute thumbnail difference to the previous frame (NaN for a clip's first)."""
        rgb = frames.float()
        gray = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])[:, None]
        thumbs = torch.nn.functional.adaptive_avg_pool2d(gray, (self.size, self.size))[:, 0].cpu().double()
        prev = thumbs[:1] * math.nan if self._prev is None else self._prev[None]
        seq = torch.cat([prev, thumbs])
        self._prev = thumbs[-1]
        return (seq[1:] - seq[:-1]).abs().mean((1, 2))

    def __call__(self, frames: Tensor) -> Tensor:
        cut = []
        for d in self.differences(frames).tolist():      # a few numbers per frame
            recent = sorted(self._recent)
            median = recent[len(recent) // 2] if len(recent) >= 2 else self.threshold   # too few: only a large jump
            is_cut = not math.isnan(d) and d > self.threshold and d > self.ratio * median
            if not is_cut and not math.isnan(d):        # a cut's own jump is no motion to compare with
                self._recent = (self._recent + [d])[-self.history:]
            cut.append(is_cut)
        return torch.tensor(cut, dtype=torch.bool)
