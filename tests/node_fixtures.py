"""Fixtures of the node tests: the real ComfyUI 0.3.64 in this process, headless, with the pack
loaded by ComfyUI's own loader, and a ComfyUI base folder whose models/ has synthetic weights.

``.ci/setup`` unpacks ComfyUI into ``.comfyui/ComfyUI-0.3.64`` (or set ``COMFYUI_DIR``). It is imported
as ``main.py --cpu --base-directory <tmp>`` would set it up: ``comfy.cli_args`` parses no argv
unless ``comfy.options.enable_args_parsing()`` was called, so the flags are set on its ``args``
before ``folder_paths`` and ``comfy.model_management`` read them. The weight files are written once
per session (a CodeFormer file is about 360 MB).
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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
    from codeformer_core.dev.synthetic import synth_state_dict
    items = json.loads((FACE / manifest).read_text())
    save_weights(synth_state_dict(items, face=True), folder / file, nest=False)
    return folder / file


@pytest.fixture(scope="session")
def comfy_base(tmp_path_factory) -> Path:
    """A ComfyUI base folder: models/ with codeformer.pth (restoration), the ResNet-50 detector and
    ParseNet; input/ with the test images; output/."""
    from codeformer_core.dev.synthetic import synth_state_dict
    from codeformer_core.models.codeformer import expected_shapes
    base = tmp_path_factory.mktemp("comfy_base")
    models = base / "models"
    save_weights(synth_state_dict(expected_shapes("restoration").items()),
                 models / "facerestore_models" / "codeformer.pth", nest=True)
    write_face_net("detection_Resnet50_Final.pth", "retinaface_manifest_resnet50.json", models / "facedetection")
    write_face_net("parsing_parsenet.pth", "parsenet_manifest_parsenet.json", models / "facedetection")
    (models / "upscale_models").mkdir()
    (base / "input").mkdir()
    for name in ("astronaut.png", "astronaut_masked.png", "old_photo.png"):
        shutil.copy(DATA / name, base / "input" / name)
    return base


@pytest.fixture(scope="session")
def comfyui(comfy_base):
    """ComfyUI's own modules, imported headless on the CPU, with the pack loaded by
    ``nodes.load_custom_node`` exactly as the server loads a folder in custom_nodes/."""
    if not (COMFYUI_DIR / "comfy_api" / "latest").is_dir():
        pytest.fail(f"ComfyUI source not found at {COMFYUI_DIR}: run .ci/setup (it unpacks ComfyUI 0.3.64 "
                    f"there) or point COMFYUI_DIR at a ComfyUI checkout")
    shadow = sys.modules.get("nodes")
    if shadow is not None and not str(getattr(shadow, "__file__", "")).startswith(str(COMFYUI_DIR)):
        pytest.fail(f"'nodes' is already imported from {shadow.__file__}; the pack's nodes/ must not be "
                    f"imported as a top-level package (it is loaded as part of the pack)")
    if str(COMFYUI_DIR) not in sys.path:
        sys.path.insert(0, str(COMFYUI_DIR))
    from comfy.cli_args import args
    args.cpu, args.base_directory = True, str(comfy_base)
    import comfy.model_management
    import comfy.utils
    import execution
    import folder_paths
    import nodes
    assert folder_paths.models_dir == str(comfy_base / "models"), "folder_paths was imported before the fixture"
    start = time.perf_counter()
    assert asyncio.run(nodes.load_custom_node(str(ROOT))), "ComfyUI could not load the pack (see the log above)"
    load_seconds = time.perf_counter() - start
    pack = sys.modules[str(ROOT).replace(".", "_x_")]
    return types.SimpleNamespace(nodes=nodes, execution=execution, folder_paths=folder_paths,
                                 mm=comfy.model_management, utils=comfy.utils, pack=pack, base=comfy_base,
                                 load_seconds=load_seconds,
                                 N={k: nodes.NODE_CLASS_MAPPINGS[k] for k in NODE_IDS if k in nodes.NODE_CLASS_MAPPINGS})


def run_node(cls, **inputs) -> tuple:
    """One node run through its V3 entry point as ComfyUI's executor calls it (a per-run class clone,
    ``EXECUTE_NORMALIZED``); the outputs as a tuple."""
    return tuple(cls.PREPARE_CLASS_CLONE({}).EXECUTE_NORMALIZED(**inputs).args)


def load_comfy_extras(comfyui, extras_file: str) -> bool:
    """Loads one of ComfyUI's own comfy_extras node files (e.g. nodes_upscale_model.py), as ComfyUI
    does at start."""
    path = os.path.join(os.path.dirname(comfyui.nodes.__file__), "comfy_extras", extras_file)
    return asyncio.run(comfyui.nodes.load_custom_node(path, module_parent="comfy_extras"))


@pytest.fixture
def progress(comfyui):
    """Records ComfyUI progress-bar updates [(value, total)] through ComfyUI's global hook (the
    server installs one to show the bar)."""
    events = []
    comfyui.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None:
                                               events.append((value, total)))
    yield events
    comfyui.utils.set_progress_bar_global_hook(None)


@pytest.fixture(scope="session")
def astronaut_image() -> torch.Tensor:
    """tests/data/astronaut.png as a ComfyUI IMAGE [1,256,256,3] (what LoadImage gives)."""
    rgb = np.asarray(Image.open(DATA / "astronaut.png").convert("RGB")).astype(np.float32) / 255
    return torch.from_numpy(rgb)[None]
