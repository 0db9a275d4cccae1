"""Paste-back: goldens (rules: docs/faces.md, "Paste-back"), an OpenCV oracle for what the goldens do not
cover (small faces, odd upscales, overlaps, cuts), and the batching / ROI / option contracts."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from codeformer_core.faces.align import FFHQ_TEMPLATE_512, align_faces
from codeformer_core.faces.batch import FaceBatch
from codeformer_core.faces.kernels import erode as _erode
from codeformer_core.faces.kernels import gaussian_kernel_1d
from codeformer_core.faces.kernels import reflect101_index as _reflect101_index
from codeformer_core.faces.masks import PARSE_LABEL_WEIGHTS, parse_labels_to_masks
from codeformer_core.faces.paste import paste_affines, paste_faces
from codeformer_core.faces.resize import resize_frames, resize_lanczos4

DATA = os.path.join(os.path.dirname(__file__), "data", "face_golden")
# Goldens stored as the face region only (see face_golden/ALIGN_PASTE.md): (y0, y1, x0, x1);
# outside these boxes the original PNGs equal the input (x1) or its Lanczos-4 resize (x2).
BOX = {"retinaface_paste_x1": (15, 200, 135, 319),
       "retinaface_paste_x2": (35, 394, 274, 633),
       "parsenet_paste_x1": (17, 196, 136, 316)}
PASTE_RULE = (6, 0.25, 0.002)   # max levels, mean, fraction off by > 1 (docs/faces.md, "Tolerances")


# ----------------------------------------------------------------------------- helpers

def _png_rgb(name):
    return np.asarray(Image.open(os.path.join(DATA, name)).convert("RGB"))


def _to_tensor(img_u8):
    return torch.from_numpy(np.ascontiguousarray(img_u8)).permute(2, 0, 1)[None].float() / 255.0


def _u8_trunc(t):
    """The reference truncates its float blend to uint8. The 1e-3 level guard keeps float32
    noise (k/255*255 = k - 1 ulp) from truncating an exact integer down."""
    return np.floor(t.permute(1, 2, 0).double().numpy() * 255.0 + 1e-3).clip(0, 255).astype(np.uint8)


def _u8_round(t):
    return np.round(t.permute(1, 2, 0).double().numpy() * 255.0).clip(0, 255).astype(np.uint8)


def _image_rule(ours, ref, rule=PASTE_RULE):
    d = np.abs(ours.astype(np.int64) - ref.astype(np.int64))
    stats = (int(d.max()), float(d.mean()), float((d > 1).mean()))
    assert stats[0] <= rule[0] and stats[1] <= rule[1] and stats[2] <= rule[2], stats
    return stats


def _align(img_u8, lms, size=512):
    lm = torch.tensor(np.asarray(lms), dtype=torch.float32).reshape(-1, 5, 2)
    return align_faces(_to_tensor(img_u8), lm, torch.zeros(lm.shape[0], dtype=torch.long), size=size)


def _inverted(fb):
    """Golden "restored" face: 255 - the uint8 crop."""
    return (255.0 - (fb.crops * 255.0).round()) / 255.0


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def cases(align_paste_golden, astronaut_rgb):
    """Golden inputs: {name: (image uint8, FaceBatch)}."""
    r0, r1, c0, c1 = (int(v) for v in align_paste_golden["edge_box_rows_cols"])
    edge = np.ascontiguousarray(astronaut_rgb[r0:r1, c0:c1])
    return {"main": (astronaut_rgb, _align(astronaut_rgb, align_paste_golden["landmarks"])),
            "edge": (edge, _align(edge, align_paste_golden["edge_landmarks"]))}


@pytest.fixture(scope="module")
def golden_pastes(cases):
    """{(case, s): (out, mask, background used)} with restored = 255 - crop.

    At s = 2 the reference blends onto a *uint8* Lanczos-4 background; we pass ours rounded to
    the uint8 grid so the comparison sees the paste, not the background's last bit (the resize
    itself is checked against the edge x2 golden in test_lanczos_background_matches_golden).
    """
    res = {}
    for name, (img, fb) in cases.items():
        frame = _to_tensor(img)
        for s in (1, 2):
            bg = None
            if s == 2:
                bg = (resize_lanczos4(frame, img.shape[0] * 2, img.shape[1] * 2) * 255).round() / 255
            out, mask = paste_faces(frame, fb, _inverted(fb), upscale=s, background=bg)
            res[(name, s)] = (out, mask, frame if bg is None else bg)
    return res


@pytest.fixture(scope="module")
def identity_paste(cases):
    img, fb = cases["main"]
    frame = _to_tensor(img)
    out, mask = paste_faces(frame, fb)          # restored defaults to the crops: identity
    return frame, out, mask


# ----------------------------------------------------------------------------- goldens

@pytest.mark.parametrize("case,s,key", [("main", 1, "inv_affine_x1_used"), ("main", 2, "inv_affine_x2_used"),
                                        ("edge", 1, "edge_inv_affine_x1_used"),
                                        ("edge", 2, "edge_inv_affine_x2_used")])
def test_paste_matrices(cases, align_paste_golden, case, s, key):
    inv = paste_affines(cases[case][1].inverse_affines, s)[0].numpy()
    assert np.abs(inv - align_paste_golden[key]).max() <= 1e-4
    if case == "main":  # before the +0.5*s offset: the plain scaled inverse
        plain = cases[case][1].inverse_affines[0].double().numpy() * s
        assert np.abs(plain - align_paste_golden[f"inv_affine_x{s}"]).max() <= 1e-4
        assert np.abs(inv[:, 2] - plain[:, 2]).max() == pytest.approx(0.5 * s if s > 1 else 0.0, abs=1e-4)


def _full_golden(name, base_u8):
    """Rebuild the full golden image: its stored face box pasted into the base image (the
    original PNG equals the base everywhere outside the box, checked when the box was cut)."""
    full = base_u8.copy()
    y0, y1, x0, x1 = BOX[name]
    full[y0:y1, x0:x1] = _png_rgb(name + "_face.png")
    outside = np.ones(full.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    return full, outside


def _reference_background(img, s):
    """The golden's background: the input at s = 1, OpenCV's uint8 Lanczos-4 at s = 2
    (our own resize, rounded, if OpenCV is missing: it differs by at most 1 level)."""
    if s == 1:
        return img
    try:
        import cv2
        return cv2.resize(img, (img.shape[1] * s, img.shape[0] * s), interpolation=cv2.INTER_LANCZOS4)
    except ImportError:
        return _u8_round(resize_lanczos4(_to_tensor(img), img.shape[0] * s, img.shape[1] * s)[0])


@pytest.mark.parametrize("s", [1, 2])
def test_main_paste_matches_golden(golden_pastes, astronaut_rgb, s):
    out, mask, bg = golden_pastes[("main", s)]
    ours = _u8_trunc(out[0])
    assert ours.shape == (512 * s, 512 * s, 3)
    ref, outside = _full_golden(f"retinaface_paste_x{s}", _reference_background(astronaut_rgb, s))
    _image_rule(ours, ref)
    # Where the golden shows only background, ours is exactly the background it was given.
    assert np.array_equal(ours[outside], _u8_trunc(bg[0])[outside])
    assert (mask[0, 0].numpy()[outside] == 0).all()


@pytest.mark.parametrize("s", [1, 2])
def test_edge_paste_matches_golden(golden_pastes, s):
    out, mask, _ = golden_pastes[("edge", s)]
    ref = _png_rgb(f"retinaface_edge_paste_x{s}.png")
    assert ref.shape == (256 * s, 320 * s, 3)
    _image_rule(_u8_trunc(out[0]), ref)
    assert mask[0, 0, 0].max() > 0.5      # the soft mask touches the top edge


def test_lanczos_background_matches_golden(cases, golden_pastes):
    """Where nothing is pasted the edge x2 golden is OpenCV's Lanczos-4 uint8 resize."""
    img, _ = cases["edge"]
    ref = _png_rgb("retinaface_edge_paste_x2.png")
    ours = _u8_round(resize_lanczos4(_to_tensor(img), 512, 640)[0])
    free = golden_pastes[("edge", 2)][1][0, 0].numpy() == 0
    assert free.mean() > 0.5
    d = np.abs(ours[free].astype(int) - ref[free])
    assert d.max() <= 1 and (d > 0).mean() < 0.02


