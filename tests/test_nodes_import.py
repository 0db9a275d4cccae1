"""The pack's ComfyUI entry: fast, safe import, and complete node metadata."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from nodes._common import CATEGORY

ROOT = Path(__file__).resolve().parents[1]

IMPORT_AS_COMFYUI = r"""
import importlib.util, json, os, sys, time, types
root, with_folder_paths = sys.argv[1], sys.argv[2] == "1"
registered = {}
if with_folder_paths:
    fp = types.ModuleType("folder_paths")
    fp.models_dir = "/nonexistent/models"
    fp.add_model_folder_path = lambda name, path, is_default=False: registered.setdefault(name, path)
    sys.modules["folder_paths"] = fp
t = time.perf_counter()
# As ComfyUI's load_custom_node does: a module named after the path, loaded from __init__.py.
name = root.replace(".", "_x_")
spec = importlib.util.spec_from_file_location(name, os.path.join(root, "__init__.py"),
                                              submodule_search_locations=[root])
mod = importlib.util.module_from_spec(spec)
sys.modules[name] = mod
spec.loader.exec_module(mod)
print(json.dumps({"seconds": time.perf_counter() - t, "nodes": sorted(mod.NODE_CLASS_MAPPINGS),
                  "torch": "torch" in sys.modules, "registered": registered}))
"""


@pytest.mark.parametrize("with_folder_paths", [True, False], ids=["comfyui", "no-comfyui"])
def test_root_import_is_fast_and_safe(with_folder_paths):
    out = subprocess.run([sys.executable, "-c", IMPORT_AS_COMFYUI, str(ROOT), "1" if with_folder_paths else "0"],
                         capture_output=True, text=True, cwd="/", timeout=60)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["nodes"] == sorted(NODE_CLASS_MAPPINGS)
    assert not info["torch"], "importing the pack must not import torch"
    assert info["seconds"] < 1.0
    if with_folder_paths:
        assert info["registered"] == {"facerestore_models": "/nonexistent/models/facerestore_models",
                                      "codeformer": "/nonexistent/models/codeformer",
                                      "facedetection": "/nonexistent/models/facedetection"}


def test_root_init_as_plain_module_does_not_crash():
    code = ("import importlib.util; s = importlib.util.spec_from_file_location('x', %r); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); print(m.NODE_CLASS_MAPPINGS)"
            % str(ROOT / "__init__.py"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "{}", out.stderr


def test_node_ids_are_stable():
    assert sorted(NODE_CLASS_MAPPINGS) == sorted([
        "CodeFormerModelLoader", "CodeFormerFaceDetectorLoader", "CodeFormerDetectFaces",
        "CodeFormerRestoreFaces", "CodeFormerColorizeFaces", "CodeFormerInpaintFaces", "CodeFormerPasteFaces",
        "CodeFormerCropsToImage", "CodeFormerImageToCrops", "CodeFormerRestoreFacesAllInOne"])
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)


@pytest.mark.parametrize("node_id", sorted(NODE_CLASS_MAPPINGS))
def test_node_metadata(node_id, comfy):
    cls = NODE_CLASS_MAPPINGS[node_id]
    assert cls.CATEGORY == CATEGORY and cls.DESCRIPTION and callable(getattr(cls, cls.FUNCTION))
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, s in spec.get(section, {}).items():
            assert len(s) > 1 and s[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
            if isinstance(s[0], list):
                assert s[0], f"{node_id}.{name}: empty combo"
                assert s[1].get("default", s[0][0]) in s[0]
            elif s[0] in ("INT", "FLOAT"):
                assert s[1]["min"] <= s[1]["default"] <= s[1]["max"]
    assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
    assert all(cls.OUTPUT_TOOLTIPS)


def test_option_lists_match_the_core():
    from codeformer_core import pipeline
    from codeformer_core.faces import detect as detection
    from nodes import _common
    assert _common.SELECTIONS == detection.SELECTIONS and _common.SORT_KEYS == detection.SORT_KEYS
    display = dict(NODE_DISPLAY_NAME_MAPPINGS)
    for node in pipeline.TASK_NODE.values():     # the wrong-variant error names these nodes
        assert node in display.values()


def test_w_tooltip_says_which_way():
    tip = NODE_CLASS_MAPPINGS["CodeFormerRestoreFaces"].INPUT_TYPES()["required"]["w"][1]
    assert tip["default"] == 0.5 and tip["min"] == 0 and tip["max"] == 1
    assert "0 = strongest restoration" in tip["tooltip"] and "1 = closest to the input" in tip["tooltip"]
