"""BatchNorm folded into the convolutions at load (models/batchnorm.py): same outputs, no BN left."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from codeformer_core.dev.synthetic import synth_state_dict
from codeformer_core.models.batchnorm import fold_batchnorms, fold_into_conv
from codeformer_core.models.loader import load_parsenet, load_retinaface
from codeformer_core.models.registry import load_network

FACE = Path(__file__).parent / "data" / "face_golden"


def test_fold_into_conv_matches_conv_then_batchnorm():
    g = torch.Generator().manual_seed(0)
    conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=True), nn.BatchNorm2d(6)
    for t in (*conv.parameters(), bn.weight, bn.bias, bn.running_mean):
        t.data = torch.randn(t.shape, generator=g)
    bn.running_var.data = torch.rand(6, generator=g) + 0.5
    bn.eval()
    x = torch.randn(2, 4, 9, 9, generator=g)
    want = bn(conv(x)).detach()
    fold_into_conv(conv, bn)
    torch.testing.assert_close(conv(x).detach(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,manifest,size,loader", [
    ("retinaface", "retinaface_manifest_mobile0.25.json", 160, load_retinaface),
    ("parsenet", "parsenet_manifest_parsenet.json", 512, load_parsenet)])
def test_loaded_networks_have_no_batchnorm_and_same_output(kind, manifest, size, loader):
    weights = synth_state_dict(json.loads((FACE / manifest).read_text()), face=True)
    reference, folded = load_network(weights, kind), loader(weights)
    assert any(isinstance(m, nn.BatchNorm2d) for m in reference.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for got, want in zip(folded(x), reference(x)):
            scale = float(want.abs().max())
            assert float((got - want).abs().max()) <= 1e-5 * max(scale, 1.0)


def test_fold_refuses_training_mode():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorms(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)))
