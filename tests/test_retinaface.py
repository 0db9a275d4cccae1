"""RetinaFace (ResNet-50, MobileNet-0.25) against the golden vectors (tests/data/face_golden).

Weights are the golden synthetic ones built in memory; inputs are the astronaut image
("full") and its 400x452 crop ("crop", catches H/W mix-ups and odd feature-map sizes).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from codeformer_core.errors import CheckpointError
from codeformer_core.models.loader import load_retinaface
from codeformer_core.models.registry import detect, load_network
from codeformer_core.models.retinaface import RetinaFace, batched_nms, decode_boxes, decode_landmarks, prior_boxes
from codeformer_core.dev.synthetic import synth_state_dict
from helpers import astronaut_bgr, retinaface_golden

DATA = Path(__file__).parent / "data" / "face_golden"
NETS = {"resnet50": "resnet50", "mobilenet0.25": "mobile0.25"}  # backbone -> golden file tag
CASES = ("full", "crop")
CROP = (slice(0, 400), slice(30, 482))


def manifest(tag: str):
    return json.loads((DATA / f"retinaface_manifest_{tag}.json").read_text())


def case_bgr(case: str) -> np.ndarray:
    """The golden input of ``case``: the whole astronaut or its crop, BGR float32 (helpers.astronaut_bgr)."""
    img = astronaut_bgr()
    return np.ascontiguousarray(img[CROP] if case == "crop" else img)


def network_input(case: str) -> torch.Tensor:
    """The reference preprocessing: BGR float32 minus (104, 117, 123), NCHW, no resize."""
    img = case_bgr(case) - np.array([104, 117, 123], np.float32)
    return torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()


def assert_close(name, got, want, max_tol, mean_tol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    diff = np.abs(got - want)
    assert np.isfinite(got).all(), f"{name}: non-finite values"
    assert diff.max() <= max_tol and diff.mean() <= mean_tol, \
        f"{name}: max {diff.max():.3g} (<= {max_tol}), mean {diff.mean():.3g} (<= {mean_tol})"


@pytest.fixture(scope="module")
def retinaface_goldens():
    return {backbone: retinaface_golden(tag) for backbone, tag in NETS.items()}


@pytest.fixture(scope="module")
def nets():
    return {backbone: load_retinaface(synth_state_dict(manifest(tag), face=True))
            for backbone, tag in NETS.items()}


@pytest.fixture(scope="module")
def outputs(nets):
    """One forward per (network, input), shared by every assertion below."""
    result = {}
    with torch.inference_mode():
        for backbone, net in nets.items():
            for case in CASES:
                loc, conf, landms = net(network_input(case))
                result[backbone, case] = (loc[0], conf[0], landms[0])
    return result


def test_state_dict_matches_manifest(nets):
    for backbone, tag in NETS.items():
        own = {k: tuple(v.shape) for k, v in RetinaFace(backbone).state_dict().items()}
        assert own == {name: tuple(shape) for name, shape, _ in manifest(tag)}
        assert nets[backbone].backbone == backbone
        assert not nets[backbone].training


@pytest.mark.parametrize("case", CASES)
def test_priors(case):
    stored = np.load(DATA / "retinaface_priors.npz")
    height, width = (int(v) for v in stored[f"{case}_hw"])
    priors = prior_boxes(height, width)
    assert priors.dtype == torch.float32
    assert_close(f"{case} priors", priors, stored[f"{case}_priors"], 1e-6, 1e-6)
    assert prior_boxes(height, width) is priors  # cached per size


@pytest.mark.parametrize("backbone", NETS)
@pytest.mark.parametrize("case", CASES)
def test_raw_outputs(outputs, retinaface_goldens, backbone, case):
    loc, conf, landms = outputs[backbone, case]
    ref = retinaface_goldens[backbone]
    stride = int(ref["raw_stride"])
    assert loc.shape[0] == prior_boxes(*network_input(case).shape[-2:]).shape[0]
    assert_close(f"{backbone} {case} loc", loc[::stride], ref[f"{case}_loc"], 1e-4, 1e-5)
    assert_close(f"{backbone} {case} landms", landms[::stride], ref[f"{case}_landms"], 1e-4, 1e-5)
    assert_close(f"{backbone} {case} conf", conf[::stride], ref[f"{case}_conf"], 3e-5, 3e-6)


@pytest.mark.parametrize("backbone", NETS)
@pytest.mark.parametrize("case", CASES)
def test_decode_threshold_nms(outputs, retinaface_goldens, backbone, case):
    """Decode every prior, keep score > threshold, NMS: the reference's rows in its order."""
    loc, conf, landms = outputs[backbone, case]
    ref = retinaface_goldens[backbone]
    height, width = network_input(case).shape[-2:]
    priors = prior_boxes(height, width)
    boxes = decode_boxes(loc, priors) * torch.tensor([width, height] * 2, dtype=torch.float32)
    points = decode_landmarks(landms, priors) * torch.tensor([width, height], dtype=torch.float32)
    scores = conf[:, 1]
    candidates = torch.nonzero(scores > float(ref["conf_threshold"])).flatten()
    keep = candidates[batched_nms(boxes[candidates], scores[candidates],
                                  torch.zeros_like(candidates), float(ref["nms_threshold"]))]
    np.testing.assert_array_equal(keep.numpy(), ref[f"{case}_dets_prior_index"])
    dets = ref[f"{case}_dets"]
    assert_close("boxes px", boxes[keep], dets[:, :4], 0.01, 0.01)
    assert_close("scores", scores[keep], dets[:, 4], 3e-5, 3e-5)
    assert_close("landmarks px", points[keep].reshape(-1, 10), dets[:, 5:], 0.01, 0.01)


