"""Fixtures of the node tests: ComfyUI stand-ins and a models folder with synthetic weights.

The weight files are written once per session (a CodeFormer file is about 360 MB) into
tmp_path_factory, in the ComfyUI layout the nodes expect.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

DATA = Path(__file__).parent / "data"
FACE = DATA / "face_golden"


def _save(sd, path: Path, nest: bool):
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
               for k, v in sd.items()}
    torch.save({"params_ema": tensors} if nest else tensors, path)


@pytest.fixture(scope="session")
def comfy_models_dir(tmp_path_factory) -> Path:
    """models/ with codeformer.pth (restoration), the ResNet-50 detector and ParseNet."""
    from codeformer_core.models.codeformer import expected_shapes
    from codeformer_core.dev.synthetic import synth_state_dict
    root = tmp_path_factory.mktemp("comfy_models")
    _save(synth_state_dict(expected_shapes("restoration").items()), root / "facerestore_models" / "codeformer.pth",
          nest=True)
    for file, manifest in (("detection_Resnet50_Final.pth", "retinaface_manifest_resnet50.json"),
                           ("parsing_parsenet.pth", "parsenet_manifest_parsenet.json")):
        items = json.loads((FACE / manifest).read_text())
        _save(synth_state_dict(items, face=True), root / "facedetection" / file, nest=False)
    (root / "upscale_models").mkdir()
    return root


@pytest.fixture
def comfy(monkeypatch, comfy_models_dir):
    """ComfyUI stand-ins in sys.modules for one test, folders registered as the pack does."""
    import comfy_stubs
    from nodes.comfy_bridge import register_folders
    ns = comfy_stubs.install(monkeypatch, comfy_models_dir)
    assert register_folders()
    return ns


@pytest.fixture(scope="session")
def astronaut_image() -> torch.Tensor:
    """tests/data/astronaut.png as a ComfyUI IMAGE [1,256,256,3] (what LoadImage gives)."""
    return load_image(DATA / "astronaut.png")[0]


def load_image(path: Path):
    """(IMAGE [1,H,W,3], MASK [1,H,W]) as ComfyUI's LoadImage makes them (mask = 1 - alpha)."""
    img = Image.open(path)
    rgb = torch.from_numpy(np.asarray(img.convert("RGB")).astype(np.float32) / 255)[None]
    if "A" in img.getbands():
        mask = 1.0 - torch.from_numpy(np.asarray(img.getchannel("A")).astype(np.float32) / 255)[None]
    else:
        mask = torch.zeros(1, 64, 64)
    return rgb, mask
