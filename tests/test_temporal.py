"""Temporal code consistency (faces/temporal.py), scene cuts and filled dropouts (faces/tracks.py),
and the model split it rests on (CodeFormer.encode_faces / decode_faces).

Most cases run on logits built here, with expected codes worked out independently (brute force,
numpy sums, or by construction); one shared set of forwards checks the real model."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from helpers import FACE_POINTS as POINTS
from helpers import detections_at as clip
from codeformer_core.faces.temporal import TemporalCodes, sticky_path, temporal_codes
from codeformer_core.faces.tracks import SceneCuts, track_detections, track_faces



def noisy_logits(frames, tokens=6, codes=12, noise=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, tokens, codes, generator=g)
    return base + noise * torch.randn(frames, tokens, codes, generator=g)


# -- the decision ---------------------------------------------------------------------------------
def test_sticky_path_is_the_best_path_by_brute_force():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    for cost, start in ((0.0, None), (0.7, None), (0.7, torch.tensor([2, 0])), (5.0, None)):
        path = sticky_path(scores, cost, start)
        for n in range(2):
            def value(p, n=n, start=start, cost=cost):
                changes = sum(a != b for a, b in zip(p, p[1:])) + (start is not None and p[0] != int(start[n]))
                return sum(float(scores[t, n, c]) for t, c in enumerate(p)) - cost * changes
            best = max(value(p) for p in itertools.product(range(3), repeat=4))
            assert value(tuple(path[:, n].tolist())) == pytest.approx(best, abs=1e-12)


def test_sigma_zero_is_the_argmax_bit_for_bit():
    logits = noisy_logits(9)
    codes = temporal_codes(logits, torch.arange(9), torch.zeros(9, dtype=torch.int64), sigma=0)
    assert torch.equal(codes, logits.argmax(-1))


def test_noisy_static_track_keeps_one_code_per_token():
    logits = noisy_logits(16)
    plain = logits.argmax(-1)
    assert (plain[1:] != plain[:-1]).any()                       # the noise does flip codes frame to frame
    codes = temporal_codes(logits, torch.arange(16), torch.zeros(16, dtype=torch.int64), sigma=2.0)
    assert (codes == codes[:1]).all()
    # the first frame is decided once lag = 6 frames after it are averaged: the best constant
    # code over those (argmax of the summed window averages, numpy) sticks for the whole track
    lp = logits.double().numpy()
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    t = np.arange(16)
    weight = np.exp(-(t[:, None] - t[None]) ** 2 / 8.0) * (np.abs(t[:, None] - t[None]) <= 6)
    fused = np.einsum("ts,snk->tnk", weight / weight.sum(1, keepdims=True), lp)
    assert codes[0].tolist() == fused[:7].sum(0).argmax(-1).tolist()


def test_a_real_change_switches_at_its_frame_without_lag():
    t = torch.arange(20)
    logits = torch.zeros(20, 1, 4)
    logits[:, 0, 1] = torch.where(t < 10, 3.0, 0.0)
    logits[:, 0, 2] = torch.where(t < 10, 0.0, 3.0)
    for sigma in (1.0, 2.0, 3.0):
        codes = temporal_codes(logits, t, torch.zeros(20, dtype=torch.int64), sigma=sigma)[:, 0]
        assert codes.tolist() == [1] * 10 + [2] * 10


def test_chunks_give_the_same_codes_as_one_call():
    logits = noisy_logits(15, noise=0.8, seed=1)
    frames, track = torch.arange(15), torch.zeros(15, dtype=torch.int64)
    whole = temporal_codes(logits, frames, track, sigma=1.0, switch_cost=0.3)
    for size in (1, 4, 7):
        fuser = TemporalCodes(1.0, 0.3)
        got = {}
        for a in range(0, 15, size):
            for f, _, c in zip(*fuser.push(logits[a:a + size], frames[a:a + size], track[a:a + size])):
                got[int(f)] = c
            assert all(f <= min(a + size - 1, 14) - fuser.lookahead for f in got)      # only complete windows
        for f, _, c in zip(*fuser.finish()):
            got[int(f)] = c
        assert torch.equal(torch.stack([got[f] for f in range(15)]), whole)


def test_two_tracks_in_the_same_frames_never_mix():
    a, b = noisy_logits(12, seed=4), noisy_logits(12, seed=5)
    frames = torch.arange(12).repeat_interleave(2)
    track = torch.tensor([7, 2] * 12)
    both = torch.stack([a, b], 1).reshape(24, *a.shape[1:])
    codes = temporal_codes(both, frames, track, sigma=2.0)
    alone_a = temporal_codes(a, torch.arange(12), torch.zeros(12, dtype=torch.int64), sigma=2.0)
    alone_b = temporal_codes(b, torch.arange(12), torch.zeros(12, dtype=torch.int64), sigma=2.0)
    assert torch.equal(codes[0::2], alone_a) and torch.equal(codes[1::2], alone_b)


def test_nothing_crosses_a_cut_or_the_ends_of_tracks():
    """Two shots at the same place: the cut gives the second its own track, whose codes are
    those of the second shot alone (the first shot's strong votes do not reach it)."""
    shot1 = torch.zeros(6, 4, 8)
    shot1[..., 5] = 6.0                              # the first face: code 5 everywhere, confidently
    shot2 = noisy_logits(6, tokens=4, codes=8, seed=6)
    logits = torch.cat([shot1, shot2])
    dets = clip([(f, 200.0, 200.0) for f in range(12)], 12)
    cuts = torch.zeros(12, dtype=torch.bool)
    cuts[6] = True
    assert len(set(track_faces(dets, max_gap=3).tolist())) == 1          # same place: one track without the cut
    tracked = track_detections(dets, cuts=cuts)
    assert tracked.track[:6].unique().numel() == 1 and tracked.track[6:].unique().numel() == 1
    assert tracked.track[0] != tracked.track[6]
    codes = temporal_codes(logits, tracked.frame_index, tracked.track, sigma=2.0)
    assert torch.equal(codes[6:], temporal_codes(shot2, torch.arange(6), torch.zeros(6, dtype=torch.int64), 2.0))
    assert (codes[:6] == 5).all()


# -- tracks: dropouts and cuts ----------------------------------------------------------------
def test_a_face_missed_for_up_to_three_frames_is_filled_in():
    rows = [(f, 100.0 + 4 * f, 120.0 - 2 * f) for f in range(24) if f not in (5, 6, 12, 13, 14, 18, 19, 20, 21)]
    out = track_detections(clip(rows, 24))
    frames = out.frame_index.tolist()
    assert frames == sorted(frames)
    assert set(frames) == set(range(24)) - {18, 19, 20, 21}          # gaps of 2 and 3 filled, of 4 not
    assert int(out.interpolated.sum()) == 5
    filled = out.select(out.interpolated)
    f = filled.frame_index.float()
    expect = torch.stack([100.0 + 4 * f, 120.0 - 2 * f], 1)[:, None] + POINTS          # the motion is linear
    assert torch.allclose(filled.landmarks, expect, atol=1e-4)
    ids = dict(zip(frames, out.track.tolist()))
    assert ids[4] == ids[5] == ids[7] == ids[15] and ids[17] != ids[22]


def test_filled_rows_do_not_take_another_face():
    rows = [r for f in range(10) for r in ((f, 100.0, 100.0), (f, 400.0, 100.0)) if not (f == 4 and r[1] == 400.0)]
    out = track_detections(clip(rows, 10))
    assert len(out) == 20 and int(out.interpolated.sum()) == 1
    row = out.select(out.interpolated)
    assert row.frame_index.tolist() == [4] and float(row.boxes[0, 0]) == pytest.approx(350.0)


def frames_of(image: np.ndarray, count: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """[count,3,H,W] 0..1: the image, moved ``shift`` px a frame, with +-2 levels of noise."""
    g = np.random.default_rng(seed)
    out = []
    for t in range(count):
        moved = np.roll(image, int(round(shift * t)), axis=1).astype(np.float64)
        out.append(np.clip(moved + g.uniform(-2, 2, image.shape), 0, 255) / 255)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()


def test_scene_cut_found_in_chunks_and_not_in_a_pan():
    from helpers import astronaut
    face = astronaut((160, 160))
    other = np.ascontiguousarray(face[:, ::-1, [2, 0, 1]])          # another "face" at the same place
    video = torch.cat([frames_of(face, 7, 0, shift=1.0), frames_of(other, 5, 1, shift=1.0)])
    detector = SceneCuts()
    cuts = torch.cat([detector(video[a:a + 5]) for a in range(0, 12, 5)])      # chunks of 5: state carries over
    assert torch.nonzero(cuts).flatten().tolist() == [7]
    pan = frames_of(astronaut((160, 160)), 12, 2, shift=6.0)                     # 6 px a frame: a fast pan
    assert not SceneCuts()(pan).any()


# -- the model split (shared forwards; synthetic weights) --------------------------------------
@pytest.fixture(scope="module")
def encoded(synthetic_model):
    from helpers import aligned_face
    model = synthetic_model("restoration")
    face = torch.from_numpy(aligned_face(512)).float().permute(2, 0, 1)
    g = torch.Generator().manual_seed(0)
    x = torch.stack([(face + torch.rand(face.shape, generator=g) * 4 - 2).round().clamp(0, 255) for _ in range(3)])
    x = x / 127.5 - 1
    parts = [model.encode_faces(x[i:i + 1], w=0.0) for i in range(3)]   # batches of one, as the forward below
    return model, x, type(parts[0]).cat(parts)


def test_split_forward_is_the_forward_bit_for_bit(encoded):
    model, x, enc = encoded
    direct, logits, idx = model(x[1:2], w=0.0, return_codes=True)
    assert torch.equal(enc.logits[1:2], logits) and torch.equal(enc.logits[1:2].argmax(-1), idx)
    split = model.decode_faces(enc.take([1]), idx)
    assert torch.equal(split, direct)


def test_noisy_copies_of_a_face_get_identical_codes(encoded):
    _, _, enc = encoded
    frames, track = torch.arange(3), torch.zeros(3, dtype=torch.int64)
    codes = temporal_codes(enc.logits, frames, track, sigma=1.0)
    assert (codes == codes[:1]).all()
    plain = enc.logits.argmax(-1)
    changing = float((plain[1:] != plain[:-1]).float().mean())
    print(f"tokens changing code frame to frame: {changing:.1%} plain, 0 temporal")
