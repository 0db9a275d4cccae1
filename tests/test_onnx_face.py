"""ONNX face-restoration files run by ``models/onnx_face.py`` (docs/onnx.md, "Face models").

Small files with the signatures of the files users have (GPEN-BFR 256/1024, FaceFusion's CodeFormer with
``weight`` float64 [1], ours with ``w`` float32 [B]; fixed batch 1 and dynamic) are built here with
onnx.helper: two convolutions that copy the image, then ``y = x * (2w - 1)`` (with a fidelity input) or
``y = -x`` (without). The expected outputs are that formula computed with torch, not by the runner.
Our own CodeFormer export through the runner is checked in tests/test_onnx.py (one export per module).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, numpy_helper  # noqa: E402

from codeformer_core import pipeline  # noqa: E402
from codeformer_core.cli import main as cli_main  # noqa: E402
from codeformer_core.errors import CheckpointError, MissingDependencyError, NotAFaceModelError  # noqa: E402
from codeformer_core.faces.align import align_faces, template_for  # noqa: E402
from codeformer_core.faces.detect import Detections  # noqa: E402
from codeformer_core.faces.paste import paste_faces  # noqa: E402
from codeformer_core.models.onnx_face import (CPU, CUDA, TENSORRT, OnnxFaceModel, inspect_onnx_face_model,  # noqa: E402
                                              select_providers)
from helpers import face_model_proto, write_onnx as write  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data", "face_golden")


def expected(crops01: torch.Tensor, w) -> torch.Tensor:
    """What the files compute, mapped as the pipeline maps (clamp, 0..1): crops 0..1 -> 0..1."""
    x = crops01 * 2 - 1
    y = -x if w is None else x * (2 * torch.as_tensor(w, dtype=torch.float32).reshape(-1, 1, 1, 1) - 1)
    return (y.clamp(-1, 1) + 1) / 2


# signature id -> (size, fidelity name, fidelity type, fidelity shape, batch)
SIGNATURES = {
    "gpen1024_fixed1": (1024, None, None, None, 1),
    "gpen256_dynamic": (256, None, None, None, "B"),
    "facefusion_codeformer256_weight_double": (256, "weight", TensorProto.DOUBLE, (1,), 1),
    "ours256_w_float_dynamic": (256, "w", TensorProto.FLOAT, ("B",), "B"),
    "weight_double_dynamic_one_w": (256, "weight", TensorProto.DOUBLE, (1,), "B"),
    "w_float_scalar": (256, "w", TensorProto.FLOAT, (), "B"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_faces")
    out = {}
    for key, (size, fid, ftype, fshape, batch) in SIGNATURES.items():
        kw = {} if fid is None else dict(fidelity=fid, fid_type=ftype, fid_shape=fshape)
        out[key] = write(face_model_proto(size, batch=batch, **kw), folder / f"{key}.onnx")
    return out


@pytest.fixture(scope="module")
def astronaut_face():
    """The face golden's image and landmarks (tests/data/face_golden, ALIGN_PASTE.md)."""
    astronaut = pytest.importorskip("skimage.data").astronaut()
    g = np.load(os.path.join(DATA, "retinaface_align_paste.npz"))
    frames = torch.from_numpy(np.ascontiguousarray(astronaut)).permute(2, 0, 1)[None].float() / 255.0
    return frames, torch.tensor(g["landmarks"], dtype=torch.float32)[None]


# -- the runner -----------------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(SIGNATURES))
def test_signature_is_read(files, key):
    size, fid, ftype, fshape, batch = SIGNATURES[key]
    sig = inspect_onnx_face_model(files[key])
    assert sig.crop_size == size
    assert sig.fidelity_name == fid
    assert sig.fixed_batch == (batch if isinstance(batch, int) else None)
    assert sig.fidelity_type == {None: None, TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64"}[ftype]
    assert sig.fidelity_per_face == (fshape == ("B",))
    assert sig.fidelity_rank == (1 if fshape is None else len(fshape))
    assert sig.template == ("arcface_128" if size == 256 else "ffhq")


@pytest.mark.parametrize("key", list(SIGNATURES))
def test_runner_output_for_each_signature(files, key):
    size, fid, *_ = SIGNATURES[key]
    model = OnnxFaceModel(files[key], "cpu")
    assert model.crop_size == size and model.has_fidelity == (fid is not None)
    assert model.providers == [CPU] and next(model.parameters()).device == torch.device("cpu")
    n = 1 if size > 512 else 3
    gen = torch.Generator().manual_seed(1)
    crops = torch.rand(n, 3, size, size, generator=gen)
    ws = torch.tensor([0.0, 0.5, 1.0][:n])   # different w per face: [1]-fidelity files run face by face
    y = model(crops * 2 - 1, w=ws)
    assert y.shape == (n, 3, size, size) and y.dtype == torch.float32
    got = (y.clamp(-1, 1) + 1) / 2
    want = expected(crops, None if fid is None else ws)
    assert float((got - want).abs().max()) < 1e-6


def test_the_pipeline_runs_a_512_file_like_codeformer(tmp_path):
    """A 512 px file with w [B] goes through pipeline.restore_faces as it is (run_network's batches)."""
    path = write(face_model_proto(512, fidelity="w"), tmp_path / "f512.onnx")
    model = OnnxFaceModel(path)
    gen = torch.Generator().manual_seed(2)
    crops = torch.rand(3, 3, 512, 512, generator=gen)
    faces = pipeline.aligned_faces(crops)
    calls = []
    out = pipeline.restore_faces(model, faces, w=torch.tensor([0.0, 0.5, 1.0]), batch_size=2,
                                 progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 3), (3, 3)]
    assert float((out.crops - expected(crops, [0.0, 0.5, 1.0])).abs().max()) < 1e-6


