"""Alignment: similarity fit, inverse, batched crop warp (the rules: docs/faces.md, "Alignment")."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from codeformer_core.faces.align import (FFHQ_TEMPLATE_512, align_faces, detect_gray_frames,
                                   estimate_similarity, invert_affine, template_for, warp_faces)

DATA = os.path.join(os.path.dirname(__file__), "data", "face_golden")
EYE_DIST = 42.0  # main golden face, pixels


def _png_rgb(name):
    return np.asarray(Image.open(os.path.join(DATA, name)).convert("RGB"))


def _to_tensor(img_u8):
    return torch.from_numpy(np.ascontiguousarray(img_u8)).permute(2, 0, 1)[None].float() / 255.0


def _crop_u8(crops):
    """The reference's crop is an OpenCV warp of uint8: rounded."""
    x = crops[0].permute(1, 2, 0).numpy().astype(np.float64) * 255.0
    return x.round().clip(0, 255).astype(np.uint8)


def _image_rule(ours, ref, max_abs, max_mean, max_frac_over1):
    d = np.abs(ours.astype(np.int64) - ref.astype(np.int64))
    stats = (int(d.max()), float(d.mean()), float((d > 1).mean()))
    assert stats[0] <= max_abs and stats[1] <= max_mean and stats[2] <= max_frac_over1, stats
    return stats


@pytest.fixture(scope="module")
def aligned(align_paste_golden, astronaut_rgb):
    """Both golden cases aligned once: {name: FaceBatch}."""
    r0, r1, c0, c1 = (int(v) for v in align_paste_golden["edge_box_rows_cols"])
    out = {}
    for name, img, lm in (("main", astronaut_rgb, align_paste_golden["landmarks"]),
                          ("edge", astronaut_rgb[r0:r1, c0:c1], align_paste_golden["edge_landmarks"])):
        out[name] = align_faces(_to_tensor(img), torch.tensor(lm, dtype=torch.float32)[None],
                                torch.tensor([0]))
    return out


def test_template():
    assert FFHQ_TEMPLATE_512.shape == (5, 2)
    assert torch.allclose(template_for(512).double(), FFHQ_TEMPLATE_512)
    assert torch.allclose(template_for(256).double(), FFHQ_TEMPLATE_512 / 2)


@pytest.mark.parametrize("case,key", [("main", "affine"), ("edge", "edge_affine")])
def test_affine_matches_golden(aligned, align_paste_golden, case, key):
    a = aligned[case].affines[0].double().numpy()
    assert a.dtype == np.float64 and aligned[case].affines.dtype == torch.float32
    assert np.abs(a - align_paste_golden[key]).max() <= 1e-4


def test_inverse_matches_golden(aligned, align_paste_golden):
    inv = aligned["main"].inverse_affines[0].double().numpy()
    assert np.abs(inv - align_paste_golden["inv_affine_x1"]).max() <= 1e-4
    # and the generic inverse really inverts
    a = torch.tensor(align_paste_golden["affine"], dtype=torch.float32)[None]
    row = torch.tensor([[0, 0, 1.0]], dtype=torch.float64)
    ident = torch.cat([a[0].double(), row]) @ torch.cat([invert_affine(a)[0].double(), row])
    assert torch.allclose(ident, torch.eye(3, dtype=torch.float64), atol=1e-4)


@pytest.mark.parametrize("case,png", [("main", "retinaface_align_crop.png"),
                                      ("edge", "retinaface_edge_crop.png")])
def test_crop_matches_golden(aligned, case, png):
    ref = _png_rgb(png)
    ours = _crop_u8(aligned[case].crops)
    assert ours.shape == ref.shape == (512, 512, 3)
    _image_rule(ours, ref, 4, 0.15, 0.005)


def test_edge_border_value(aligned):
    """Pixels whose every bilinear tap is outside the frame take RGB (132,133,135) exactly."""
    crop = _crop_u8(aligned["edge"].crops)
    ref = _png_rgb("retinaface_edge_crop.png")
    gray_ref = np.all(ref == np.array([132, 133, 135], np.uint8), -1)
    assert gray_ref.sum() > 60000
    assert np.all(crop[gray_ref] == np.array([132, 133, 135], np.uint8))


def test_facebatch_fields(aligned):
    fb = aligned["main"]
    assert fb.crops.shape == (1, 3, 512, 512) and fb.crops.dtype == torch.float32
    assert fb.frame_size == (512, 512) and fb.num_frames == 1
    assert fb.scores.tolist() == [1.0]
    assert fb.gray.tolist() == [False]
    # default box: the frame footprint of the crop square, around the landmarks
    x1, y1, x2, y2 = fb.boxes[0].tolist()
    lm = fb.landmarks[0]
    assert x1 < lm[:, 0].min() and x2 > lm[:, 0].max() and y1 < lm[:, 1].min() and y2 > lm[:, 1].max()
    assert 150 < x2 - x1 < 200


def test_crop_size_256(aligned, align_paste_golden, astronaut_rgb):
    """Smaller crops use the scaled template: same face, half resolution."""
    lm = torch.tensor(align_paste_golden["landmarks"], dtype=torch.float32)[None]
    fb = align_faces(_to_tensor(astronaut_rgb), lm, torch.tensor([0]), size=256)
    assert fb.crops.shape == (1, 3, 256, 256)
    a512 = aligned["main"].affines[0].double()
    assert torch.allclose(fb.affines[0].double(), a512 / 2, atol=1e-4)
    small = torch.nn.functional.avg_pool2d(aligned["main"].crops, 2)
    assert (fb.crops - small).abs().mean() < 0.01