def test_parse_paste_matches_golden(cases, astronaut_rgb):
    img, fb = cases["main"]
    labels = torch.from_numpy(np.load(os.path.join(DATA, "parsenet_paste.npz"))["labels"])
    masks = parse_labels_to_masks(labels[None])
    out, mask = paste_faces(_to_tensor(img), fb, _inverted(fb), parse_masks=masks)
    ours = _u8_trunc(out[0])
    ref, outside = _full_golden("parsenet_paste_x1", astronaut_rgb)
    _image_rule(ours, ref)
    assert np.array_equal(ours[outside], astronaut_rgb[outside])


def test_parse_labels_to_masks(align_paste_golden):
    labels = torch.from_numpy(np.load(os.path.join(DATA, "parsenet_paste.npz"))["labels"])
    m = parse_labels_to_masks(labels[None].long())
    assert m.shape == (1, 1, 512, 512) and m.dtype == torch.float32
    assert m.min() >= 0 and m.max() <= 1 + 1e-6
    band = torch.ones(512, 512, dtype=torch.bool)
    band[10:-10, 10:-10] = False
    assert (m[0, 0][band] == 0).all()
    assert len(PARSE_LABEL_WEIGHTS) == 19
    # kept labels (1-13, 15) weigh 1 away from edges, dropped ones (0, 14, 16-18) weigh 0
    flat = torch.stack([torch.full((48, 48), v) for v in range(19)])   # repeated reflection
    w = parse_labels_to_masks(flat)[:, 0, 24, 24]
    assert w.tolist() == pytest.approx([v / 255 for v in PARSE_LABEL_WEIGHTS], abs=1e-6)
    cv2 = pytest.importorskip("cv2")
    ref = np.asarray(PARSE_LABEL_WEIGHTS, np.float64)[labels.numpy()]
    ref = cv2.GaussianBlur(cv2.GaussianBlur(ref, (101, 101), 11), (101, 101), 11)
    ref[:10], ref[-10:], ref[:, :10], ref[:, -10:] = 0, 0, 0, 0
    assert np.abs(m[0, 0].double().numpy() - ref / 255).max() < 1e-5


