"""ONNX export with a live fidelity weight (models/onnx_export.py, docs/onnx.md).

The restoration model with the golden synthetic weights is exported once per session through the
command line (``codeformer weights export``), in float32 and with ``--fp16``, and run with ONNX
Runtime on CPU against the PyTorch model for w = 0, 0.5 and 1 in one batch (so the dynamic batch
is exercised too). The colorization and inpainting variants are exported and checked at two w.
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
# fp16 decoder against float32: emulated on the golden input, 4.0e-3 max and 6.3e-4 mean (docs/precision.md)
FP16_MAX_ERR, FP16_MEAN_ERR = 2e-2, 2e-3


def export(tmp_path_factory, g, *flags):
    """``codeformer weights export`` of golden weights ``g``: (checkpoint, .onnx file)."""
    pytest.importorskip("onnxruntime")
    tmp = tmp_path_factory.mktemp("onnx")
    src = tmp / "codeformer.pth"
    torch.save({"params_ema": g.state_dict()}, src)
    dest = tmp / "codeformer.onnx"
    assert cli_main(["weights", "export", str(src), "--onnx", str(dest), *flags]) == 0
    assert sorted(p.name for p in tmp.iterdir()) == sorted([src.name, dest.name])  # no temporary file left
    return src, dest


def run_onnx(dest, x, w):
    import onnxruntime as ort
    sess = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input", "w"]
    assert [i.type for i in sess.get_inputs()] == ["tensor(float)"] * 2
    return sess.run(None, {"input": x.numpy(), "w": w.numpy()})


def faces(g, n):
    """``n`` different faces from the golden input (flipped and rolled copies)."""
    x = torch.from_numpy(np.concatenate([g.x] * n))
    for i in range(1, n):
        x[i] = x[i].flip(-1).roll(37 * i, -2)
    return x


@pytest.fixture(scope="module")
def exported(tmp_path_factory, golden):
    g = golden("restoration")
    return (g, *export(tmp_path_factory, g))


@pytest.fixture(scope="module")
def onnx_vs_torch(exported):
    g, src, dest = exported
    x = faces(g, len(WS))
    w = torch.tensor(WS, dtype=torch.float32)
    out, codes = run_onnx(dest, x, w)
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


def test_w_changes_the_output(exported, onnx_vs_torch):
    # the same face (sample 1 of the batch, run at w = 0.5) run again alone at w = 1: w is live in the graph
    _, _, dest = exported
    out, g = onnx_vs_torch[0], onnx_vs_torch[5]
    x = faces(g, len(WS))[1:2]
    (again,) = run_onnx(dest, x, torch.tensor([WS[1]]))[:1]
    assert float(np.abs(again[0] - out[1]).max()) <= 1e-3  # same face, same w: the same output
    (at_one,) = run_onnx(dest, x, torch.tensor([WS[2]]))[:1]
    assert float(np.abs(at_one[0] - out[1]).max()) > 1e-2


@pytest.fixture(scope="module")
def exported_fp16(tmp_path_factory, exported):
    g = exported[0]
    return export(tmp_path_factory, g, "--fp16")[1]


def test_fp16_export_keeps_the_codes_and_stays_close(exported_fp16, onnx_vs_torch):
    ref_out, _, ref, idx = onnx_vs_torch[:4]
    g = onnx_vs_torch[5]
    out, codes = run_onnx(exported_fp16, faces(g, len(WS)), torch.tensor(WS))
    assert out.dtype == np.float32 and out.shape == ref.shape
    for i, w in enumerate(WS):
        err = np.abs(out[i] - ref[i])
        print(f"\nfp16 w={w}: max abs error {err.max():.2e}, mean {err.mean():.2e}, "
              f"codes {int((codes[i] == idx[i]).sum())}/256")
        assert np.array_equal(codes[i], idx[i]), f"fp16 w={w}: the encoder must stay float32 (codes differ)"
        assert err.max() <= FP16_MAX_ERR and err.mean() <= FP16_MEAN_ERR, f"fp16 w={w}: error {err.max():.3g}"
    assert np.abs(out - ref_out).max() > 0, "the fp16 file computes exactly as the float32 one"


def test_fp16_export_halves_the_decoder_only(exported, exported_fp16):
    import onnx
    fp32, fp16 = (onnx.load(str(p)) for p in (exported[2], exported_fp16))
    kinds = {t.name: t.data_type for t in fp16.graph.initializer}
    dec = [n for n in kinds if n.startswith(("model.generator.", "model.fuse_convs_dict.")) and n.endswith(".weight")
           and len([d for d in fp16.graph.initializer if d.name == n][0].dims) == 4]
    enc = [n for n in kinds if n.startswith(("model.encoder.", "model.ft_layers.", "model.quantize."))]
    assert len(dec) > 40 and len(enc) > 40
    assert all(kinds[n] == onnx.TensorProto.FLOAT16 for n in dec)
    assert all(kinds[n] == onnx.TensorProto.FLOAT for n in enc)
    convs = [n for n in fp16.graph.node if n.op_type == "Conv"]
    assert len(convs) == len([n for n in fp32.graph.node if n.op_type == "Conv"])
    assert exported_fp16.stat().st_size < 0.85 * exported[2].stat().st_size


@pytest.mark.parametrize("variant", ["colorization", "inpainting"])
def test_other_variants_export(tmp_path_factory, golden, variant):
    g = golden(variant)
    src, dest = export(tmp_path_factory, g)
    x, w = faces(g, 2), torch.tensor([0.0, 1.0])
    out, codes = run_onnx(dest, x, w)
    with torch.inference_mode():
        ref, _, idx = load_model(src, device="cpu", options=EXPORT_OPTIONS)(x, w=w, return_codes=True)
    err = float(np.abs(out - ref.numpy()).max())
    print(f"\n{variant} (w = 0 and 1): max abs error {err:.2e}, codes {int((codes == idx.numpy()).sum())}/512")
    assert np.array_equal(codes, idx.numpy())
    assert np.array_equal(codes[:1], g.arrays["idx"])
    assert err <= 1e-3


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

# The pack loaded by ComfyUI as the server loads it (nodes.load_custom_node), every node's schema built
# (the loader lists .onnx files): then which onnx modules are imported, and which of the pack's node modules.
NODES_NO_ONNX = r"""
import asyncio, sys
comfyui, root, base = sys.argv[1:4]
sys.path.insert(0, comfyui)
from comfy.cli_args import args
args.cpu, args.base_directory = True, base
import nodes
assert asyncio.run(nodes.load_custom_node(root))
pack = root.replace(".", "_x_")
ours = [c for c in nodes.NODE_CLASS_MAPPINGS.values() if getattr(c, "RELATIVE_PYTHON_MODULE", "").endswith(
    "." + root.rsplit("/", 1)[-1])]
