"""The pack inside the real ComfyUI: loaded through its V3 entry point, a safe root import, and node
metadata that keeps the contract saved workflows rely on."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import NODE_IDS, ROOT

CONTRACT = json.loads((Path(__file__).parent / "data" / "object_info_pack.json").read_text())
CONTRACT.pop("_comment")
FILE_COMBOS = {("CodeFormerModelLoader", "model_name"), ("CodeFormerFaceDetectorLoader", "detector_model"),
               ("CodeFormerFaceDetectorLoader", "parsing_model")}

IMPORT_ROOT = r"""
import importlib.util, json, os, sys
root = sys.argv[1]
before = set(sys.modules)
# As ComfyUI's load_custom_node does: a package named after the path, loaded from __init__.py.
name = root.replace(".", "_x_")
spec = importlib.util.spec_from_file_location(name, os.path.join(root, "__init__.py"))
mod = importlib.util.module_from_spec(spec)
sys.modules[name] = mod
spec.loader.exec_module(mod)
new = {m.split(".")[0] for m in set(sys.modules) - before} - {name}
print(json.dumps({"not_stdlib": sorted(new - set(sys.stdlib_module_names)),
                  "entrypoint": callable(getattr(mod, "comfy_entrypoint", None)),
                  "legacy": hasattr(mod, "NODE_CLASS_MAPPINGS"),
                  "heavy": sorted(m for m in ("torch", "comfy_api", "folder_paths") if m in sys.modules)}))
"""


def test_root_import_imports_nothing_but_the_standard_library():
    """Outside ComfyUI (no comfy_api on the path) the root imports; nothing heavy until ComfyUI calls it
    (what it costs is in the structure, not a wall-clock bound: only standard-library modules load)."""
    out = subprocess.run([sys.executable, "-c", IMPORT_ROOT, str(ROOT)], capture_output=True, text=True,
                         cwd="/", timeout=60)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["entrypoint"] and not info["legacy"]   # V3 only: a NODE_CLASS_MAPPINGS would win over it
    assert info["heavy"] == [] and info["not_stdlib"] == []


RUNTIME_IMPORTS = r"""
import sys
import codeformer_core, codeformer_core.pipeline, codeformer_core.cli, codeformer_core.models.loader
import codeformer_core.faces.detect, codeformer_core.faces.paste, codeformer_core.io.upscale
from codeformer_core.cli import main
main(["restore", "--help"])
print(sorted(m for m in sys.modules if m.startswith("codeformer_core.dev")))
"""


IMPORTS_DEV = re.compile(r"^\s*(from\s+(\.+dev\b|codeformer_core\.dev\b|\.+\s+import\s+dev\b)"
                         r"|import\s+codeformer_core\.dev\b)", re.MULTILINE)


def test_run_time_code_never_imports_dev():
    """codeformer_core/dev/ (benchmarks, golden data) is for tests and tools only."""
    out = subprocess.run([sys.executable, "-c", RUNTIME_IMPORTS], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    hits = [str(p.relative_to(ROOT)) for d in ("codeformer_core", "nodes") for p in (ROOT / d).rglob("*.py")
            if "dev" not in p.relative_to(ROOT).parts
            and IMPORTS_DEV.search(p.read_text())]
    assert hits == [], hits


def test_comfyui_registers_every_node_once(comfyui):
    n = comfyui.nodes
    ours = sorted(k for k, cls in n.NODE_CLASS_MAPPINGS.items()
                  if getattr(cls, "RELATIVE_PYTHON_MODULE", "") == f"custom_nodes.{ROOT.name}")
    assert ours == sorted(NODE_IDS)
    for node_id in NODE_IDS:
        assert n.NODE_DISPLAY_NAME_MAPPINGS[node_id] == CONTRACT[node_id]["display_name"]
    # loading the pack builds no network and reads no weight file (they load when a workflow runs);
    # the time is a bound far above the measured ~0.4 s (CPU), only to catch a gross regression
    assert comfyui.load_built == [] and comfyui.load_read == []
    assert comfyui.load_seconds < 10.0


def test_model_folders_registered(comfyui):
    models = Path(comfyui.folder_paths.models_dir)
    for name in ("facerestore_models", "codeformer", "facedetection"):
        assert str(models / name) in comfyui.folder_paths.get_folder_paths(name)


def test_requires_comfyui_is_read_by_comfyui(comfyui):
    from comfy_config import config_parser
    config = config_parser.extract_node_configuration(str(ROOT))
    assert config.project.supported_comfyui_version == ">=0.3.64"


def spec_options(spec):
    """(type, options) of an object_info input spec: V3 combos are ("COMBO", {"options": [...]})."""
    t, opts = spec[0], dict(spec[1])
    if t == "COMBO" or isinstance(t, list):
        t = opts.pop("options", t)
        opts.pop("multiselect", None)
    return t, opts


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_object_info_keeps_the_v1_contract(node_id, comfyui):
    """What /object_info serves (ComfyUI's GET_NODE_INFO_V1) equals the V1 node layer's description."""
    info, want = comfyui.N[node_id].GET_NODE_INFO_V1(), CONTRACT[node_id]
    for key in ("display_name", "category", "description", "output", "output_name", "output_tooltips",
                "input_order", "output_node"):
        assert info[key] == want[key], key
    assert info["input"].keys() == want["input"].keys()
    for section, specs in want["input"].items():
        for name, (want_type, want_opts) in specs.items():
            got_type, got_opts = spec_options(info["input"][section][name])
            assert got_opts == want_opts, f"{node_id}.{name}"
            if (node_id, name) in FILE_COMBOS:   # files on disk come after the official names
                assert set(want_type) <= set(got_type), f"{node_id}.{name}"
            else:
                assert got_type == want_type, f"{node_id}.{name}"


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_every_socket_has_a_tooltip(node_id, comfyui):
    info = comfyui.N[node_id].GET_NODE_INFO_V1()
    assert info["description"] and info["category"] == "image/face restoration/CodeFormer"
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            t, opts = spec_options(spec)
            assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
            if isinstance(t, list):
                assert t and opts.get("default", t[0]) in t, f"{node_id}.{name}"
            elif t in ("INT", "FLOAT"):
                assert opts["min"] <= opts["default"] <= opts["max"], f"{node_id}.{name}"
    assert len(info["output_tooltips"]) == len(info["output"]) and all(info["output_tooltips"])


def test_w_tooltip_says_which_way(comfyui):
    _, w = spec_options(comfyui.N["CodeFormerRestoreFaces"].GET_NODE_INFO_V1()["input"]["required"]["w"])
    assert w["default"] == 0.5 and w["min"] == 0 and w["max"] == 1
    assert "0 = strongest restoration" in w["tooltip"] and "1 = closest to the input" in w["tooltip"]
