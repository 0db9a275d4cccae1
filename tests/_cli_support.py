"""Shared by test_cli.py and test_video.py: a models folder with synthetic weights (written once
per session, official file names in the ComfyUI layout), tiny test media, a load cache.

Why a cache: each ``cli.main`` call would otherwise re-read a 376 MB checkpoint; the tests are
about the command line, and loading itself is covered by the core tests.
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from codeformer_core.dev.synthetic import synth_state_dict

FACE_DATA = Path(__file__).parent / "data" / "face_golden"
DETECTOR_ARGS = ["--detector", "retinaface_mobilenet0.25", "--no-download", "-q"]
NO_FACES = ["--detection-threshold", "1.0"]  # scores never exceed 1: detection runs, finds nothing

_models_dir = None
_load_cache: dict = {}


def models_dir(tmp_path_factory) -> Path:
    """codeformer.pth ({'params_ema': sd}) and the MobileNet detector (bare state dict)."""
    global _models_dir
    if _models_dir is None:
        from codeformer_core.models.codeformer import expected_shapes
        root = tmp_path_factory.mktemp("models")
        (root / "facerestore_models").mkdir()
        (root / "facedetection").mkdir()
        torch.save({"params_ema": synth_state_dict(expected_shapes("restoration").items())},
                   root / "facerestore_models" / "codeformer.pth")
        manifest = json.loads((FACE_DATA / "retinaface_manifest_mobile0.25.json").read_text())
        torch.save(synth_state_dict(manifest, face=True), root / "facedetection" / "detection_mobilenet0.25_Final.pth")
        _models_dir = root
    return _models_dir


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
    import cv2
    from skimage import data
    img = data.astronaut()
    return img if size is None else cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def aligned_face(size: int = 128) -> np.ndarray:
    """The astronaut's face region, roughly where an aligned 512 crop has it."""
    import cv2
    return cv2.resize(data_face(), (size, size), interpolation=cv2.INTER_AREA)


def data_face() -> np.ndarray:
    from skimage import data
    return data.astronaut()[10:290, 130:410]


def make_video(path: Path, frames: list, fps: int = 12, audio: bool = True, sample_rate: int = 16000,
               codec: str = "libx264") -> None:
    """Encode RGB uint8 frames (+ a 440 Hz sine AAC track) with PyAV."""
    import av
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        v = c.add_stream(codec, rate=fps)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        a = None
        if audio:
            a = c.add_stream("aac", rate=sample_rate)
            a.layout = "mono"
        for i, arr in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, fps)
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        if a is not None:
            total = int(sample_rate * len(frames) / fps)
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
