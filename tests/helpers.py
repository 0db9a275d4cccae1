"""Helpers shared by the tests (one module): paths, golden data, synthetic weight files, tiny media,
a loopback HTTP server, and running the pack's nodes inside the real ComfyUI. Fixtures are in
conftest.py."""
from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import socket
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from codeformer_core.dev.golden import Golden  # noqa: F401  (the one golden loader, shared with tools/)
from codeformer_core.dev.synthetic import synth_state_dict

VARIANT_NAMES = ("restoration", "colorization", "inpainting")


ROOT = Path(__file__).resolve().parents[1]


DATA = Path(__file__).parent / "data"


FACE = DATA / "face_golden"


COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR", ROOT / ".comfyui" / "ComfyUI-0.3.64"))


NODE_IDS = ("CodeFormerModelLoader", "CodeFormerFaceDetectorLoader", "CodeFormerDetectFaces",
            "CodeFormerRestoreFaces", "CodeFormerColorizeFaces", "CodeFormerInpaintFaces", "CodeFormerPasteFaces",
            "CodeFormerCropsToImage", "CodeFormerImageToCrops", "CodeFormerRestoreFacesAllInOne",
            "CodeFormerRestoreFacesWithModel")


def save_weights(sd, path: Path, nest: bool) -> None:
    """A state dict of numpy arrays / tensors as a .pth file, nested under params_ema like the official files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
               for k, v in sd.items()}
    torch.save({"params_ema": tensors} if nest else tensors, path)


def write_face_net(file: str, manifest: str, folder: Path) -> Path:
    """A synthetic RetinaFace / ParseNet file under its official name."""
    items = json.loads((FACE / manifest).read_text())
    save_weights(synth_state_dict(items, face=True), folder / file, nest=False)
    return folder / file


def run_node(cls, **inputs) -> tuple:
    """One node run through its V3 entry point as ComfyUI's executor calls it (a per-run class clone,
    ``EXECUTE_NORMALIZED``); the outputs as a tuple."""
    return tuple(cls.PREPARE_CLASS_CLONE({}).EXECUTE_NORMALIZED(**inputs).args)


def load_comfy_extras(comfyui, extras_file: str) -> bool:
    """Loads one of ComfyUI's own comfy_extras node files (e.g. nodes_upscale_model.py), as ComfyUI
    does at start."""
    path = os.path.join(os.path.dirname(comfyui.nodes.__file__), "comfy_extras", extras_file)
    return asyncio.run(comfyui.nodes.load_custom_node(path, module_parent="comfy_extras"))


def write_synthetic_models(root: Path) -> Path:
    """The one synthetic models folder, in ComfyUI's layout under the official file names:
    codeformer.pth (restoration, nested under params_ema), both RetinaFace detectors and ParseNet
    (bare state dicts), an empty upscale_models/. About 400 MB; written once per session."""
    from codeformer_core.models.registry import architecture, contract
    save_weights(synth_state_dict(contract(architecture("codeformer", "restoration")).items()),
                 root / "facerestore_models" / "codeformer.pth", nest=True)
    for file, manifest in (("detection_Resnet50_Final.pth", "retinaface_manifest_resnet50.json"),
                           ("detection_mobilenet0.25_Final.pth", "retinaface_manifest_mobile0.25.json"),
                           ("parsing_parsenet.pth", "parsenet_manifest_parsenet.json")):
        write_face_net(file, manifest, root / "facedetection")
    (root / "upscale_models").mkdir(parents=True, exist_ok=True)
    return root


TOLERANCE = {  # golden README, section 7: (max abs, mean abs)
    "lq_feat": (1e-4, 5e-6), "logits": (3e-4, 3e-5), "quant_feat": (1e-4, 5e-6), "out": (1e-4, 5e-6),
}


def assert_close(name: str, got, want, tol=None):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert np.isfinite(got).all(), f"{name}: non-finite values"
    max_tol, mean_tol = tol or TOLERANCE[name.split("[")[0]]
    diff = np.abs(got - want)
    assert diff.max() <= max_tol and diff.mean() <= mean_tol, \
        f"{name}: max {diff.max():.3g} (<= {max_tol}), mean {diff.mean():.3g} (<= {mean_tol})"
    return float(diff.max()), float(diff.mean())


DETECTOR_ARGS = ["--detector", "retinaface_mobilenet0.25", "--no-download", "-q"]
NO_FACES = ["--detection-threshold", "1.0"]  # scores never exceed 1: detection runs, finds nothing

_load_cache: dict = {}


def run_cli(*argv):
    """``codeformer ARGV...`` in this process: (exit code, stdout, stderr)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout
    from codeformer_core import cli
    o, e = io.StringIO(), io.StringIO()
    with redirect_stdout(o), redirect_stderr(e):
        rc = cli.main([str(a) for a in argv])
    return rc, o.getvalue(), e.getvalue()