def test_fixed_batch_file_gets_any_number_of_faces(files):
    model = OnnxFaceModel(files["facefusion_codeformer256_weight_double"])
    assert model.max_batch == 1
    crops = torch.rand(4, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    y = model(crops * 2 - 1, w=0.25)
    assert float(((y + 1) / 2 - expected(crops, 0.25)).abs().max()) < 1e-6


@pytest.mark.parametrize("key", ["gpen1024_fixed1", "facefusion_codeformer256_weight_double"])
def test_face_steps_at_the_model_crop_size(files, astronaut_face, key):
    """detect_faces (with detections given) at crop_size = S, the model, paste-back: the restored
    face lands where the face was (the model inverts the crop, so the pasted region is 1 - frame)."""
    frames, lm = astronaut_face
    model = OnnxFaceModel(files[key])
    s = model.crop_size
    dets = Detections(boxes=torch.tensor([[0.0, 0.0, 1.0, 1.0]]), scores=torch.ones(1), landmarks=lm,
                      frame_index=torch.zeros(1, dtype=torch.long), num_frames=1, frame_size=tuple(frames.shape[-2:]))
    faces = pipeline.detect_faces(frames, None, crop_size=s, detections=dets)
    assert faces.crop_size == s
    w = None if not model.has_fidelity else 0.0    # 0: the file inverts too
    out = (model(faces.crops * 2 - 1, w=w).clamp(-1, 1) + 1) / 2
    pasted, mask = paste_faces(frames, faces.with_crops(out))
    inside = mask[0, 0] > 0.999
    assert int(inside.sum()) > 5000
    err = (pasted[0] - (1 - frames[0])).abs()[:, inside]
    assert float(err.mean()) < 0.02, float(err.mean())
    outside = mask[0, 0] == 0
    assert torch.equal(pasted[0][:, outside], frames[0][:, outside])


def test_gpen_1024_crop_geometry(astronaut_face):
    """At 1024 the face golden's landmarks land at twice their golden 512 crop positions, the
    affine is the 512 one doubled, and the paste-back square covers the same frame region."""
    frames, lm = astronaut_face
    g = np.load(os.path.join(DATA, "retinaface_align_paste.npz"))
    f512 = align_faces(frames, lm, torch.zeros(1, dtype=torch.long), size=512)
    f1024 = align_faces(frames, lm, torch.zeros(1, dtype=torch.long), size=1024)
    assert torch.allclose(f1024.affines, 2 * f512.affines, atol=1e-4)
    assert np.allclose(f512.affines[0].numpy(), g["affine"], atol=2e-3)
    homog = torch.cat([lm[0], torch.ones(5, 1)], 1).double()
    pts = homog @ f1024.affines[0].double().T
    golden_512 = homog @ torch.from_numpy(np.asarray(g["affine"], np.float64)).T   # the golden's crop landmarks
    assert float((pts - 2 * golden_512).abs().max()) < 0.01
    ones = torch.ones(1, 3, 1024, 1024)
    _, m1024 = paste_faces(frames, f1024.with_crops(ones))
    _, m512 = paste_faces(frames, f512.with_crops(torch.ones(1, 3, 512, 512)))
    assert float((m1024 - m512).abs().max()) < 0.05


def test_arcface_template_for_256(files):
    model = OnnxFaceModel(files["gpen256_dynamic"])
    t = model.template()
    assert t.shape == (5, 2)
    assert torch.allclose(t[0], torch.tensor([0.36167656 * 256, 0.40387734 * 256]))
    m1024 = OnnxFaceModel(files["gpen1024_fixed1"])
    assert torch.allclose(m1024.template(), template_for(1024), atol=1e-4)


# -- providers -----------------------------------------------------------------------------------
def test_providers_cpu_device_uses_cpu_even_with_gpu_providers():
    assert select_providers("cpu", [TENSORRT, CUDA, CPU]) == [(CPU, {})]


def test_providers_cuda_prefers_tensorrt_with_a_cache(tmp_path):
    got = select_providers(torch.device("cuda", 1), [TENSORRT, CUDA, CPU], trt_cache_dir=tmp_path, trt_fp16=True)
    assert [p for p, _ in got] == [TENSORRT, CUDA, CPU]
    trt = got[0][1]
    assert trt["device_id"] == 1 and trt["trt_fp16_enable"] is True
    assert trt["trt_engine_cache_enable"] is True and trt["trt_engine_cache_path"] == str(tmp_path)
    assert got[1] == (CUDA, {"device_id": 1})


def test_providers_cuda_without_tensorrt_or_gpu():
    assert [p for p, _ in select_providers("cuda", [CUDA, CPU])] == [CUDA, CPU]
    assert [p for p, _ in select_providers("cuda:0", [TENSORRT, CUDA, CPU], tensorrt=False)] == [CUDA, CPU]
    assert select_providers("cuda:0", ["AzureExecutionProvider", CPU]) == [(CPU, {})]


def test_a_cuda_device_without_gpu_provider_falls_back_to_cpu_with_a_warning(files):
    with pytest.warns(UserWarning, match="no CUDA provider"):
        model = OnnxFaceModel(files["gpen256_dynamic"], torch.device("cuda", 0), available_providers=[CPU])
    assert model.providers == [CPU] and model.device == torch.device("cpu")


# -- refusals ------------------------------------------------------------------------------------
def refusal(tmp_path, proto, name="bad.onnx"):
    path = write(proto, tmp_path / name)
    with pytest.raises(NotAFaceModelError) as e:
        OnnxFaceModel(path)
    with pytest.raises(NotAFaceModelError):
        inspect_onnx_face_model(path)
    return str(e.value)


def test_refuses_rank_3_input(tmp_path):
    msg = refusal(tmp_path, face_model_proto(256, in_shape=[3, 256, 256]))
    assert msg.startswith("bad.onnx is an ONNX model whose input input has rank 3 ([3,256,256])"), msg


def test_refuses_non_square(tmp_path):
    msg = refusal(tmp_path, face_model_proto(256, in_shape=[1, 3, 256, 512]))
    assert "for 512x256 images" in msg and "not square face crops" in msg, msg


def test_refuses_one_channel(tmp_path):
    msg = refusal(tmp_path, face_model_proto(256, in_shape=[1, 1, 256, 256]))
    assert "for 1 channels" in msg and "not RGB" in msg, msg


def test_refuses_an_upscaler(tmp_path):
    msg = refusal(tmp_path, face_model_proto(256, batch=1, out_size=1024), "4x_upscaler.onnx")
    assert msg.startswith("4x_upscaler.onnx is a 4x upscaler (256 px in, 1024 px out), "
                          "not a face-restoration model"), msg


def test_refuses_a_free_size_model(tmp_path):
    msg = refusal(tmp_path, face_model_proto(256, in_shape=[1, 3, "H", "W"]))
    assert "free image size" in msg and "upscaler" in msg, msg


def test_refuses_an_unsupported_crop_size(tmp_path):
    msg = refusal(tmp_path, face_model_proto(300))
    assert "for 300 px crops" in msg, msg


def test_refuses_an_extra_input(tmp_path):
    msg = refusal(tmp_path, face_model_proto(256, extra_input="source"))
    assert "also needs an input 'source'" in msg, msg


def _external(tmp_path, location, make_data=True):
    """A 256 px face model whose conv weight is stored at ``location`` (relative to tmp_path/model/)."""
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    proto = face_model_proto(256)
    t = [i for i in proto.graph.initializer if i.name == "conv1.weight"][0]
    raw = t.raw_data or numpy_helper.to_array(t).tobytes()
    if make_data:
        target = folder / location if not os.path.isabs(location) else None
        if target is not None and not target.exists() and ".." not in location:
            target.write_bytes(raw)
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return write(proto, folder / "model.onnx"), raw


@pytest.fixture
def no_session(monkeypatch):
    """Fails the test if ONNX Runtime is asked to open the file."""
    import onnxruntime

    def refuse(*a, **k):
        raise AssertionError("an InferenceSession was made for an unsafe file")
    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)