# ----------------------------------------------------------------------------- building blocks

def _naive_erode(a, k):
    """OpenCV erosion by a k x k square, anchor k//2, outside ignored (numpy loops)."""
    h, w = a.shape
    out = np.empty_like(a)
    lo = k // 2
    for y in range(h):
        for x in range(w):
            out[y, x] = a[max(0, y - lo):min(h, y - lo + k), max(0, x - lo):min(w, x - lo + k)].min()
    return out


def test_erode_matches_naive():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((4, 1, 13, 11)).astype(np.float32))
    for k in (1, 2, 3, 4, 5, 8, 16, 20):
        e = _erode(x, k)
        for i in range(4):
            assert np.array_equal(e[i, 0].numpy(), _naive_erode(x[i, 0].numpy(), k)), k
    ks = torch.tensor([2, 7, 2, 12])                  # per-face kernel sizes
    e = _erode(x, ks)
    for i in range(4):
        assert np.array_equal(e[i, 0].numpy(), _naive_erode(x[i, 0].numpy(), int(ks[i])))


def test_gaussian_kernels():
    assert torch.allclose(gaussian_kernel_1d(3), torch.tensor([1, 2, 1.0], dtype=torch.float64) / 4)
    assert torch.allclose(gaussian_kernel_1d(9), torch.tensor([2, 6.5, 15, 25.5, 30, 25.5, 15, 6.5, 2],
                                                              dtype=torch.float64) / 128)
    k = gaussian_kernel_1d(17)                           # sigma = 0.3 * (8 - 1) + 0.8 = 2.9
    x = torch.arange(17, dtype=torch.float64) - 8
    ref = torch.exp(-x ** 2 / (2 * 2.9 ** 2))
    assert torch.allclose(k, ref / ref.sum())
    assert gaussian_kernel_1d(1).tolist() == [1.0]