def cache_model_loading(monkeypatch) -> None:
    """Reuse loaded models across cli.main calls (same path -> same object)."""
    from codeformer_core.faces import detect as detection
    from codeformer_core.models import loader

    real_model, real_det = loader.load_model, detection.load_detector

    def load_model(source, device=None, dtype=None):
        key = ("m", str(source), str(device), str(dtype))
        if key not in _load_cache:
            _load_cache[key] = real_model(source, device=device, dtype=dtype)
        return _load_cache[key]

    def load_detector(source, device=None, chunk_size=8):
        key = ("d", str(source), str(device))
        if key not in _load_cache:
            _load_cache[key] = real_det(source, device=device, chunk_size=chunk_size)
        return _load_cache[key]

    monkeypatch.setattr(loader, "load_model", load_model)
    monkeypatch.setattr(detection, "load_detector", load_detector)


def astronaut(size=None) -> np.ndarray:
    """The one astronaut: HxWx3 uint8 RGB, 512x512 (tests/data/face_golden/astronaut_rgb.png, the
    image the face golden data were made from; equal to skimage.data.astronaut()), or resized to
    ``size`` (cv2 order: (width, height)). Layouts for the networks: ``astronaut_frame`` (pipeline
    frame [1,3,512,512] float), ``astronaut_bgr`` (RetinaFace reference input); the ComfyUI IMAGE of
    tests/data/astronaut.png (256 px) is the ``astronaut_image`` fixture."""
    from PIL import Image
    img = np.asarray(Image.open(FACE / "astronaut_rgb.png").convert("RGB")).copy()
    if size is None:
        return img
    import cv2
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def astronaut_frame() -> torch.Tensor:
    """The astronaut as a pipeline frame batch: [1,3,512,512] RGB float 0..1."""
    return torch.from_numpy(astronaut()).permute(2, 0, 1).float()[None] / 255


def astronaut_bgr() -> np.ndarray:
    """The astronaut as the RetinaFace reference reads it: 512x512x3 BGR float32 0..255."""
    return np.ascontiguousarray(astronaut()[:, :, ::-1].astype(np.float32))


def aligned_face(size: int = 128) -> np.ndarray:
    """The astronaut's face region, roughly where an aligned 512 crop has it."""
    import cv2
    return cv2.resize(data_face(), (size, size), interpolation=cv2.INTER_AREA)


def data_face() -> np.ndarray:
    return astronaut()[10:290, 130:410]


# Golden data of the face networks (tests/data/face_golden, FACE_NETS.md), one loader per file set.
# The CodeFormer golden cases are ``Golden`` (codeformer_core/dev/golden.py, the ``golden`` fixture).
def align_paste_golden() -> dict:
    """retinaface_align_paste.npz: alignment and paste-back golden (landmarks, affines, crops, pastes)."""
    z = np.load(FACE / "retinaface_align_paste.npz")
    return {k: z[k] for k in z.files}


def retinaface_golden(tag: str) -> dict:
    """retinaface_{tag}.npz (tag: resnet50 or mobile0.25): RetinaFace heads and detections."""
    z = np.load(FACE / f"retinaface_{tag}.npz")
    return {k: z[k] for k in z.files}


def parsenet_golden() -> dict:
    """parsenet.npz: ParseNet outputs on the golden crop."""
    z = np.load(FACE / "parsenet.npz")
    return {k: z[k] for k in z.files}


