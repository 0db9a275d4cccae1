"""Face tracks and zero-lag smoothing (faces/tracks.py), and detections found beforehand
(pipeline.detect_clip, restore_images(detections=...))."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from helpers import detections_at as clip
from codeformer_core.dev.synthetic import synth_state_dict
from codeformer_core.faces.detect import Detections, load_detector
from codeformer_core.faces.tracks import LandmarkSmoother, smooth_detections, smooth_tracks, track_faces
from codeformer_core.faces.detect import DetectOptions
from codeformer_core.pipeline import RunOptions, detect_clip, restore_images

FACE = Path(__file__).parent / "data" / "face_golden"


def test_two_faces_keep_their_tracks_whatever_the_row_order():
    rows = []
    for f in range(12):
        a, b = (f, 100.0 + 4 * f, 200.0), (f, 400.0 - 4 * f, 210.0)
        rows += [a, b] if f % 2 else [b, a]          # rows swap order every frame
    track = track_faces(clip(rows, 12)).tolist()
    right = {t for (f, x, _), t in zip(rows, track) if x == 100.0 + 4 * f}
    left = {t for (f, x, _), t in zip(rows, track) if x != 100.0 + 4 * f}
    assert len(right) == 1 and len(left) == 1 and right != left


def test_a_missed_frame_does_not_split_a_track_but_a_long_absence_does():
    rows = [(f, 100.0 + 3 * f, 100.0) for f in range(20) if f not in (5, 6, 12, 13, 14, 15)]
    track = track_faces(clip(rows, 20), max_gap=2)
    frames = [f for f, _, _ in rows]
    ids = dict(zip(frames, track.tolist()))
    assert ids[4] == ids[7]        # two missed frames: same face
    assert ids[11] != ids[16]      # four missed frames: a new track


def test_linear_motion_is_kept_exactly_at_track_ends_and_across_gaps():
    """A Gaussian-weighted local linear fit reproduces constant-velocity motion everywhere: the
    window never pulls a track's first/last frames toward frames where the face is not."""
    rows = [(f, 50.0 + 5.5 * f, 80.0 - 2.0 * f) for f in range(3, 40) if f not in (20, 21)]
    dets = clip(rows, 45)
    out = smooth_detections(dets, 3.0)
    assert torch.allclose(out.landmarks, dets.landmarks, atol=1e-3)
    assert torch.allclose(out.boxes, dets.boxes, atol=1e-3)


def test_jitter_removed_without_lag_unlike_the_online_filter():
    g = torch.Generator().manual_seed(0)
    truth = [(f, 100.0 + 4.0 * f, 150.0) for f in range(60)]
    dets = clip(truth, 60)
    noisy = Detections(dets.boxes, dets.scores, dets.landmarks + (torch.rand(60, 5, 2, generator=g) * 4 - 2),
                       dets.frame_index, 60, dets.frame_size)
    smooth = smooth_detections(noisy, 2.0)
    online = LandmarkSmoother(0.5)(noisy)
    err = lambda d: (d.landmarks - dets.landmarks)  # noqa: E731
    rms = lambda e: float(e.pow(2).mean().sqrt())  # noqa: E731
    assert rms(err(smooth)) < 0.6 * rms(err(noisy))
    assert abs(float(err(smooth)[..., 0].mean())) < 0.15          # no lag along the motion (x)
    assert float(err(online)[..., 0].mean()) < -2.5                 # the online filter trails by ~4 px


def test_faces_side_by_side_are_not_mixed():
    rows = [r for f in range(30) for r in ((f, 100.0, 100.0), (f, 300.0, 100.0))]
    dets = clip(rows, 30)
    out = smooth_detections(dets, 4.0)
    assert torch.allclose(out.landmarks, dets.landmarks, atol=1e-4)


def test_smooth_tracks_zero_sigma_and_single_frames():
    v = torch.arange(12.0).reshape(4, 3)
    assert torch.equal(smooth_tracks(v, torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 1, 2]), 0.0), v.double())
    # tracks of one or two frames: nothing to smooth against, the values stay
    out = smooth_tracks(v, torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 1, 2]), 2.0)
    assert torch.allclose(out, v.double())


def test_take_frames_and_join_round_trip():
    dets = clip([(0, 10.0, 10.0), (2, 20.0, 20.0), (2, 30.0, 30.0), (4, 40.0, 40.0)], 5)
    parts = [dets.take_frames(range(0, 2)), dets.take_frames(range(2, 5))]
    assert [p.num_frames for p in parts] == [2, 3] and parts[1].frame_index.tolist() == [0, 0, 2]
    back = Detections.join(parts)
    assert back.num_frames == 5 and torch.equal(back.frame_index, dets.frame_index)
    assert torch.equal(back.landmarks, dets.landmarks)
    picked = dets.take_frames([4, 2])                 # any frames, renumbered in the given order
    assert picked.frame_index.tolist() == [1, 1, 0] and picked.num_frames == 2


class IdentityNet(torch.nn.Module):
    variant = "restoration"

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x, w=None, adain=None):
        return x


def test_detections_found_beforehand_give_the_same_restore():
    """Detection as a first pass over chunks (detect_clip), replayed by restore_images, equals
    detecting inside restore_images; with smoothing, restore_images uses the smoothed faces."""
    man = json.loads((FACE / "retinaface_manifest_mobile0.25.json").read_text())
    detector = load_detector(synth_state_dict(man, face=True))
    rgb = torch.from_numpy(np.asarray(Image.open(FACE / "astronaut_rgb.png")).copy()).float() / 255
    frames = torch.stack([rgb, rgb.roll(3, 1), rgb.roll(-2, 0)])              # [3,H,W,3]
    options = DetectOptions(conf_threshold=0.6, selection="largest")
    kw = options.kwargs()
    direct = restore_images(frames, IdentityNet(), detector, detect=options, run=RunOptions(frames_per_chunk=2))
    found = detect_clip((frames[i:i + 2] for i in (0, 2)), detector, 0.0, max_fill=0, **kw)
    assert found.num_frames == 3 and len(found) == direct.total_faces > 0
    filled = detect_clip((frames[i:i + 2] for i in (0, 2)), detector, 0.0, **kw)   # dropouts filled (max_fill 3)
    assert len(filled) == len(found) + int(filled.interpolated.sum())
    replay = restore_images(frames, IdentityNet(), None, detections=found, run=RunOptions(frames_per_chunk=1))
    assert replay.face_counts == direct.face_counts
    assert torch.allclose(replay.images, direct.images, atol=1e-6)
    smoothed = detect_clip((frames[i:i + 2] for i in (0, 2)), detector, 2.0, max_fill=0, **kw)
    assert torch.equal(smoothed.landmarks, smooth_detections(found, 2.0).landmarks)


def test_a_clip_without_faces_is_tracked_as_empty():
    from codeformer_core.faces.tracks import track_detections
    out = track_detections(Detections.empty(5, (48, 64)), sigma=2.0, cuts=torch.zeros(5, dtype=torch.bool))
    assert len(out) == 0 and out.num_frames == 5
    assert out.track.shape == (0,) and out.interpolated.shape == (0,)