def test_batched_nms_equals_per_group():
    generator = torch.Generator().manual_seed(0)
    centres = torch.rand(300, 2, generator=generator) * 400
    sizes = torch.rand(300, 2, generator=generator) * 80 + 10
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
    scores = torch.rand(300, generator=generator)
    groups = torch.randint(0, 5, (300,), generator=generator)
    keep = batched_nms(boxes, scores, groups, 0.4)
    assert torch.all(scores[keep][1:] <= scores[keep][:-1])  # descending score order
    from torchvision.ops import nms
    for group in range(5):
        index = torch.nonzero(groups == group).flatten()
        expected = index[nms(boxes[index], scores[index], 0.4)]
        assert keep[groups[keep] == group].tolist() == expected.tolist()
    assert batched_nms(boxes[:0], scores[:0], groups[:0], 0.4).numel() == 0


def test_nms_drops_only_above_threshold():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    # IoU with box 0: 0.5 and 0.4; box 2 with box 1: 0.8. Equal to the threshold is kept.
    assert batched_nms(boxes, scores, torch.zeros(3, dtype=torch.int64), 0.5).tolist() == [0, 1]
    assert batched_nms(boxes, scores, torch.zeros(3, dtype=torch.int64), 0.45).tolist() == [0, 2]


# ------------------------------------------------------------------ loading


@pytest.fixture(scope="module")
def mobile_weights():
    return synth_state_dict(manifest("mobile0.25"), face=True)


def test_loader_strips_module_prefix_and_detects_backbone(mobile_weights):
    prefixed = {f"module.{k}": v for k, v in mobile_weights.items()}
    assert load_retinaface(prefixed).backbone == "mobilenet0.25"
    net = load_network(prefixed, "retinaface")  # as read, before load_retinaface folds its BatchNorms
    for key, value in net.state_dict().items():
        assert torch.equal(value, mobile_weights[key])


def test_loader_accepts_missing_num_batches_tracked(mobile_weights):
    trimmed = {k: v for k, v in mobile_weights.items() if not k.endswith("num_batches_tracked")}
    assert len(trimmed) < len(mobile_weights)
    net = load_retinaface(trimmed)
    assert all(v.device.type == "cpu" for v in net.state_dict().values())
    x = network_input("crop")[..., :64, :96]
    with torch.inference_mode():
        torch.testing.assert_close(net(x), load_retinaface(mobile_weights)(x), rtol=0, atol=0)


def test_loader_reads_a_file_and_ignores_its_name(tmp_path, mobile_weights):
    path = tmp_path / "detection_Resnet50_Final.pth"  # misleading name: keys decide
    torch.save(mobile_weights, path)
    assert load_retinaface(path).backbone == "mobilenet0.25"
    assert load_retinaface(str(path), device="cpu").backbone == "mobilenet0.25"


def test_loader_refuses_other_models(mobile_weights):
    codeformer_like = {"quantize.embedding.weight": torch.zeros(1024, 256),
                       "encoder.blocks.0.weight": torch.zeros(64, 3, 3, 3)}
    with pytest.raises(CheckpointError, match="not a RetinaFace.*CodeFormer.*detection_Resnet50_Final"):
        load_retinaface(codeformer_like)
    with pytest.raises(CheckpointError, match="not a RetinaFace.*unknown model"):
        load_retinaface({"foo.weight": torch.zeros(3), "bar": torch.ones(2, 2)})
    with pytest.raises(CheckpointError, match="ParseNet"):
        load_retinaface({"encoder.0.conv2d.weight": torch.zeros(64, 3, 3, 3),
                         "out_mask_conv.conv2d.weight": torch.zeros(19, 64, 3, 3)})


def test_loader_reports_damaged_detector(mobile_weights):
    broken = dict(mobile_weights)
    del broken["ClassHead.0.conv1x1.bias"]
    broken["fpn.merge1.0.weight"] = torch.zeros(64, 64, 1, 1)
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        load_retinaface(broken)
    message = str(info.value)
    for part in ("RetinaFace (mobilenet0.25)", "missing: ClassHead.0.conv1x1.bias", "unexpected: extra.weight",
                 "fpn.merge1.0.weight is [64, 64, 1, 1], expected [64, 64, 3, 3]"):
        assert part in message
    nan = dict(mobile_weights)
    nan["BboxHead.1.conv1x1.bias"] = torch.full((8,), float("nan"))
    with pytest.raises(CheckpointError, match="NaN"):
        load_retinaface(nan)


@pytest.mark.parametrize("backbone", NETS)
def test_backbone_is_detected_from_keys_and_shapes(backbone):
    meta = {name: torch.empty(shape, device="meta") for name, shape, _ in manifest(NETS[backbone])}
    assert detect(meta, "retinaface").name == backbone
    assert detect(meta).title == f"RetinaFace ({backbone})"
    with pytest.raises(ValueError, match="unknown RetinaFace backbone"):
        RetinaFace("vgg16")


def test_nms_ignores_non_finite_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, float("inf"), 10], [20, 20, 30, 30], [0, 0, 10, 9]])
    scores = torch.tensor([0.9, 0.95, 0.8, 0.7])
    groups = torch.tensor([0, 0, 1, 1])
    assert batched_nms(boxes, scores, groups, 0.4).tolist() == [0, 2, 3]
    assert batched_nms(boxes[1:2], scores[1:2], groups[1:2], 0.4).numel() == 0