def make_video(path: Path, frames: list, fps: int = 12, audio: bool = True, sample_rate: int = 16000,
               codec: str = "libx264", times: list = None, options: dict = None) -> None:
    """Encode RGB uint8 frames (+ a 440 Hz sine AAC track) with PyAV. ``times``: each frame's
    time in seconds (a variable frame rate; default i / fps); ``options``: the container's."""
    import av
    h, w = frames[0].shape[:2]
    tb = Fraction(1, 1000) if times is not None else Fraction(1, fps)
    pts = [round(t / tb) for t in times] if times is not None else list(range(len(frames)))
    with av.open(str(path), "w", options=options or {}) as c:
        v = c.add_stream(codec, rate=fps)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        v.codec_context.time_base = tb
        a = None
        if audio:
            a = c.add_stream("aac", rate=sample_rate)
            a.layout = "mono"
        for i, arr in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            f.pts, f.time_base = pts[i], tb
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        if a is not None:
            total = int(sample_rate * (float(pts[-1] * tb) + 1 / fps))
            t = np.arange(total) / sample_rate
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for s0 in range(0, total, 1024):
                af = av.AudioFrame.from_ndarray(samples[None, s0:s0 + 1024], format="flt", layout="mono")
                af.sample_rate, af.pts, af.time_base = sample_rate, s0, Fraction(1, sample_rate)
                for p in a.encode(af):
                    c.mux(p)
            for p in a.encode(None):
                c.mux(p)


def video_facts(path: Path) -> dict:
    """Decoded frame count, size, rate and the audio track's codec / packets / duration."""
    import av
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        out = {"width": v.codec_context.width, "height": v.codec_context.height,
               "fps": v.average_rate, "audio": None}
        if c.streams.audio:
            a = c.streams.audio[0]
            out["audio"] = {"codec": a.codec_context.name, "rate": a.codec_context.sample_rate}
        frames = list(c.decode(video=0))
        out["frames"] = len(frames)
        out["pixels"] = [f.to_ndarray(format="rgb24") for f in frames]
    if out["audio"]:
        with av.open(str(path)) as c:
            a = c.streams.audio[0]
            pk = [p for p in c.demux(a) if p.size]
            out["audio"]["packets"] = len(pk)
            out["audio"]["bytes"] = b"".join(bytes(p) for p in pk)
    return out