def test_external_data_in_its_folder_is_used(tmp_path):
    path, _ = _external(tmp_path, "weights.bin")
    model = OnnxFaceModel(path)
    crops = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(4))
    assert float(((model(crops * 2 - 1) + 1) / 2 - expected(crops, None)).abs().max()) < 1e-6


def test_refuses_external_data_at_an_absolute_path(tmp_path, no_session):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 4096)
    path, _ = _external(tmp_path, str(secret))
    with pytest.raises(CheckpointError) as e:
        OnnxFaceModel(path)
    assert str(e.value) == (f"model.onnx: tensor 'conv1.weight' is stored outside the file, at the absolute path "
                            f"{str(secret)!r}; refused: an ONNX file may only use data files in its own folder")


def test_refuses_external_data_with_dot_dot(tmp_path, no_session):
    (tmp_path / "other.bin").write_bytes(b"\0" * 4096)
    path, _ = _external(tmp_path, "../other.bin")
    with pytest.raises(CheckpointError) as e:
        OnnxFaceModel(path)
    assert "at '../other.bin', outside its folder; refused" in str(e.value)


def test_refuses_external_data_through_a_symlink_out(tmp_path, no_session):
    (tmp_path / "other.bin").write_bytes(b"\0" * 4096)
    (tmp_path / "model").mkdir()
    os.symlink(tmp_path / "other.bin", tmp_path / "model" / "link.bin")
    path, _ = _external(tmp_path, "link.bin")
    with pytest.raises(CheckpointError) as e:
        OnnxFaceModel(path)
    assert "at 'link.bin', a link leading outside its folder; refused" in str(e.value)


