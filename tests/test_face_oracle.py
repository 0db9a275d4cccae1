"""Real-face oracle: MTCNN (facenet-pytorch 2.6.0, MIT, weights in the wheel) finds the
astronaut's 5 landmarks; align -> identity "restore" -> paste must give the face back and leave
everything outside the pasted mask bit-identical. Independent of our golden-derived landmarks.
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from codeformer_core.faces.align import align_faces
from codeformer_core.faces.paste import paste_faces
from codeformer_core.faces.resize import resize_frames


def _import_mtcnn():
    """facenet_pytorch's package __init__ imports InceptionResnetV1, which imports ``requests``
    (only used to download its weights). MTCNN needs neither: if requests is missing, a stub is
    put in sys.modules just for the import and removed again."""
    stubbed = []
    try:
        import requests  # noqa: F401
    except ImportError:
        req = types.ModuleType("requests")
        ad = types.ModuleType("requests.adapters")
        ad.HTTPAdapter = object
        req.adapters = ad
        sys.modules["requests"], sys.modules["requests.adapters"] = req, ad
        stubbed = ["requests", "requests.adapters"]
    try:
        mod = pytest.importorskip("facenet_pytorch")
    finally:
        for name in stubbed:
            sys.modules.pop(name, None)
    return mod.MTCNN


def _ours_order(points):
    """MTCNN points -> ours: eyes (image left, right), nose, mouth corners (image left, right)."""
    p = np.asarray(points, np.float64)
    eyes = p[:2][np.argsort(p[:2, 0])]
    mouth = p[3:5][np.argsort(p[3:5, 0])]
    return np.concatenate([eyes, p[2:3], mouth])


@pytest.fixture(scope="module")
def detected(astronaut_rgb):
    img = astronaut_rgb
    two = np.ascontiguousarray(np.concatenate([img, img[:, ::-1]], 1))   # 512 x 1024, 2 faces
    mtcnn = _import_mtcnn()(keep_all=True, device="cpu")
    with torch.no_grad():
        boxes, probs, points = mtcnn.detect(two, landmarks=True)
    assert boxes is not None and len(boxes) == 2 and min(probs) > 0.99
    order = np.argsort(boxes[:, 0])
    lms = np.stack([_ours_order(points[i]) for i in order])
    return two, lms, boxes[order].astype(np.float32), probs[order].astype(np.float32)


@pytest.fixture(scope="module")
def roundtrip(detected):
    img, lms, boxes, probs = detected
    frame = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    fb = align_faces(frame, torch.tensor(lms, dtype=torch.float32), torch.tensor([0, 0]),
                     boxes=torch.from_numpy(boxes), scores=torch.from_numpy(probs))
    res = {s: paste_faces(frame, fb, fb.crops.clone(), upscale=s) for s in (1, 2)}
    return frame, fb, res


def test_landmarks_are_sane(detected):
    _, lms, _, _ = detected
    for lm in lms:
        eye_dist = np.linalg.norm(lm[1] - lm[0])
        assert 30 < eye_dist < 60
        assert lm[0, 0] < lm[2, 0] < lm[1, 0]                     # nose between the eyes
        assert lm[2, 1] > lm[:2, 1].max() and lm[3:, 1].min() > lm[2, 1]   # eyes, nose, mouth
    # the second face is the mirror of the first (MTCNN itself is not mirror-exact: ~3 px)
    mirrored = lms[1].copy()
    mirrored[:, 0] = 1023 - mirrored[:, 0]
    assert np.abs(mirrored[[1, 0, 2, 4, 3]] - lms[0]).max() < 6


def test_aligned_faces_look_like_the_template(roundtrip):
    _, fb, _ = roundtrip
    crops = fb.crops
    # both faces land in the same place: the crop of the mirrored face is about the mirror
    assert (crops[1].flip(-1) - crops[0]).abs().mean() < 0.08
    assert fb.scores.min() > 0.99 and fb.boxes.shape == (2, 4)


@pytest.mark.parametrize("s", [1, 2])
def test_identity_restore_roundtrip(roundtrip, s):
    frame, fb, res = roundtrip
    out, mask = res[s]
    bg = frame if s == 1 else resize_frames(frame, 512 * s, 1024 * s)
    # untouched outside the pasted mask: exactly
    outside = (mask == 0).expand_as(out)
    assert outside.float().mean() > 0.8
    assert torch.equal(out[outside], bg[outside])
    # inside: the face comes back (two bilinear resamplings soften sharp edges only)
    inside = (mask > 0.5).expand_as(out)
    d = (out - bg).abs()[inside] * 255
    assert inside.float().mean() > 0.05
    assert d.mean() < (1.5 if s == 1 else 4.0)
    assert torch.quantile(d, 0.99) < (10 if s == 1 else 25)
    # each detected face is covered by the mask
    for lm in fb.landmarks:
        cx, cy = (lm.mean(0) * s).round().long().tolist()
        assert mask[0, 0, cy, cx] > 0.99