def test_reflect101_index():
    assert _reflect101_index(4, 3, 3, "cpu").tolist() == [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    assert _reflect101_index(3, 5, 0, "cpu").tolist() == [1, 0, 1, 2, 1, 0, 1, 2]   # repeated


# ----------------------------------------------------------------------------- OpenCV oracle

def _cv2_pipeline(cv2, img, lms, s, w_edge=None, S=512):
    """facexlib's recipe (docs/faces.md) written with OpenCV on float32 RGB 0..255 images."""
    h, w = img.shape[:2]
    hu, wu = int(h * s), int(w * s)
    out = (img.astype(np.float32) if s == 1 else
           cv2.resize(img, (wu, hu), interpolation=cv2.INTER_LANCZOS4).astype(np.float32))
    tmpl = FFHQ_TEMPLATE_512.numpy() * S / 512
    for lm in lms:
        a = cv2.estimateAffinePartial2D(np.asarray(lm, np.float32), tmpl, method=cv2.LMEDS)[0]
        crop = cv2.warpAffine(img.astype(np.float32), a, (S, S), borderMode=cv2.BORDER_CONSTANT,
                              borderValue=(132, 133, 135))
        inv = cv2.invertAffineTransform(a) * s
        if s > 1:
            inv[:, 2] += 0.5 * s
        face = cv2.warpAffine(255.0 - crop, inv, (wu, hu))
        m = cv2.warpAffine(np.ones((S, S), np.float32), inv, (wu, hu))
        m1 = cv2.erode(m, np.ones((int(2 * s), int(2 * s)), np.uint8))
        we = int(np.sum(m1) ** 0.5) // 20 if w_edge is None else w_edge
        m2 = cv2.erode(m1, np.ones((2 * we, 2 * we), np.uint8))
        soft = cv2.GaussianBlur(m2, (2 * we + 1, 2 * we + 1), 0)[:, :, None]
        out = soft * (m1[:, :, None] * face) + (1 - soft) * out
    return out


def _ours_float(img, lms, s, feather=None, S=512):
    fb = _align(img, lms, S)
    frame = _to_tensor(img)
    bg = None
    if s != 1:
        import cv2
        bg = _to_tensor(cv2.resize(img, (int(img.shape[1] * s), int(img.shape[0] * s)),
                                   interpolation=cv2.INTER_LANCZOS4))
    out, mask = paste_faces(frame, fb, 1.0 - fb.crops, upscale=s, background=bg, feather=feather)
    return out[0].permute(1, 2, 0).numpy() * 255.0, mask


@pytest.fixture(scope="module")
def small_images(astronaut_rgb):
    cv2 = pytest.importorskip("cv2")
    return {n: cv2.resize(astronaut_rgb, (n, n), interpolation=cv2.INTER_AREA) for n in (64, 96, 128, 208, 272)}


# (frame size, upscale): w_edge 0 (3x3 erosion, identity blur), 1..4 (OpenCV's fixed 3/5/7/9
# kernels), odd first erosion (s = 1.5 -> 3), s = 3 (erosion 6).
@pytest.mark.parametrize("size,s,expect_w", [(64, 1, 0), (64, 2, 1), (96, 1.5, 2), (208, 1, 3),
                                             (272, 1, 4), (128, 3, 6)])
def test_small_faces_match_opencv(small_images, align_paste_golden, size, s, expect_w):
    cv2 = pytest.importorskip("cv2")
    img = small_images[size]
    lms = [align_paste_golden["landmarks"] * size / 512]
    ref = _cv2_pipeline(cv2, img, lms, s)
    ours, _ = _ours_float(img, lms, s)
    fb = _align(img, lms)
    m = paste_faces(_to_tensor(img), fb, upscale=s)[1]
    area_est = float(m.sum())  # sanity: the expected feather regime is exercised
    assert int(area_est ** 0.5) // 20 in (expect_w - 1, expect_w, expect_w + 1)
    assert np.abs(ours - ref).max() < 0.05   # levels; OpenCV quantises mask warps to 1/32 px


@pytest.mark.parametrize("name,shift,s", [("overlap", [(0, 0), (40, 25)], 1),
                                          ("cut_left", [(-200, 0)], 1),
                                          ("cut_bottom_right_x2", [(290, 380)], 2)])
def test_multi_and_cut_faces_match_opencv(astronaut_rgb, align_paste_golden, name, shift, s):
    cv2 = pytest.importorskip("cv2")
    lms = [align_paste_golden["landmarks"] + np.array(d, float) for d in shift]
    ref = _cv2_pipeline(cv2, astronaut_rgb, lms, s)
    ours, mask = _ours_float(astronaut_rgb, lms, s)
    assert np.abs(ours - ref).max() < 0.05
    if name == "cut_left":
        assert mask[0, 0, :, 0].max() > 0.5


def test_feather_override_matches_opencv(astronaut_rgb, align_paste_golden):
    cv2 = pytest.importorskip("cv2")
    lms = [align_paste_golden["landmarks"]]
    for we in (0, 3, 20):
        ref = _cv2_pipeline(cv2, astronaut_rgb, lms, 1, w_edge=we)
        ours, _ = _ours_float(astronaut_rgb, lms, 1, feather=we)
        assert np.abs(ours - ref).max() < 0.05, we
    auto, _ = _ours_float(astronaut_rgb, lms, 1)
    same, _ = _ours_float(astronaut_rgb, lms, 1, feather=8)   # golden main case: w_edge = 8
    assert np.array_equal(auto, same)


# ----------------------------------------------------------------------------- properties

def test_identity_outside_mask_exact(identity_paste):
    frame, out, mask = identity_paste
    outside = (mask == 0).expand_as(frame)
    assert outside.float().mean() > 0.8
    assert torch.equal(out[outside], frame[outside])


def test_identity_inside_mask_small_error(identity_paste):
    frame, out, mask = identity_paste
    d = (out - frame).abs() * 255
    inside = (mask > 0).expand_as(frame)
    # Two bilinear resamplings (x3 up, then down) only soften sharp edges.
    assert d[inside].mean() < 1.5
    assert torch.quantile(d[inside], 0.99) < 10
    assert mask.max() <= 1 and mask.min() >= 0


def test_input_not_modified(cases):
    img, fb = cases["main"]
    frame = _to_tensor(img)
    keep = frame.clone()
    bg = frame * 0.5
    keep_bg = bg.clone()
    paste_faces(frame, fb, _inverted(fb))
    paste_faces(frame, fb, _inverted(fb), background=bg)
    assert torch.equal(frame, keep) and torch.equal(bg, keep_bg)


def test_two_faces_in_two_frames_and_order(astronaut_rgb, align_paste_golden):
    """Faces of several frames in one call; an overlapping later face is drawn on top."""
    frames = torch.cat([_to_tensor(astronaut_rgb), _to_tensor(astronaut_rgb).flip(-1)])
    lm = torch.tensor(align_paste_golden["landmarks"], dtype=torch.float32)
    lm2 = lm + torch.tensor([40.0, 25.0])
    fb = align_faces(frames, torch.stack([lm, lm2, lm]), torch.tensor([0, 0, 1]))
    red = torch.zeros_like(fb.crops)
    red[:, 0] = 1
    blue = torch.zeros_like(fb.crops)
    blue[:, 2] = 1
    restored = torch.stack([red[0], blue[1], red[2]])
    out, mask = paste_faces(frames, fb, restored)
    cx, cy = lm2.mean(0).round().long().tolist()              # centre of the 2nd (later) face
    assert out[0, 2, cy, cx] > 0.99 and out[0, 0, cy, cx] < 0.01
    cx0, cy0 = (lm.mean(0) - torch.tensor([60.0, 50.0])).round().long().tolist()
    assert out[0, 0, cy0, cx0] > 0.99                         # first face where only it covers
    assert mask[1].sum() > 0 and mask[0].sum() > mask[1].sum()


def test_tiny_64px_frame_runs(small_images, align_paste_golden):
    img = small_images[64]
    fb = _align(img, [align_paste_golden["landmarks"] * 64 / 512])
    out, mask = paste_faces(_to_tensor(img), fb, upscale=2)
    assert out.shape == (1, 3, 128, 128) and mask.shape == (1, 1, 128, 128)
    assert torch.isfinite(out).all() and mask.max() > 0.9


def test_4096_frame_touches_only_roi(astronaut_rgb, align_paste_golden, monkeypatch):
    """A face in a 4096^2 frame: the warps see only the face window (no 4096^2 grid), and the
    result is the 512 frame's result moved by the offset."""
    oy, ox = 3000, 2500
    big = torch.zeros(1, 3, 4096, 4096)
    big[:, :, oy:oy + 512, ox:ox + 512] = _to_tensor(astronaut_rgb)
    lm = torch.tensor(align_paste_golden["landmarks"], dtype=torch.float32)[None]
    sizes = []
    real = F.grid_sample

    def spy(inp, grid, *a, **k):
        sizes.append(tuple(grid.shape[1:3]))
        return real(inp, grid, *a, **k)

    monkeypatch.setattr(F, "grid_sample", spy)
    fb = align_faces(big, lm + torch.tensor([float(ox), float(oy)]), torch.tensor([0]))
    out, mask = paste_faces(big, fb, 1 - fb.crops)
    monkeypatch.undo()
    assert sizes and max(max(s) for s in sizes) <= 512
    small_fb = _align(astronaut_rgb, align_paste_golden["landmarks"])
    small_out, small_mask = paste_faces(_to_tensor(astronaut_rgb), small_fb, 1 - small_fb.crops)
    # float32 landmarks near 3000 px carry 2e-4 px of rounding: compare to about 0.1 level
    assert (fb.crops - small_fb.crops).abs().max() < 1e-3
    win = out[:, :, oy:oy + 512, ox:ox + 512]
    assert (win - small_out).abs().max() < 1e-3
    rest = mask.clone()
    rest[:, :, oy:oy + 512, ox:ox + 512] = 0
    assert rest.max() == 0
    assert (mask[:, :, oy:oy + 512, ox:ox + 512] - small_mask).abs().max() < 1e-3
    del big, out, mask


def test_gray_frame_stays_gray(astronaut_rgb, align_paste_golden):
    frame = _to_tensor(astronaut_rgb)
    gray = (frame * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    gray = gray.expand(-1, 3, -1, -1).contiguous()
    fb = align_faces(gray, torch.tensor(align_paste_golden["landmarks"], dtype=torch.float32)[None], torch.tensor([0]))
    assert fb.gray.tolist() == [True]
    colourful = fb.crops * torch.tensor([1.0, 0.6, 0.3]).view(1, 3, 1, 1)   # a "colourising" model
    out, mask = paste_faces(gray, fb, colourful, upscale=2)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    out_c, _ = paste_faces(gray, fb, colourful, keep_gray=False)
    assert not torch.equal(out_c[:, 0], out_c[:, 2])


def test_batch_of_8_equals_single_calls(astronaut_rgb, align_paste_golden):
    base = _to_tensor(astronaut_rgb[:320, 96:416])          # 320 x 320 around the face
    lm0 = torch.tensor(align_paste_golden["landmarks"], dtype=torch.float32) - torch.tensor([96.0, 0.0])
    frames, lms, fidx = [], [], []
    for i in range(8):
        dy, dx = 7 * i - 20, 11 * i - 30
        frames.append(torch.roll(base, (dy, dx), (2, 3)) * (0.6 + 0.05 * i))
        lms.append(lm0 + torch.tensor([float(dx), float(dy)]))
        fidx.append(i)
        if i % 3 == 0:                                  # some frames hold a second face
            lms.append(lm0 * 0.6 + torch.tensor([150.0, 200.0]))
            fidx.append(i)
    frames = torch.cat(frames)
    lms = torch.stack(lms)
    fidx = torch.tensor(fidx)
    fb = align_faces(frames, lms, fidx)
    restored = (1 - fb.crops) * 0.8
    out, mask = paste_faces(frames, fb, restored, upscale=1.5)
    for i in range(8):
        sel = (fidx == i).nonzero().flatten()
        fbi = align_faces(frames[i:i + 1], lms[sel], torch.zeros(len(sel), dtype=torch.long))
        assert (fbi.crops - fb.crops[sel]).abs().max() < 1e-4
        oi, mi = paste_faces(frames[i:i + 1], fbi, restored[sel], upscale=1.5)
        assert (oi - out[i:i + 1]).abs().max() < 1e-4
        assert (mi - mask[i:i + 1]).abs().max() < 1e-4


def test_visibility(cases):
    img, fb = cases["main"]
    frame = _to_tensor(img)
    full, m_full = paste_faces(frame, fb, _inverted(fb))
    none, m_none = paste_faces(frame, fb, _inverted(fb), visibility=0.0)
    assert torch.equal(none, frame) and m_none.max() == 0
    half, m_half = paste_faces(frame, fb, _inverted(fb), visibility=torch.tensor([0.5]))
    assert torch.allclose(m_half, m_full * 0.5, atol=1e-6)
    assert torch.allclose(half, (frame + full) / 2, atol=1e-5)


def test_color_match_undoes_channel_gain(cases):
    """A restored face with a per-channel gain/offset is brought back to the original colours."""
    img, fb = cases["main"]
    frame = _to_tensor(img)
    ident, _ = paste_faces(frame, fb)
    gain = torch.tensor([0.7, 0.9, 0.6]).view(1, 3, 1, 1)
    tinted = fb.crops * gain + torch.tensor([0.1, 0.0, 0.05]).view(1, 3, 1, 1)
    raw, mask = paste_faces(frame, fb, tinted)
    fixed, _ = paste_faces(frame, fb, tinted, color_match=True)
    inside = (mask > 0.5).expand_as(frame)
    err_raw = (raw - ident).abs()[inside].mean()
    err_fixed = (fixed - ident).abs()[inside].mean()
    assert err_fixed < 0.005 < err_raw


def test_background_options(cases):
    img, fb = cases["main"]
    frame = _to_tensor(img)
    const = torch.full((1, 3, 1024, 1024), 0.25)
    out, mask = paste_faces(frame, fb, upscale=2, background=const)
    free = (mask == 0).expand_as(out)
    assert (out[free] == 0.25).all()
    calls = []

    def upscaler(x):                                     # e.g. a 4x model, resized down to 2x
        calls.append(x.shape)
        return F.interpolate(x, scale_factor=4, mode="nearest")
    out2, mask2 = paste_faces(frame, fb, upscale=2, background_upscaler=upscaler)
    assert calls and out2.shape == (1, 3, 1024, 1024) and torch.equal(mask2, mask)
    out3, _ = paste_faces(frame, fb, upscale=2)           # default: Lanczos-4
    assert torch.allclose(out3[free], resize_frames(frame, 1024, 1024)[free])


def test_restored_crop_of_other_size(cases):
    """A 1024 restored crop pastes like the 512 one (pixel-centre mapping onto the crop)."""
    img, fb = cases["main"]
    frame = _to_tensor(img)
    a, ma = paste_faces(frame, fb, _inverted(fb))
    big = F.interpolate(_inverted(fb), size=1024, mode="bilinear", align_corners=False)
    b, mb = paste_faces(frame, fb, big)
    inside = (ma > 0.99) & (mb > 0.99)
    assert (a - b).abs()[inside.expand_as(a)].mean() < 0.01
    assert (ma - mb).abs().mean() < 0.01


def test_empty_batch_and_errors(cases):
    img, fb = cases["main"]
    frame = _to_tensor(img)
    empty = FaceBatch.empty(1, (512, 512))
    out, mask = paste_faces(frame, empty, upscale=2)
    assert out.shape == (1, 3, 1024, 1024) and mask.max() == 0
    out1, _ = paste_faces(frame, empty)
    assert torch.equal(out1, frame) and out1.data_ptr() != frame.data_ptr()
    with pytest.raises(ValueError):
        paste_faces(frame[:, :, :256], fb)
    with pytest.raises(TypeError):
        paste_faces((frame * 255).to(torch.uint8), fb)