for cls in ours:
    cls.GET_SCHEMA() if hasattr(cls, "GET_SCHEMA") else cls.INPUT_TYPES()
print(len(ours), sorted(m for m in sys.modules if m.startswith(pack + ".nodes.")))
print(sorted(m for m in sys.modules if m.split(".")[0] in ("onnx", "onnxruntime")))
"""


def test_onnx_never_imported_by_the_core():
    out = subprocess.run([sys.executable, "-c", NO_ONNX], capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_onnx_never_imported_when_comfyui_loads_the_nodes(tmp_path):
    """The nodes mention ONNX (the loader lists .onnx files) but import neither onnx nor onnxruntime
    until an .onnx file is loaded: checked in sys.modules after ComfyUI has loaded the pack."""
    from helpers import COMFYUI_DIR, NODE_IDS
    (tmp_path / "models").mkdir()
    out = subprocess.run([sys.executable, "-c", NODES_NO_ONNX, str(COMFYUI_DIR), str(ROOT), str(tmp_path)],
                         capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded, onnx_modules = out.stdout.strip().splitlines()[-2:]
    count, node_modules = loaded.split(" ", 1)
    assert int(count) == len(NODE_IDS)
    for name in ("loaders", "restore", "faces", "all_in_one", "comfy_bridge"):
        assert f".nodes.{name}'" in node_modules, node_modules
    assert onnx_modules == "[]"


def test_the_export_through_the_onnx_face_runner(exported, onnx_vs_torch):
    """Our export run by models/onnx_face.py (as the pipeline would: crops in -1..1, w per face) equals
    the PyTorch model within the export's bound, w = 0, 0.5, 1 in one batch."""
    from codeformer_core.models.onnx_face import OnnxFaceModel
    g, _, dest = exported
    ref = onnx_vs_torch[2]
    model = OnnxFaceModel(dest, "cpu")
    assert (model.crop_size, model.has_fidelity, model.fixed_batch) == (512, True, None)
    assert model.signature.fidelity_per_face and model.signature.extra_outputs == ("codes",)
    out = model(faces(g, len(WS)), w=torch.tensor(WS))
    assert out.shape == ref.shape
    for i, w in enumerate(WS):
        err = float(np.abs(out[i].numpy() - ref[i]).max())
        print(f"\nrunner w={w}: max abs error {err:.2e}")
        assert err <= 1e-3, f"w={w}: max abs error {err:.3g}"
