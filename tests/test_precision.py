"""Reduced precision keeps the code indices (models/precision.py, docs/precision.md).

``dtype="bf16"`` / ``"fp16"`` run the generator and fusion convolutions reduced and keep the
encoder (what decides the codes), transformer, codebook and norms in float32. One bf16 forward
(native on this CPU or emulated by oneDNN) and one fp16 forward (emulated: rounding at every
convolution) on the golden restoration input pin the agreement with the golden float32 codes.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from codeformer_core.models.codeformer import CodeFormer
from codeformer_core.models.loader import codeformer_dtype, cpu_has_native_bf16, load_model, resolve_dtype
from codeformer_core.models.precision import REDUCED_ENCODER_BLOCKS, emulate_fp16

W = 0.5
MIN_CODES_KEPT = 0.99
OUT_MAX_ERR = 0.1    # reduced decoder: output error against the golden float32 output (max, mean)
OUT_MEAN_ERR = 0.01


def conv_dtypes(module: nn.Module) -> set:
    return {m.weight.dtype for m in module.modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_policy_keeps_encoder_and_transformer_float32(dtype):
    with torch.device("meta"):
        model = CodeFormer("restoration")
    model.set_dtype(dtype, REDUCED_ENCODER_BLOCKS)
    assert conv_dtypes(model.encoder) == {torch.float32}
    assert conv_dtypes(model.generator) == {dtype} and conv_dtypes(model.fuse_convs_dict) == {dtype}
    assert {p.dtype for p in model.ft_layers.parameters()} == {torch.float32}
    assert model.quantize.embedding.weight.dtype == torch.float32


def test_auto_dtype_by_device():
    cpu = torch.device("cpu")
    assert codeformer_dtype("auto", cpu) == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert codeformer_dtype(None, cpu) == torch.float32        # the library default stays exact
    assert codeformer_dtype("auto", torch.device("cuda")) == torch.float16
    assert codeformer_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("auto", cpu) == torch.float32         # other networks: no CPU bf16


def codes_and_error(model, g):
    out, _, idx = model(torch.from_numpy(g.x), w=W, adain=True, return_codes=True)
    err = np.abs(g.sample(out.float().numpy()) - g.out(W))
    return float((idx.numpy() == g.arrays["idx"]).mean()), float(err.max()), float(err.mean())


def test_bf16_keeps_the_codes(golden):
    g = golden("restoration")
    model = load_model({"params_ema": g.state_dict()}, device="cpu", dtype="bf16")
    assert model.conv_dtype == torch.bfloat16
    kept, emax, emean = codes_and_error(model, g)
    print(f"\nbf16: codes kept {kept:.2%}, out max {emax:.3g} mean {emean:.3g}")
    assert kept >= MIN_CODES_KEPT
    assert emax <= OUT_MAX_ERR and emean <= OUT_MEAN_ERR


def test_fp16_emulated_keeps_the_codes(golden):
    g = golden("restoration")
    model = load_model({"params_ema": g.state_dict()}, device="cpu", dtype="fp32")
    emulate_fp16(model, REDUCED_ENCODER_BLOCKS)
    kept, emax, emean = codes_and_error(model, g)
    print(f"\nfp16 (emulated): codes kept {kept:.2%}, out max {emax:.3g} mean {emean:.3g}")
    assert kept >= MIN_CODES_KEPT
    assert emax <= OUT_MAX_ERR and emean <= OUT_MEAN_ERR
