"""ONNX export with a live fidelity weight (models/onnx_export.py, docs/onnx.md).

The restoration model with the golden synthetic weights is exported once per session through the
command line (``codeformer weights export``) and run with ONNX Runtime on CPU against the PyTorch
model for w = 0, 0.5 and 1 in one batch (so the dynamic batch is exercised too).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from codeformer_core.cli import main as cli_main
from codeformer_core.models.loader import load_model
from codeformer_core.models.onnx_export import EXPORT_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
WS = (0.0, 0.5, 1.0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, golden):
    pytest.importorskip("onnxruntime")
    g = golden("restoration")
    tmp = tmp_path_factory.mktemp("onnx")
    src = tmp / "codeformer.pth"
    torch.save({"params_ema": g.state_dict()}, src)
    dest = tmp / "codeformer.onnx"
    assert cli_main(["weights", "export", str(src), "--onnx", str(dest)]) == 0
    return g, src, dest


@pytest.fixture(scope="module")
def onnx_vs_torch(exported):
    import onnxruntime as ort
    g, src, dest = exported
    x = torch.from_numpy(np.concatenate([g.x] * len(WS)))
    x[1:] = x[1:].flip(-1)  # different faces per sample
    w = torch.tensor(WS, dtype=torch.float32)
    sess = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input", "w"]
    out, codes = sess.run(None, {"input": x.numpy(), "w": w.numpy()})
    with torch.inference_mode():
        plain = load_model(src, device="cpu", options=EXPORT_OPTIONS)
        ref, _, idx = plain(x, w=w, return_codes=True)
        default = load_model(src, device="cpu")
        _, _, idx_default = default(x[:1], w=0.5, return_codes=True)
    return out, codes, ref.numpy(), idx.numpy(), idx_default.numpy(), g


def test_onnx_matches_pytorch_for_each_w(onnx_vs_torch):
    out, codes, ref, idx, _, _ = onnx_vs_torch
    assert out.shape == ref.shape == (len(WS), 3, 512, 512)
    for i, w in enumerate(WS):
        err = float(np.abs(out[i] - ref[i]).max())
        print(f"\nw={w}: max abs error {err:.2e}, codes {int((codes[i] == idx[i]).sum())}/256")
        assert err <= 1e-3, f"w={w}: max abs error {err:.3g}"
        assert np.array_equal(codes[i], idx[i]), f"w={w}: code indices differ"


def test_onnx_codes_are_the_golden_codes(onnx_vs_torch):
    _, codes, _, _, idx_default, g = onnx_vs_torch
    assert np.array_equal(codes[:1], g.arrays["idx"])
    assert np.array_equal(idx_default, g.arrays["idx"])


def test_w_changes_the_output(onnx_vs_torch):
    out = onnx_vs_torch[0]
    x0 = onnx_vs_torch[0][0]
    assert x0.shape == (3, 512, 512)
    # samples 1 and 2 are the same face at w = 0.5 and 1: w is live in the graph
    assert float(np.abs(out[1] - out[2]).max()) > 1e-2


def test_export_refuses_a_wrong_output_name(tmp_path, capsys):
    src = tmp_path / "x.pth"
    src.write_bytes(b"")
    assert cli_main(["weights", "export", str(src), "--onnx", str(tmp_path / "out.bin")]) != 0
    assert ".onnx" in capsys.readouterr().err


NO_ONNX = r"""
import sys
import codeformer_core, codeformer_core.pipeline, codeformer_core.models.loader, codeformer_core.models.registry
from codeformer_core.cli.args import build_parser
build_parser()
print(sorted(m for m in sys.modules if m.split(".")[0] in ("onnx", "onnxruntime")))
"""


def test_onnx_never_imported_by_the_core_or_the_nodes():
    out = subprocess.run([sys.executable, "-c", NO_ONNX], capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    for path in (ROOT / "nodes").rglob("*.py"):
        assert "onnx" not in path.read_text().lower(), f"{path} mentions onnx"
