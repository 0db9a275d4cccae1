"""Fixtures shared by the tests; the helpers they use are in helpers.py."""
from __future__ import annotations

import asyncio
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

import helpers
from helpers import COMFYUI_DIR, DATA, NODE_IDS, ROOT, Golden, cache_model_loading, write_synthetic_models

torch.set_grad_enabled(False)

# In CI (CI=true: GitHub Actions and most CI services set it, .ci/run too) a skipped test is a failure: a missing test
# dependency (pyproject's [test] extra; facenet-pytorch and ray[data] from .ci/setup) must not hide
# tests. Only the tests that need CUDA may skip there.
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
SKIPS_ALLOWED_IN_CI = ("needs CUDA",)


def _skip_reason(report) -> str:
    lr = report.longrepr
    return lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)


def _fail_skip_in_ci(report) -> None:
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        if not any(allowed in reason for allowed in SKIPS_ALLOWED_IN_CI):
            report.outcome = "failed"
            report.longrepr = f"skipped in CI (CI=true), which hides a test: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skip_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_skip_in_ci(outcome.get_result())


@pytest.fixture(scope="session")
def golden():
    cache = {}

    def get(variant):
        if variant not in cache:
            cache[variant] = Golden(variant)
        return cache[variant]
    return get


@pytest.fixture(scope="session")
def synthetic_model(golden):
    """``synthetic_model(variant)``: a CPU float32 model with the golden synthetic weights."""
    from codeformer_core import load_model
    cache = {}

    def get(variant):
        if variant not in cache:
            cache[variant] = load_model({"params_ema": golden(variant).state_dict()}, device="cpu")
        return cache[variant]
    return get


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """The synthetic models folder (helpers.write_synthetic_models), shared by every test that needs
    weight files on disk: the command line's --models and ComfyUI's models/ (hard links)."""
    return write_synthetic_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def comfy_base(tmp_path_factory, models_dir) -> Path:
    """A ComfyUI base folder: models/ is the synthetic models folder (hard links, no second copy);
    input/ holds the test images."""
    base = tmp_path_factory.mktemp("comfy_base")
    shutil.copytree(models_dir, base / "models", copy_function=os.link)
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
    built, loaded = [], []   # what loading the pack does: no network built, no weight file read
    module_init, torch_load = torch.nn.Module.__init__, torch.load

    def counting_init(self, *a, **k):
        built.append(type(self).__qualname__)
        module_init(self, *a, **k)

    def counting_load(*a, **k):
        loaded.append(str(a[0]) if a else "?")
        return torch_load(*a, **k)
    torch.nn.Module.__init__, torch.load = counting_init, counting_load
    start = time.perf_counter()
    try:
        assert asyncio.run(nodes.load_custom_node(str(ROOT))), "ComfyUI could not load the pack (see the log above)"
    finally:
        load_seconds = time.perf_counter() - start
        torch.nn.Module.__init__, torch.load = module_init, torch_load
    pack = sys.modules[str(ROOT).replace(".", "_x_")]
    return types.SimpleNamespace(nodes=nodes, execution=execution, folder_paths=folder_paths,
                                 mm=comfy.model_management, utils=comfy.utils, pack=pack, base=comfy_base,
                                 load_seconds=load_seconds, load_built=built, load_read=loaded,
                                 N={k: nodes.NODE_CLASS_MAPPINGS[k] for k in NODE_IDS
                                    if k in nodes.NODE_CLASS_MAPPINGS})


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
def align_paste_golden() -> dict:
    """Alignment and paste-back golden data (helpers.align_paste_golden). The CodeFormer golden
    cases are the ``golden`` fixture; RetinaFace's and ParseNet's are helpers.retinaface_golden and
    helpers.parsenet_golden."""
    return helpers.align_paste_golden()


@pytest.fixture(scope="session")
def astronaut_rgb() -> np.ndarray:
    """helpers.astronaut(): 512x512x3 uint8 RGB."""
    return helpers.astronaut()


@pytest.fixture(scope="session")
def astronaut_frame() -> torch.Tensor:
    """helpers.astronaut_frame(): the pipeline frame batch [1,3,512,512] float 0..1."""
    return helpers.astronaut_frame()


@pytest.fixture(scope="session")
def astronaut_image() -> torch.Tensor:
    """tests/data/astronaut.png as a ComfyUI IMAGE [1,256,256,3] (what LoadImage gives)."""
    rgb = np.asarray(Image.open(DATA / "astronaut.png").convert("RGB")).astype(np.float32) / 255
    return torch.from_numpy(rgb)[None]


@pytest.fixture(scope="module")
def cached_model_loading():
    """Loaded networks reused across the command-line calls of one test module (each call would
    otherwise re-read a 376 MB checkpoint; loading itself is tested elsewhere)."""
    mp = pytest.MonkeyPatch()
    cache_model_loading(mp)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def N(comfyui):
    """The pack's node classes by node id, as the real ComfyUI registered them (a module may
    override it, e.g. to add ComfyUI's own nodes or files to the models folder)."""
    return comfyui.N


@pytest.fixture(scope="session")
def node_detector(comfyui):
    """Load Face Detector (CodeFormer)'s output: RetinaFace-R50 with ParseNet (synthetic weights)."""
    (bundle,) = helpers.run_node(comfyui.N["CodeFormerFaceDetectorLoader"],
                                 detector_model="detection_Resnet50_Final.pth", parsing_model="parsing_parsenet.pth")
    return bundle
