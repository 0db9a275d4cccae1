"""Landmark smoothing benchmark: residual jitter and lag of none / online / zero-lag smoothing.

    python -m codeformer_core.dev.bench_smoothing [--frames 240] [--jitter 2] [--seed 0]
    python -m codeformer_core.dev.bench_smoothing --detector DETECTOR.pth   # plus the detector check

Synthetic clip: a face (five landmarks of a 110-px face) moves along a known path (a drift plus
two sine sways: speeds up to ~6 px/frame, turning), with uniform +-``jitter`` px noise on every
landmark coordinate, as a detector's jitter. A second face enters a third of the way in and leaves
before the end (track starts and ends), and the first face is missed in two frames (gaps).

Per method, over every landmark of every frame where a face is:
* jitter: RMS of the landmarks' second difference over time (px/frame^2; the true path's own is
  printed as the floor: a perfect smoother reaches it, not 0),
* offset: mean distance from the true landmark (px),
* lag: mean offset along the direction of motion, positive = behind the face (px).

With ``--detector`` (a RetinaFace file: the official one, or any checkpoint this pack loads) the
same numbers come from a real detection pass: a photo (``--image``, default the test astronaut)
is shifted along the path by whole pixels, the detector finds the face in each frame, and the
detections are smoothed by ``pipeline.detect_clip`` as the nodes and the command line do.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

import torch

from ..faces.detect import Detections
from ..faces.tracks import LandmarkSmoother, smooth_detections, track_faces

# Five landmarks of a 110-px wide face around its centre (eyes, nose, mouth corners).
FACE_POINTS = torch.tensor([[-20.0, -15.0], [20.0, -15.0], [0.0, 5.0], [-16.0, 25.0], [16.0, 25.0]])


def true_path(frames: int) -> torch.Tensor:
    """[T,2] face centre in pixels: a drift with two sways (about 6 px/frame at the fastest)."""
    t = torch.arange(frames, dtype=torch.float64)
    x = 300 + 1.5 * t + 60 * torch.sin(2 * math.pi * t / 90)
    y = 240 + 40 * torch.sin(2 * math.pi * t / 70 + 1.0)
    return torch.stack([x, y], 1)


def synthetic_clip(frames: int, jitter: float, seed: int):
    """(noisy Detections, true landmarks [M,5,2]) for the two-face clip described above."""
    g = torch.Generator().manual_seed(seed)
    centre_a = true_path(frames)
    centre_b = centre_a.flip(0) + torch.tensor([0.0, 200.0], dtype=torch.float64)   # another path
    rows = []   # (frame, true landmarks)
    missed = {frames // 2, frames // 2 + 7}
    for f in range(frames):
        if f not in missed:
            rows.append((f, centre_a[f] + FACE_POINTS.double()))
        if frames // 3 <= f < frames - frames // 5:
            rows.append((f, centre_b[f] + FACE_POINTS.double()))
    truth = torch.stack([p for _, p in rows])
    noisy = truth + (torch.rand(truth.shape, generator=g, dtype=torch.float64) * 2 - 1) * jitter
    frame_index = torch.tensor([f for f, _ in rows])
    dets = Detections(boxes=boxes_around(noisy), scores=torch.ones(len(rows)), landmarks=noisy.float(),
                      frame_index=frame_index, num_frames=frames, frame_size=(720, 1280))
    return dets, truth


def boxes_around(points: torch.Tensor) -> torch.Tensor:
    """A face box from its landmarks (as a detector would give, roughly)."""
    lo, hi = points.min(1).values, points.max(1).values
    c, half = (lo + hi) / 2, (hi - lo).max(1).values[:, None] * 0.9
    return torch.cat([c - half, c + half], 1).float()


def online(dets: Detections, strength: float) -> Detections:
    """The streaming smoother, fed chunk by chunk as a video would be."""
    smoother = LandmarkSmoother(strength)
    parts = [smoother(dets.take_frames(range(s, min(s + 8, dets.num_frames))))
             for s in range(0, dets.num_frames, 8)]
    return Detections.join(parts)


def measure(dets: Detections, truth: torch.Tensor, tracks: torch.Tensor) -> dict:
    """jitter / offset / lag of ``dets`` against ``truth`` (rows in the same order)."""
    pts = dets.landmarks.double()
    err = pts - truth
    second, along = [], []
    for t in torch.unique(tracks).tolist():
        rows = torch.nonzero(tracks == t).flatten()
        f = dets.frame_index[rows]
        consecutive = (f[2:] - f[:-2]) == 2           # second differences only across real frames
        d2 = pts[rows][2:] - 2 * pts[rows][1:-1] + pts[rows][:-2]
        second.append(d2[consecutive].reshape(-1, 2))
        velocity = truth[rows][2:] - truth[rows][:-2]          # direction of motion (central)
        unit = velocity / velocity.norm(dim=-1, keepdim=True).clamp(min=1e-9)
        along.append(-(err[rows][1:-1] * unit).sum(-1).flatten())
    d2 = torch.cat(second)
    return {"jitter": float(d2.pow(2).sum(-1).mean().sqrt()),
            "offset": float(err.norm(dim=-1).mean()),
            "lag": float(torch.cat(along).mean())}


def table(dets: Detections, truth: torch.Tensor, sigmas=(1.0, 2.0, 3.0), strengths=(0.5, 0.7)) -> list:
    """[(method, measures)] for none, online at each strength, zero-lag at each sigma."""
    # Which face each row is: the tracker on the noise-free truth (the two paths never come close).
    tracks = track_faces(Detections(boxes_around(truth), torch.ones(len(truth)), truth.float(),
                                    dets.frame_index, dets.num_frames, dets.frame_size))
    rows = [("truth (floor)", measure(replace_points(dets, truth), truth, tracks)),
            ("none", measure(dets, truth, tracks))]
    rows += [(f"online {s}", measure(online(dets, s), truth, tracks)) for s in strengths]
    rows += [(f"zero-lag sigma {s:g}", measure(smooth_detections(dets, s), truth, tracks)) for s in sigmas]
    return rows


def replace_points(dets: Detections, points: torch.Tensor) -> Detections:
    return replace(dets, landmarks=points.float())


def print_table(title: str, rows: list) -> None:
    print(title)
    print(f"{'method':<22}{'jitter px/f^2':>14}{'offset px':>11}{'lag px':>9}")
    for name, m in rows:
        print(f"{name:<22}{m['jitter']:>14.3f}{m['offset']:>11.3f}{m['lag']:>9.3f}")


def detector_clip(detector_path: str, image_path: str, frames: int, conf: float = 0.8):
    """(Detections from a real detection pass over a shifted photo, true landmarks, shifts)."""
    import numpy as np
    from PIL import Image
    from .. import pipeline
    from ..faces.detect import load_detector
    rgb = torch.from_numpy(np.asarray(Image.open(image_path).convert("RGB")).copy()).permute(2, 0, 1)
    rgb = rgb.float()[None] / 255
    det = load_detector(detector_path)
    kw = dict(selection="largest", conf_threshold=conf)
    still = det.detect(rgb, **kw)
    if len(still) == 0:
        raise SystemExit(f"{detector_path}: no face found in {image_path}")
    path = true_path(frames)
    shifts = (path - path[0]).round().long() // 4   # whole pixels, small enough to stay in the frame
    pad = int(shifts.abs().max()) + 1
    canvas = torch.nn.functional.pad(rgb, (pad, pad, pad, pad), mode="replicate")
    h, w = rgb.shape[-2:]

    def chunks():
        for s in range(0, frames, 8):
            yield torch.cat([canvas[..., pad - int(dy):pad - int(dy) + h, pad - int(dx):pad - int(dx) + w]
                             for dx, dy in shifts[s:s + 8].tolist()]).permute(0, 2, 3, 1)
    raw = pipeline.detect_clip(chunks(), det, 0.0, **kw)
    smooth = {s: pipeline.detect_clip(chunks(), det, s, **kw) for s in (1.0, 2.0)}
    return raw, smooth, still.landmarks[0].double() + shifts[:, None, :].double()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=240)
    p.add_argument("--jitter", type=float, default=2.0, help="landmark noise, +- px (uniform)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--detector", help="RetinaFace checkpoint for the end-to-end check")
    p.add_argument("--conf", type=float, default=0.8, help="detection threshold of the detector check")
    p.add_argument("--image", default=str(Path(__file__).resolve().parents[2] / "tests" / "data" / "face_golden"
                                          / "astronaut_rgb.png"))
    a = p.parse_args(argv)
    dets, truth = synthetic_clip(a.frames, a.jitter, a.seed)
    print_table(f"synthetic clip: {a.frames} frames, two faces, +-{a.jitter:g} px jitter", table(dets, truth))
    if a.detector:
        raw, smooth, truth = detector_clip(a.detector, a.image, min(a.frames, 48), a.conf)
        if len(raw) != raw.num_frames:
            raise SystemExit(f"the detector found {len(raw)} faces in {raw.num_frames} frames; "
                             "give a photo with one clear face")
        tracks = torch.zeros(len(raw), dtype=torch.int64)
        rows = [("none", measure(raw, truth, tracks))]
        rows += [(f"zero-lag sigma {s:g}", measure(d, truth, tracks)) for s, d in smooth.items()]
        print_table(f"\ndetector pass: {raw.num_frames} shifted frames of {Path(a.image).name}", rows)


if __name__ == "__main__":
    main()
