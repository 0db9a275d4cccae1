"""Reduced precision keeps the code indices (models/precision.py, docs/precision.md).

``dtype="bf16"`` / ``"fp16"`` run the generator and fusion convolutions reduced and keep the
encoder (what decides the codes), transformer, codebook and norms in float32. One bf16 forward
and one fp16 forward on the golden restoration input pin the agreement with the golden float32
codes. fp16 is always emulated (rounding at every reduced convolution). bf16 runs the real bf16
model where the CPU has native bf16 (avx512_bf16 / amx_bf16), and is emulated the same way where
it has not: PyTorch's own bf16 emulation takes well over 15 minutes a forward on an AVX2 CPU.
``CODEFORMER_TEST_BF16=native|emulated`` (read by this module only) forces either branch.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from codeformer_core.models.codeformer import CodeFormer
from codeformer_core.models.loader import codeformer_dtype, cpu_flags, cpu_has_native_bf16, load_model, resolve_dtype
from codeformer_core.models.precision import REDUCED_ENCODER_BLOCKS, emulate_reduced

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


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu vme sse2 avx avx2 fma avx512f avx512_bf16 avx512_vnni
bugs\t\t: sysret_ss_attrs

processor\t: 1
flags\t\t: fpu vme sse2 avx avx2 fma avx512f avx512_bf16 avx512_vnni
"""


@pytest.mark.parametrize("flags,native", [
    ("fpu avx2", False), ("fpu sse2 avx avx2 fma avx512f avx512_vnni", False), ("", False),
    ("avx512_bf16", True), ("fpu avx2 avx512f avx512_bf16", True), ("fpu amx_tile amx_bf16", True),
    ("fpu avx512_fp16 avx_vnni", False), ("fpu avx512_bf16x", False)])
def test_native_bf16_decision_from_flags(flags, native):
    assert cpu_has_native_bf16(flags) is native
    assert cpu_has_native_bf16(flags.split()) is native
    cpu = torch.device("cpu")
    assert codeformer_dtype("auto", cpu, flags) == (torch.bfloat16 if native else torch.float32)
    assert codeformer_dtype(None, cpu, flags) == torch.float32      # the library default stays exact
    assert codeformer_dtype("fp32", cpu, flags) == torch.float32
    assert codeformer_dtype("bf16", cpu, flags) == torch.bfloat16   # asked for: the policy, native or not


def test_cpu_flags_reads_the_flags_line():
    assert cpu_flags(CPUINFO) == ("fpu", "vme", "sse2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni")
    assert cpu_flags("processor\t: 0\nmodel name\t: ARM\n") == ()
    assert cpu_flags("") == ()


def test_auto_dtype_by_device():
    cpu = torch.device("cpu")
    assert codeformer_dtype(None, cpu) == torch.float32        # the library default stays exact
    assert codeformer_dtype("auto", torch.device("cuda")) == torch.float16
    assert codeformer_dtype("auto", torch.device("cuda"), "fpu avx512_bf16") == torch.float16
    assert codeformer_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("auto", cpu) == torch.float32         # other networks: no CPU bf16


def codes_and_error(model, g):
    out, _, idx = model(torch.from_numpy(g.x), w=W, adain=True, return_codes=True)
    err = np.abs(g.sample(out.float().numpy()) - g.out(W))
    return float((idx.numpy() == g.arrays["idx"]).mean()), float(err.max()), float(err.mean())


def bf16_branch() -> str:
    """How this CPU runs the bf16 check: the real bf16 model where bf16 is native, else emulated."""
    forced = os.environ.get("CODEFORMER_TEST_BF16", "")
    if forced:
        assert forced in ("native", "emulated"), f"CODEFORMER_TEST_BF16={forced!r}: use native or emulated"
        return forced
    with open("/proc/cpuinfo") as f:  # read here, not with the code under test
        text = f.read()
    return "native" if ("avx512_bf16" in text.split() or "amx_bf16" in text.split()) else "emulated"


def test_bf16_keeps_the_codes(golden):
    g = golden("restoration")
    branch = bf16_branch()
    if branch == "native":
        model = load_model({"params_ema": g.state_dict()}, device="cpu", dtype="bf16")
        assert model.conv_dtype == torch.bfloat16
    else:
        model = load_model({"params_ema": g.state_dict()}, device="cpu", dtype="fp32")
        emulate_reduced(model, torch.bfloat16, REDUCED_ENCODER_BLOCKS)
    kept, emax, emean = codes_and_error(model, g)
    print(f"\nbf16 ({branch}): codes kept {kept:.2%}, out max {emax:.3g} mean {emean:.3g}")
    assert kept >= MIN_CODES_KEPT
    assert emax <= OUT_MAX_ERR and emean <= OUT_MEAN_ERR


def test_fp16_emulated_keeps_the_codes(golden):
    g = golden("restoration")
    model = load_model({"params_ema": g.state_dict()}, device="cpu", dtype="fp32")
    emulate_reduced(model, torch.float16, REDUCED_ENCODER_BLOCKS)
    kept, emax, emean = codes_and_error(model, g)
    print(f"\nfp16 (emulated): codes kept {kept:.2%}, out max {emax:.3g} mean {emean:.3g}")
    assert kept >= MIN_CODES_KEPT
    assert emax <= OUT_MAX_ERR and emean <= OUT_MEAN_ERR


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_emulation_rounds_exactly_the_policy_convolutions(dtype):
    """Weights of the reduced convolutions become values of ``dtype``; the encoder's stay float32."""
    torch.manual_seed(0)
    with torch.device("meta"):
        model = CodeFormer("inpainting")
    model = model.to_empty(device="cpu")
    for p in model.parameters():
        p.data.normal_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    handles = emulate_reduced(model, dtype, REDUCED_ENCODER_BLOCKS)
    after = model.state_dict()
    gen = after["generator.blocks.0.weight"]
    assert gen.dtype == torch.float32 and torch.equal(gen, before["generator.blocks.0.weight"].to(dtype).float())
    assert not torch.equal(gen, before["generator.blocks.0.weight"])
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("encoder."))
    conv = model.generator.blocks[0]
    y = conv(torch.randn(1, conv.in_channels, 4, 4))
    assert torch.equal(y, y.to(dtype).float())  # the output is rounded to dtype
    for h in handles:
        h.remove()
