"""FaceDetector: golden detections end to end, batching, resizing, empty frames, selection modes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from codeformer_core.faces.detect import Detections, FaceDetector, load_detector, select_faces
from codeformer_core.dev.synthetic import synth_state_dict
from helpers import retinaface_golden

DATA = Path(__file__).parent / "data" / "face_golden"
NETS = {"resnet50": "resnet50", "mobilenet0.25": "mobile0.25"}
CROP = (slice(None), slice(0, 400), slice(30, 482))


def manifest(tag: str):
    return json.loads((DATA / f"retinaface_manifest_{tag}.json").read_text())


@pytest.fixture(scope="module")
def face_frame(astronaut_frame) -> torch.Tensor:
    """The astronaut as one frame, [3,512,512] RGB float 0..1."""
    return astronaut_frame[0]


@pytest.fixture(scope="module")
def detectors():
    return {backbone: load_detector(synth_state_dict(manifest(tag), face=True))
            for backbone, tag in NETS.items()}


@pytest.fixture(scope="module")
def mobile(detectors):
    return detectors["mobilenet0.25"]


@pytest.fixture(scope="module")
def golden_settings():
    z = retinaface_golden("mobile0.25")
    return dict(conf_threshold=float(z["conf_threshold"]), nms_threshold=float(z["nms_threshold"]))


@pytest.fixture(scope="module")
def batch(face_frame):
    """Four small non-square frames (240 x 272, cheap on CPU); frame 1 is flat gray, which
    scores below the golden threshold everywhere."""
    frame = F.interpolate(face_frame[CROP][None], size=(240, 272), mode="area")[0]
    return torch.stack([frame, torch.full_like(frame, 0.5), frame.flip(-1), frame * 0.8])


@pytest.fixture(scope="module")
def batch_all(mobile, batch, golden_settings):
    """Every detection of the batch at original size, in the reference order (one shared run)."""
    return mobile.detect(batch, resolution=None, sort_by="confidence", **golden_settings)


@pytest.mark.parametrize("backbone", NETS)
@pytest.mark.parametrize("case", ("full", "crop"))
def test_golden_detections(detectors, face_frame, backbone, case):
    ref = retinaface_golden(NETS[backbone])
    frame = face_frame[CROP] if case == "crop" else face_frame
    dets = detectors[backbone].detect(frame[None], conf_threshold=float(ref["conf_threshold"]),
                                      nms_threshold=float(ref["nms_threshold"]), resolution=None,
                                      sort_by="confidence")
    want = ref[f"{case}_dets"]
    rows = dets.as_rows().numpy()
    assert rows.shape == want.shape, f"{len(dets)} detections, expected {len(want)}"
    assert dets.frame_size == tuple(frame.shape[-2:]) and dets.num_frames == 1
    assert dets.frame_index.tolist() == [0] * len(want)
    assert np.abs(rows[:, :4] - want[:, :4]).max() <= 0.01
    assert np.abs(rows[:, 5:] - want[:, 5:]).max() <= 0.01
    assert np.abs(rows[:, 4] - want[:, 4]).max() <= 3e-5
    assert dets.boxes.dtype == dets.scores.dtype == dets.landmarks.dtype == torch.float32
    assert dets.landmarks.shape == (len(want), 5, 2) and dets.frame_index.dtype == torch.int64


def test_batch_equals_single_frames(mobile, batch, batch_all, golden_settings):
    assert batch_all.num_frames == 4
    counts = batch_all.counts_per_frame().tolist()
    assert counts[1] == 0 and min(counts[0], counts[2], counts[3]) > 0
    assert torch.all(batch_all.frame_index[1:] >= batch_all.frame_index[:-1])
    chunked = mobile.detect(batch, resolution=None, sort_by="confidence", chunk_size=3, **golden_settings)
    for other in (chunked,):
        assert torch.equal(other.frame_index, batch_all.frame_index)
        torch.testing.assert_close(other.as_rows(), batch_all.as_rows(), rtol=0, atol=1e-4)
    for i in range(4):
        single = mobile.detect(batch[i:i + 1], resolution=None, sort_by="confidence", **golden_settings)
        mine = batch_all.for_frame(i)
        assert len(single) == len(mine)
        torch.testing.assert_close(single.as_rows(), mine.as_rows(), rtol=0, atol=1e-4)


def test_no_detections(mobile, batch, golden_settings):
    gray = mobile.detect(batch[1:2], resolution=None, **golden_settings)
    assert len(gray) == 0 and gray.num_frames == 1 and gray.counts_per_frame().tolist() == [0]
    strict = mobile.detect(batch, conf_threshold=0.9999, resolution=None, selection="largest")
    assert len(strict) == 0 and strict.num_frames == 4
    assert strict.boxes.shape == (0, 4) and strict.landmarks.shape == (0, 5, 2) and strict.scores.shape == (0,)
    assert len(mobile.detect(batch[:0])) == 0


def test_resolution_maps_back_to_frame_pixels(mobile, face_frame, golden_settings):
    """Detecting at short side 256 = detecting on the 2x area-downscaled frame, coordinates x2."""
    frame = face_frame[CROP]  # 400 x 452 -> 256 x 289
    low = F.interpolate(frame[None], size=(256, 289), mode="area")
    want = mobile.detect(low, resolution=None, sort_by="confidence", **golden_settings)
    got = mobile.detect(frame[None], resolution=256, sort_by="confidence", **golden_settings)
    assert len(got) == len(want) > 0
    scale = torch.tensor([452 / 289, 400 / 256])
    torch.testing.assert_close(got.boxes, want.boxes * scale.repeat(2), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(got.landmarks, want.landmarks * scale, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(got.scores, want.scores)
    # An enlarging resolution runs too (bilinear) and still reports frame-sized coordinates.
    up = mobile.detect(frame[None, :, :100, :120], resolution=200, **golden_settings)
    assert up.frame_size == (100, 120)


def _clamped_area(dets: Detections) -> torch.Tensor:
    height, width = dets.frame_size
    b = dets.boxes
    return ((b[:, 2].clamp(0, width) - b[:, 0].clamp(0, width))
            * (b[:, 3].clamp(0, height) - b[:, 1].clamp(0, height)))


def _per_frame(dets: Detections, values: torch.Tensor):
    return {i: values[dets.frame_index == i] for i in range(dets.num_frames)}


def test_detect_applies_selection(mobile, batch, batch_all, golden_settings):
    """detect(..., options) == select_faces(all detections, options); the rest tests select_faces."""
    eye = torch.linalg.vector_norm(batch_all.landmarks[:, 0] - batch_all.landmarks[:, 1], dim=-1)
    options = dict(selection="index", sort_by="left_to_right", index=1, min_eye_distance=float(eye.quantile(0.25)))
    direct = mobile.detect(batch, resolution=None, **golden_settings, **options)
    assert len(direct) > 0
    torch.testing.assert_close(direct.as_rows(), select_faces(batch_all, **options).as_rows(), rtol=0, atol=0)
    assert torch.equal(direct.frame_index, select_faces(batch_all, **options).frame_index)


def test_sort_orders(batch_all):
    for sort_by, key, descending in (("area", _clamped_area, True),
                                     ("left_to_right", lambda d: d.boxes[:, 0::2].mean(1), False),
                                     ("confidence", lambda d: d.scores, True)):
        dets = select_faces(batch_all, sort_by=sort_by)
        assert torch.all(dets.frame_index[1:] >= dets.frame_index[:-1])
        assert sorted(dets.scores.tolist()) == sorted(batch_all.scores.tolist())  # same faces
        for values in _per_frame(dets, key(dets)).values():
            steps = values[1:] - values[:-1]
            assert torch.all(steps <= 0 if descending else steps >= 0), sort_by


def test_selection_modes(batch_all):
    run = lambda **kw: select_faces(batch_all, **kw)  # noqa: E731
    counts = batch_all.counts_per_frame()
    areas = _per_frame(batch_all, _clamped_area(batch_all))

    largest = run(selection="largest")
    assert largest.frame_index.tolist() == [0, 2, 3]  # one per frame, none for the gray frame
    for i, area in zip(largest.frame_index.tolist(), _clamped_area(largest)):
        assert area == areas[i].max()

    center = run(selection="center")
    assert center.frame_index.tolist() == [0, 2, 3]
    frame_centre = torch.tensor([272 / 2, 240 / 2])
    centres = (batch_all.boxes[:, :2] + batch_all.boxes[:, 2:]) / 2
    dist = _per_frame(batch_all, ((centres - frame_centre) ** 2).sum(1))
    for i, box in zip(center.frame_index.tolist(), center.boxes):
        assert ((box[:2] + box[2:]) / 2 - frame_centre).pow(2).sum() == dist[i].min()

    ordered = run(sort_by="left_to_right")
    first, last = run(selection="index", sort_by="left_to_right", index=0), \
        run(selection="index", sort_by="left_to_right", index=-1)
    for i, rows in _per_frame(ordered, ordered.as_rows()).items():
        if len(rows):
            assert torch.equal(first.for_frame(i).as_rows()[0], rows[0])
            assert torch.equal(last.for_frame(i).as_rows()[0], rows[-1])
    beyond = run(selection="index", index=int(counts[0]))  # frame 0 has no face at that position
    assert 0 not in beyond.frame_index.tolist()

    capped = run(max_faces=2, sort_by="confidence")
    assert capped.counts_per_frame().tolist() == [min(int(c), 2) for c in counts]
    top = _per_frame(batch_all, batch_all.scores)
    for i, scores in _per_frame(capped, capped.scores).items():
        assert torch.equal(scores, top[i][:2])


def test_min_eye_distance(batch_all):
    eye = torch.linalg.vector_norm(batch_all.landmarks[:, 0] - batch_all.landmarks[:, 1], dim=-1)
    limit = float(eye.median())
    kept = select_faces(batch_all, min_eye_distance=limit, sort_by="confidence")
    assert len(kept) == int((eye >= limit).sum()) > 0
    kept_eye = torch.linalg.vector_norm(kept.landmarks[:, 0] - kept.landmarks[:, 1], dim=-1)
    assert torch.all(kept_eye >= limit)


def test_bad_arguments(mobile, batch, batch_all):
    with pytest.raises(ValueError, match="selection"):
        select_faces(batch_all, selection="first")
    with pytest.raises(ValueError, match="selection"):
        mobile.detect(batch, selection="biggest")
    with pytest.raises(ValueError, match="sort_by"):
        mobile.detect(batch, sort_by="size")
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        mobile.detect(batch.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="float"):
        mobile.detect((batch * 255).to(torch.uint8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(mobile, batch, batch_all, golden_settings):
    gpu = FaceDetector(mobile.net.to("cuda"))
    try:
        dets = gpu.detect(batch.cuda(), resolution=None, sort_by="confidence", **golden_settings)
    finally:
        mobile.net.to("cpu")
    assert dets.device.type == "cuda"
    assert torch.equal(dets.frame_index.cpu(), batch_all.frame_index)
    torch.testing.assert_close(dets.as_rows().cpu(), batch_all.as_rows(), rtol=0, atol=2e-3)