@contextlib.contextmanager
def serve(handler, **attrs):
    """Run ``handler`` on a free port; ``srv.base`` is its URL. Extra attributes go on the server."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    for name, value in attrs.items():
        setattr(srv, name, value)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (the 'offline' case)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def closed_port_url(name: str) -> str:
    return f"http://127.0.0.1:{closed_port()}/{name}"


def prompt_node(object_info: dict, node_type: str, **inputs) -> dict:
    """An API-prompt node with every required widget at its default (from ``object_info``, the
    server's /object_info or the nodes' GET_NODE_INFO_V1), ``inputs`` on top."""
    values = {}
    for name, spec in object_info[node_type]["input"].get("required", {}).items():
        opts = spec[1] if len(spec) > 1 else {}
        if "default" in opts:
            values[name] = opts["default"]
        elif isinstance(spec[0], list) and spec[0]:
            values[name] = spec[0][0]
    return {"class_type": node_type, "inputs": {**values, **inputs}}


def empty_outputs_prompt(object_info: dict, image: str = "astronaut.png") -> tuple:
    """Issue 14's graph (API format, a test's own, never in workflows/): the detector finds nothing
    (threshold 1.0), then restore -> crops out -> crops in -> paste, and the all-in-one node; every
    IMAGE output that can be empty goes into Preview Image and Save Image, every MASK through Mask To
    Image into Preview Image. Returns (prompt, {output: the preview / save node ids})."""
    node = lambda t, **kw: prompt_node(object_info, t, **kw)  # noqa: E731
    p = {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": node("CodeFormerFaceDetectorLoader", detector_model="detection_mobilenet0.25_Final.pth",
                  parsing_model="parsing_parsenet.pth"),
        "3": node("CodeFormerModelLoader", model_name="codeformer.pth"),
        "4": node("CodeFormerDetectFaces", image=["1", 0], face_detector=["2", 0], threshold=1.0),
        "5": node("CodeFormerRestoreFaces", model=["3", 0], faces=["4", 0]),
        "6": node("CodeFormerCropsToImage", faces=["5", 0]),
        "7": node("CodeFormerImageToCrops", faces=["5", 0], crops=["6", 0]),
        "8": node("CodeFormerPasteFaces", image=["1", 0], faces=["7", 0]),
        "9": node("CodeFormerRestoreFacesAllInOne", image=["1", 0], model=["3", 0], face_detector=["2", 0],
                  threshold=1.0),
    }
    images = {"detect crops": ["4", 1], "restore crops": ["5", 1], "crops to image": ["6", 0],
              "paste image": ["8", 0], "all-in-one image": ["9", 0]}
    masks = {"detect mask": ["4", 2], "paste mask": ["8", 1], "all-in-one mask": ["9", 1]}
    previews = {}
    for i, (what, link) in enumerate(images.items()):
        p[f"p{i}"] = {"class_type": "PreviewImage", "inputs": {"images": link}}
        p[f"s{i}"] = {"class_type": "SaveImage", "inputs": {"images": link, "filename_prefix": f"empty_{i}"}}
        previews[what] = (f"p{i}", f"s{i}")
    for i, (what, link) in enumerate(masks.items()):
        p[f"m{i}"] = {"class_type": "MaskToImage", "inputs": {"mask": link}}
        p[f"mp{i}"] = {"class_type": "PreviewImage", "inputs": {"images": [f"m{i}", 0]}}
        previews[what] = (f"mp{i}",)
    return p, previews


# -- small ONNX face-restoration files (tests/test_onnx_face.py, the pipeline / CLI / node tests) ----
def _copy_convs():
    """Two convolutions that together copy the image: 3x3 with the centre tap, then 1x1 identity."""
    from onnx import helper, numpy_helper
    k3 = np.zeros((3, 3, 3, 3), np.float32)
    k1 = np.zeros((3, 3, 1, 1), np.float32)
    for c in range(3):
        k3[c, c, 1, 1] = 1.0
        k1[c, c, 0, 0] = 1.0
    inits = [numpy_helper.from_array(k3, "conv1.weight"),
             numpy_helper.from_array(np.zeros(3, np.float32), "conv1.bias"),
             numpy_helper.from_array(k1, "conv2.weight")]
    nodes = [helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "conv2.weight"], ["b"])]
    return nodes, inits


def face_model_proto(size: int, fidelity=None, fid_type=None, fid_shape=("B",), batch="B",
                     out_size=None, in_shape=None, extra_input=None):
    """A face-restorer-shaped ONNX model (needs ``onnx``): two convolutions that copy the image, then
    ``y = x * (2w - 1)`` with a fidelity input (``fidelity`` its name, ``fid_type`` its
    TensorProto type, float by default) or ``y = -x`` without; ``batch`` an int (fixed) or a name
    (dynamic). The other keyword arguments make the signatures of the refusal tests."""
    from onnx import TensorProto, helper, numpy_helper
    fid_type = TensorProto.FLOAT if fid_type is None else fid_type
    nodes, inits = _copy_convs()
    shape = in_shape or [batch, 3, size, size]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)]
    o = out_size or size
    if fidelity is None:
        nodes.append(helper.make_node("Neg", ["b"], ["output"]))
    else:
        inputs.append(helper.make_tensor_value_info(fidelity, fid_type, list(fid_shape)))
        inits += [numpy_helper.from_array(np.array([2.0], np.float32), "two"),
                  numpy_helper.from_array(np.array([1.0], np.float32), "one"),
                  numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), "shape4")]
        nodes += [helper.make_node("Cast", [fidelity], ["wf"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["wf", "two"], ["w2"]),
                  helper.make_node("Sub", ["w2", "one"], ["k"]),
                  helper.make_node("Reshape", ["k", "shape4"], ["k4"]),
                  helper.make_node("Mul", ["b", "k4"], ["output"])]
    if extra_input:
        inputs.append(helper.make_tensor_value_info(extra_input, TensorProto.FLOAT, [1, 3, size, size]))
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 3, o, o])]
    graph = helper.make_graph(nodes, "face", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test")
    model.ir_version = 8
    return model


def write_onnx(proto, path):
    path.write_bytes(proto.SerializeToString())
    return path


FACE_POINTS = torch.tensor([[-20.0, -15.0], [20.0, -15.0], [0.0, 5.0], [-16.0, 25.0], [16.0, 25.0]])


def detections_at(rows, num_frames):
    """Detections from (frame, centre x, centre y) rows: a 5-point face and a 100-px box each, in
    640x480 frames (for tracking and temporal-code tests)."""
    from codeformer_core.faces.detect import Detections
    centres = torch.tensor([[x, y] for _, x, y in rows], dtype=torch.float32)
    return Detections(boxes=torch.cat([centres - 50, centres + 50], 1), scores=torch.ones(len(rows)),
                      landmarks=centres[:, None] + FACE_POINTS, frame_index=torch.tensor([f for f, _, _ in rows]),
                      num_frames=num_frames, frame_size=(480, 640))