def _lstsq_similarity(src, dst):
    """Independent least squares for [[a,-b,tx],[b,a,ty]] (numpy)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows, float), np.array(rhs, float), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def test_robust_fit_drops_one_outlier(align_paste_golden):
    lm = align_paste_golden["landmarks"].astype(np.float64)
    tm = FFHQ_TEMPLATE_512.numpy()
    bad = lm.copy()
    bad[3] += np.array([0.7, 0.7]) * EYE_DIST          # mouth corner ~ one eye distance off
    robust = estimate_similarity(torch.tensor(bad)[None])[0].double().numpy()
    plain = estimate_similarity(torch.tensor(bad)[None], robust=False)[0].double().numpy()
    four = _lstsq_similarity(np.delete(bad, 3, 0), np.delete(tm, 3, 0))
    assert np.abs(robust - four).max() < 1e-4            # refit without the outlier
    assert np.abs(plain - four).max() > 1e-2             # least squares alone is pulled away
    assert np.abs(plain - _lstsq_similarity(bad, tm)).max() < 1e-4
    # With 5 good points nothing is dropped: robust == least squares.
    good = estimate_similarity(torch.tensor(lm)[None])[0].double().numpy()
    assert np.abs(good - _lstsq_similarity(lm, tm)).max() < 1e-4


def test_robust_fit_agrees_with_opencv_lmeds(align_paste_golden):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(7)
    lm0 = align_paste_golden["landmarks"]
    tm = FFHQ_TEMPLATE_512.numpy()
    lms, refs = [], []
    for i in range(40):
        ang, sc = rng.uniform(-0.6, 0.6), rng.uniform(0.3, 3.0)
        rot = sc * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        lm = (lm0 - lm0.mean(0)) @ rot.T + rng.uniform(100, 900, 2)
        lm = lm + rng.normal(0, 0.02 * sc * EYE_DIST, lm.shape)
        if i % 2:  # one landmark moved by 0.7 .. 1.2 eye distances
            a = rng.uniform(0, 2 * np.pi)
            lm[rng.integers(5)] += rng.uniform(0.7, 1.2) * EYE_DIST * sc * np.array([np.cos(a), np.sin(a)])
        lm = lm.astype(np.float32)
        lms.append(lm)
        refs.append(cv2.estimateAffinePartial2D(lm, tm, method=cv2.LMEDS)[0])
    ours = estimate_similarity(torch.tensor(np.stack(lms))).double().numpy()   # batched
    for lm, a, r in zip(lms, ours, refs):
        p = np.c_[lm, np.ones(5)]
        assert np.abs(p @ a.T - p @ r.T).max() < 0.01    # crop pixels


def test_no_reflection():
    """Mirrored landmarks still give a rotation (det > 0), never a flip."""
    lm = FFHQ_TEMPLATE_512.clone()
    lm[:, 0] = 512 - lm[:, 0]
    a = estimate_similarity(lm[None], robust=False)[0].double()
    assert torch.linalg.det(a[:, :2]) > 0


def test_batched_warp_two_frames(astronaut_rgb, align_paste_golden):
    """Faces of different frames in one call; each crop equals its single-face warp."""
    img = _to_tensor(astronaut_rgb)
    frames = torch.cat([img, img.flip(-1)])
    lm = torch.tensor(align_paste_golden["landmarks"], dtype=torch.float32)
    lm_flip = lm.clone()
    lm_flip[:, 0] = 511 - lm_flip[:, 0]
    lm_flip = lm_flip[[1, 0, 2, 4, 3]]                # image left/right swap under the mirror
    fb = align_faces(frames, torch.stack([lm, lm_flip, lm]), torch.tensor([0, 1, 0]))
    assert fb.crops.shape == (3, 3, 512, 512)
    assert torch.equal(fb.crops[0], fb.crops[2])
    single = warp_faces(frames[1:], fb.affines[1:2], torch.tensor([0]))
    assert (single[0] - fb.crops[1]).abs().max() < 1e-4    # float32 grid offsets differ
    # the mirrored face aligns to (about) the mirrored crop
    assert (fb.crops[1].flip(-1) - fb.crops[0]).abs().mean() < 0.02


def test_gray_detection(astronaut_rgb, align_paste_golden):
    img = _to_tensor(astronaut_rgb)
    gray = img.mean(1, keepdim=True).expand(-1, 3, -1, -1).contiguous()
    assert detect_gray_frames(torch.cat([img, gray])).tolist() == [False, True]
    spot = gray.clone()
    spot[0, 0, 301, 203] += 0.1                      # one coloured pixel off the 1/8 grid
    assert detect_gray_frames(torch.cat([spot, gray])).tolist() == [False, True]
    lm = torch.tensor(align_paste_golden["landmarks"], dtype=torch.float32)[None].expand(2, 5, 2)
    fb = align_faces(torch.cat([img, gray]), lm, torch.tensor([0, 1]))
    assert fb.gray.tolist() == [False, True]
    assert torch.equal(fb.crops[1, 0], fb.crops[1, 1]) and torch.equal(fb.crops[1, 1], fb.crops[1, 2])
    fb2 = align_faces(torch.cat([img, gray]), lm, torch.tensor([0, 1]), gray=True)
    assert fb2.gray.tolist() == [True, True]


def test_empty_and_errors(astronaut_rgb):
    img = _to_tensor(astronaut_rgb)
    fb = align_faces(img, torch.zeros(0, 5, 2), torch.zeros(0, dtype=torch.long))
    assert len(fb) == 0 and fb.crops.shape == (0, 3, 512, 512) and fb.num_frames == 1
    with pytest.raises(ValueError):
        align_faces(img, torch.zeros(1, 5, 2), torch.tensor([3]))
