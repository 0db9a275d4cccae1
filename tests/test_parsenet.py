"""ParseNet against the golden vectors (tests/data/face_golden).

The logits and the image head are compared on the stored 74x74 grid (float32), labels
everywhere except the pixels whose top-2 logit gap is below 1e-3.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from codeformer_core.errors import CheckpointError
from codeformer_core.models.registry import load_network
from codeformer_core.models.loader import load_parsenet
from codeformer_core.models.parsenet import NUM_CLASSES, ParseNet, parse_faces
from codeformer_core.dev.synthetic import synth_state_dict
from helpers import parsenet_golden

DATA = Path(__file__).parent / "data" / "face_golden"


def manifest():
    return json.loads((DATA / "parsenet_manifest_parsenet.json").read_text())


def assert_close(name, got, want, max_tol, mean_tol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    diff = np.abs(got - want)
    assert diff.max() <= max_tol and diff.mean() <= mean_tol, \
        f"{name}: max {diff.max():.3g} (<= {max_tol}), mean {diff.mean():.3g} (<= {mean_tol})"


@pytest.fixture(scope="module")
def parse_golden():
    return parsenet_golden()


@pytest.fixture(scope="module")
def weights():
    return synth_state_dict(manifest(), face=True)


@pytest.fixture(scope="module")
def net(weights):
    return load_parsenet(weights)


@pytest.fixture(scope="module")
def crop():
    """The aligned face as the pipeline holds it: [1,3,512,512] RGB float in 0..1."""
    rgb = np.asarray(Image.open(DATA / "parsenet_input_rgb.png"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def forward(net, crop):
    """The only ParseNet forward (slow on CPU): parse_faces on the golden face, with a hook
    keeping the raw outputs, so labels, logits and image all come from the public path."""
    captured = []
    hook = net.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        labels = parse_faces(net, crop)
    finally:
        hook.remove()
    (logits, image), = captured
    return labels, logits, image


def on_grid(array, grid):
    return np.asarray(array)[:, :, grid][:, :, :, grid]


def test_state_dict_matches_manifest(net):
    own = {k: tuple(v.shape) for k, v in ParseNet().state_dict().items()}
    assert own == {name: tuple(shape) for name, shape, _ in manifest()}
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_logits_and_image(forward, parse_golden):
    _, logits, image = forward
    assert logits.shape == (1, NUM_CLASSES, 512, 512) and image.shape == (1, 3, 512, 512)
    grid = parse_golden["grid"]
    assert_close("logits grid", on_grid(logits, grid), parse_golden["logits_f32_grid"], 2e-4, 2e-5)
    assert_close("out_img grid", on_grid(image, grid), parse_golden["out_img_f32_grid"], 2e-3, 2e-4)


def test_parse_faces_labels(forward, parse_golden):
    labels, logits, _ = forward
    assert labels.shape == (1, 512, 512) and labels.dtype == torch.int64
    assert torch.equal(labels, logits.argmax(dim=1))
    wrong = np.flatnonzero(labels[0].numpy().ravel() != parse_golden["labels"].ravel())
    assert np.isin(wrong, parse_golden["ambiguous_flat_idx"]).all(), \
        f"{wrong.size} label(s) differ outside the ambiguous set"


class _ChannelProbe(nn.Module):
    """Stand-in net: 'logits' are the preprocessed channels, so argmax reveals the preprocessing."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return x, x


def test_parse_faces_channel_order_resize_and_chunks():
    probe = _ChannelProbe()
    crops = torch.zeros(5, 3, 256, 256)
    crops[:, 0] = 0.9  # red wins everywhere when the channels keep the RGB order
    crops[1, 2] = 1.0  # face 1: blue wins
    labels = parse_faces(probe, crops, chunk_size=2)
    assert labels.shape == (5, 512, 512)
    assert probe.calls == [(2, 3, 512, 512), (2, 3, 512, 512), (1, 3, 512, 512)]
    assert [labels[i].unique().tolist() for i in range(5)] == [[0], [2], [0], [0], [0]]  # order kept across chunks
    assert parse_faces(probe, crops[:0]).shape == (0, 512, 512)


def test_loader_strips_prefix_and_accepts_missing_num_batches_tracked(weights):
    trimmed = {f"module.{k}": v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    load_parsenet(trimmed)
    model = load_network(trimmed, "parsenet")  # as read, before load_parsenet folds its BatchNorms
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, weights[key])


def test_loader_refuses_other_models(weights):
    with pytest.raises(CheckpointError, match="not a ParseNet.*CodeFormer.*parsing_parsenet.pth"):
        load_parsenet({"quantize.embedding.weight": torch.zeros(1024, 256)})
    with pytest.raises(CheckpointError, match="not a ParseNet.*RetinaFace"):
        load_parsenet({"body.conv1.weight": torch.zeros(64, 3, 7, 7), "ClassHead.0.conv1x1.weight": torch.zeros(4)})
    with pytest.raises(CheckpointError, match="not a ParseNet.*unknown model"):
        load_parsenet({"w": torch.randn(3, 3)})
    wrong = dict(weights)
    wrong["out_mask_conv.conv2d.weight"] = torch.zeros(11, 64, 3, 3)
    with pytest.raises(CheckpointError, match=r"closest is ParseNet \(19 classes, 512 px\) but 1 wrong shape: "
                                              r"out_mask_conv.conv2d.weight is \[11, 64, 3, 3\], "
                                              r"expected \[19, 64, 3, 3\]"):
        load_parsenet(wrong)