def test_refuses_missing_or_short_external_data(tmp_path, no_session):
    path, raw = _external(tmp_path, "weights.bin", make_data=False)
    with pytest.raises(CheckpointError, match="in 'weights.bin', which is missing next to it"):
        OnnxFaceModel(path)
    (path.parent / "weights.bin").write_bytes(raw[:-4])
    with pytest.raises(CheckpointError, match="past the end of that file .* truncated"):
        OnnxFaceModel(path)


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_refuses_a_truncated_file(files, tmp_path, no_session, keep):
    data = files["gpen256_dynamic"].read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CheckpointError) as e:
        OnnxFaceModel(path)
    assert str(e.value).startswith("cut.onnx: not a complete ONNX") or \
        str(e.value).startswith("cut.onnx: not a valid ONNX model"), str(e.value)


def test_refuses_a_file_that_is_not_onnx(tmp_path, no_session):
    path = tmp_path / "photo.onnx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match="photo.onnx: not a complete ONNX"):
        OnnxFaceModel(path)


def test_missing_onnx_package_names_the_extra(monkeypatch, files):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "onnx":
            raise ImportError("no onnx")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(MissingDependencyError) as e:
        OnnxFaceModel(files["gpen256_dynamic"])
    assert e.value.package == "onnx" and "[onnx] extra" in str(e.value)


# -- codeformer weights verify FILE.onnx ----------------------------------------------------------
def test_weights_verify_describes_a_face_model(files, capsys):
    assert cli_main(["weights", "verify", str(files["facefusion_codeformer256_weight_double"])]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "256 px crops (ArcFace 128 alignment)" in out, out
    assert "fidelity input weight float64 [1]" in out and "fixed batch 1" in out, out


def test_weights_verify_says_why_not(tmp_path, capsys):
    path = write(face_model_proto(256, batch=1, out_size=1024), tmp_path / "up.onnx")
    assert cli_main(["weights", "verify", str(path)]) != 0
    out = capsys.readouterr().out
    assert "FAIL" in out and "up.onnx is a 4x upscaler (256 px in, 1024 px out)" in out, out


def test_out_of_memory_in_onnxruntime_halves_the_pipeline_batch(tmp_path, monkeypatch):
    """An allocation failure inside ONNX Runtime comes out as a MemoryError, so run_network's chunk
    loop halves the batch (here: runs of more than 2 faces fail as ONNX Runtime's arena words it)."""
    model = OnnxFaceModel(write(face_model_proto(512, fidelity="w"), tmp_path / "f512.onnx"))
    real = model.session.run
    sizes = []

    def run(names, feed):
        sizes.append(len(feed["input"]))
        if len(feed["input"]) > 2:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while "
                               "running Conv node. Failed to allocate memory for requested buffer of size 67108864")
        return real(names, feed)
    monkeypatch.setattr(model.session, "run", run)
    crops = torch.rand(5, 3, 512, 512, generator=torch.Generator().manual_seed(5))
    out = pipeline.run_network(model, crops, w=0.75, batch_size=4)
    assert sizes == [4, 2, 2, 1]
    assert float((out - expected(crops, 0.75)).abs().max()) < 1e-6
