"""Example workflows: node types known and widget values valid; and, run by ComfyUI's own validation
and executor in this process (converted to API format as the front end does), the modular and all-in-one
graphs give the same image, moving the w slider re-runs only the restore step and what follows, and
bad values are refused before a run."""
from __future__ import annotations

import asyncio
import copy
import json
import os
import uuid
from pathlib import Path

import pytest

from helpers import NODE_IDS, load_comfy_extras

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
CORE = json.loads((ROOT / "tests" / "data" / "object_info_core.json").read_text())
VIRTUAL = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


ONNX_GRAPH_FILE = "GPEN-BFR-512.onnx"   # the file restore_faces_onnx.json loads (written here, as a user would)
try:   # imported now: once ComfyUI has loaded the pack, the pack folder's parent is on sys.path (and may hold
    import onnx  # noqa: F401   another folder named onnx)
except ImportError:
    onnx = None


@pytest.fixture(scope="module")
def infos(comfyui):
    """/object_info as the server gives it: core entries stored from ComfyUI 0.3.64, ours from the
    loaded V3 classes (ComfyUI's GET_NODE_INFO_V1), with the ONNX graph's file in facerestore_models."""
    if onnx is not None:
        from helpers import face_model_proto, write_onnx
        path = comfyui.base / "models" / "facerestore_models" / ONNX_GRAPH_FILE
        if not path.exists():
            write_onnx(face_model_proto(512), path)
    return {**CORE, **{k: comfyui.N[k].GET_NODE_INFO_V1() for k in NODE_IDS}}


def widget_slots(info):
    """[(name, spec, extra)] in widgets_values order; extra = the front end's unnamed slots
    after a widget (seed 'control_after_generate', the upload button of media loaders)."""
    slots = []
    for section in ("required", "optional"):
        specs = info["input"].get(section, {})
        for name in info.get("input_order", {}).get(section, specs):
            spec = specs[name]
            t = "COMBO" if isinstance(spec[0], list) else spec[0]
            opts = spec[1] if len(spec) > 1 else {}
            if t not in WIDGETS or opts.get("forceInput"):
                continue
            extra = 0
            if t == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
                extra = 1
            if t == "COMBO" and (opts.get("image_upload") or opts.get("video_upload")):
                extra = 1
            slots.append((name, spec, extra))
    return slots


def combo_options(spec):
    return spec[0] if isinstance(spec[0], list) else spec[1].get("options", [])


def check_value(node, name, spec, v):
    t = "COMBO" if isinstance(spec[0], list) else spec[0]
    opts = spec[1] if len(spec) > 1 else {}
    where = f"node {node['id']} ({node['type']}).{name} = {v!r}"
    if t == "INT":
        assert isinstance(v, int) and not isinstance(v, bool), where
    elif t == "FLOAT":
        assert isinstance(v, (int, float)) and not isinstance(v, bool), where
    elif t == "BOOLEAN":
        assert isinstance(v, bool), where
    elif t == "STRING":
        assert isinstance(v, str), where
    if t in ("INT", "FLOAT"):
        assert opts.get("min", v) <= v <= opts.get("max", v), f"{where} outside [{opts.get('min')}, {opts.get('max')}]"
    if t == "COMBO":
        options = combo_options(spec)
        if options:   # file lists are empty in the stored core object_info
            assert v in options, f"{where} not in {options}"
        else:
            assert isinstance(v, str) and v, where


def widget_values(node, info):
    values = list(node.get("widgets_values") or [])
    slots = widget_slots(info)
    assert len(values) == len(slots) + sum(e for *_, e in slots), \
        f"node {node['id']} ({node['type']}): {len(values)} widget values for {[s[0] for s in slots]}"
    out, i = {}, 0
    for name, _spec, extra in slots:
        out[name] = values[i]
        i += 1 + extra
    return out


def to_api(workflow, infos):
    """UI format -> API format, the way the front end's graphToPrompt does for plain graphs."""
    links = {lk[0]: lk for lk in workflow["links"]}
    api = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL or node.get("mode", 0) in (2, 4):
            continue
        inputs = widget_values(node, infos[node["type"]])
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                lk = links[slot["link"]]
                inputs[slot["name"]] = [str(lk[1]), lk[2]]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_is_valid(path, infos):
    wf = json.loads(path.read_text())
    assert wf["version"] == 0.4 and isinstance(wf["links"], list)
    assert wf["last_node_id"] >= max(n["id"] for n in wf["nodes"])
    assert wf["last_link_id"] >= max(lk[0] for lk in wf["links"])
    ours = 0
    nodes = {n["id"]: n for n in wf["nodes"]}
    for node in wf["nodes"]:
        if node["type"] in VIRTUAL:
            continue
        assert node["type"] in infos, f"unknown node type {node['type']}"
        ours += node["type"] in NODE_IDS
        info = infos[node["type"]]
        for name, value in widget_values(node, info).items():
            spec = info["input"].get("required", {}).get(name) or info["input"]["optional"][name]
            check_value(node, name, spec, value)
        all_inputs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for slot in node.get("inputs", []):
            assert slot["name"] in all_inputs, f"{node['type']} has no input {slot['name']}"
            if slot.get("link") is None:
                assert slot["name"] not in info["input"].get("required", {}) or slot.get("widget"), \
                    f"required input {node['type']}.{slot['name']} is not connected"
        for i, out in enumerate(node.get("outputs", [])):
            assert out["type"] == info["output"][i], f"{node['type']} output {i} type"
    for lid, src, sslot, dst, dslot, t in wf["links"]:
        assert nodes[src]["outputs"][sslot]["type"] == t
        assert nodes[dst]["inputs"][dslot]["link"] == lid and lid in (nodes[src]["outputs"][sslot]["links"] or [])
        assert nodes[dst]["inputs"][dslot]["type"] in (t, "*")
    assert ours, "an example workflow uses at least one node of the pack"


def test_expected_workflows_exist():
    names = {p.stem for p in WORKFLOWS}
    assert {"restore_faces_simple", "restore_faces_modular", "colorize_old_photo", "inpaint_masked_face",
            "txt2img_fix_faces", "restore_then_upscale", "restore_video_frames", "restore_faces_onnx"} <= names


# -- run by ComfyUI's own validation and executor -------------------------------------------------------
class MessageSink:
    """What ComfyUI's executor needs of its PromptServer: a client id and ``send_sync``. The real server
    is an aiohttp web app that cannot run inside a test process (the real-server test does that); this
    only records the messages it would send to the browser."""

    def __init__(self):
        self.client_id, self.last_node_id, self.messages = None, None, []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))


class Comfy:
    """Validates and executes API prompts as the server's prompt worker does, keeping ComfyUI's
    output cache between prompts."""

    def __init__(self, comfyui):
        self.execution, self.sink = comfyui.execution, MessageSink()
        self.executor = comfyui.execution.PromptExecutor(self.sink)

    def validate(self, prompt):
        return asyncio.run(self.execution.validate_prompt(str(uuid.uuid4()), prompt, None))

    def run(self, prompt, expect_error=False):
        """(executed node ids in order, node ids served from the cache); with ``expect_error`` the one
        execution error ComfyUI reports instead."""
        prompt = copy.deepcopy(prompt)   # a fresh prompt, as the server parses each request (ComfyUI writes into it)
        valid, error, outputs, node_errors = self.validate(prompt)
        assert valid, (error, node_errors)
        self.sink.messages.clear()
        self.executor.execute(prompt, str(uuid.uuid4()), {"client_id": "tests"}, outputs)
        errors = [d for e, d in self.sink.messages if e == "execution_error"]
        if expect_error:
            assert not self.executor.success and len(errors) == 1
            return errors[0]
        assert self.executor.success and not errors, errors
        executed = [d["node"] for e, d in self.sink.messages if e == "executing" and d["node"] is not None]
        cached = next(d["nodes"] for e, d in self.sink.messages if e == "execution_cached")
        return executed, set(cached)

    def output(self, node_id, index=0):
        return self.executor.caches.outputs.get(node_id)[index][0]


def _load(name):
    return json.loads((ROOT / "workflows" / f"{name}.json").read_text())


SYNTHETIC_THRESHOLD = 0.7   # the synthetic detector weights score a real face at most ~0.77


def api_prompt(name, infos):
    """A workflow as the API prompt the front end sends; for the synthetic detector weights its
    threshold is lowered, and only the largest face is taken (at 0.7 they also score a few
    non-faces, and each face is a CodeFormer forward of seconds on a CPU)."""
    api = to_api(_load(name), infos)
    for node in api.values():
        if node["class_type"] in ("CodeFormerDetectFaces", "CodeFormerRestoreFacesAllInOne"):
            node["inputs"].update(threshold=SYNTHETIC_THRESHOLD, selection="largest")
    return api


def node_of(api, class_type):
    return next(k for k, v in api.items() if v["class_type"] == class_type)


def downstream(api, start):
    """``start`` and every node that depends on it, from the prompt's links."""
    out, grew = {start}, True
    while grew:
        grew = False
        for k, v in api.items():
            if k not in out and any(isinstance(x, list) and x[0] in out for x in v["inputs"].values()):
                out.add(k)
                grew = True
    return out


@pytest.fixture(scope="module")
def comfy_extras(comfyui):
    """ComfyUI's MaskToImage (comfy_extras/nodes_mask.py), which the modular graph previews the mask with."""
    assert load_comfy_extras(comfyui, "nodes_mask.py")


@pytest.fixture(scope="module")
def runs(comfyui, infos, comfy_extras):
    """The modular graph; a broken variant of it; the same with another w; the same with the weight file
    touched; then the all-in-one graph, in one ComfyUI executor (its cache carries over, as in the server)."""
    comfy = Comfy(comfyui)
    modular, simple = api_prompt("restore_faces_modular", infos), api_prompt("restore_faces_simple", infos)
    out = {"modular": modular, "simple": simple, "comfy": comfy}
    out["first"] = comfy.run(modular)
    out["modular_image"] = comfy.output(node_of(modular, "CodeFormerPasteFaces"))
    broken = copy.deepcopy(modular)   # two images in, faces of one: the paste node refuses
    broken["90"] = {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["1", 0]}}
    broken[node_of(broken, "CodeFormerPasteFaces")]["inputs"]["image"] = ["90", 0]
    out["broken"] = comfy.run(broken, expect_error=True)
    slider = copy.deepcopy(modular)
    slider[node_of(slider, "CodeFormerRestoreFaces")]["inputs"]["w"] = 0.8
    out["slider"] = comfy.run(slider)
    weight = comfyui.base / "models" / "facerestore_models" / "codeformer.pth"
    st = weight.stat()
    os.utime(weight, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))   # the file changed on disk
    out["touched"] = comfy.run(slider)
    out["simple_run"] = comfy.run(simple)
    out["simple_result"] = [comfy.output(node_of(simple, "CodeFormerRestoreFacesAllInOne"), i) for i in range(3)]
    return out


def test_modular_and_all_in_one_agree(runs, astronaut_image):
    modular, simple = runs["modular"], runs["simple"]
    det = modular[node_of(modular, "CodeFormerDetectFaces")]["inputs"]
    aio = simple[node_of(simple, "CodeFormerRestoreFacesAllInOne")]["inputs"]
    res = modular[node_of(modular, "CodeFormerRestoreFaces")]["inputs"]
    paste = modular[node_of(modular, "CodeFormerPasteFaces")]["inputs"]
    # The two example graphs are meant to be the same settings.
    assert (det["threshold"], det["selection"], res["w"], paste["visibility"]) == \
        (aio["threshold"], aio["selection"], aio["w"], aio["visibility"])
    order = [modular[k]["class_type"] for k in runs["first"][0]]
    assert order.index("CodeFormerDetectFaces") < order.index("CodeFormerRestoreFaces") < \
        order.index("CodeFormerPasteFaces")
    a, (b, _, face_count) = runs["modular_image"], runs["simple_result"]
    assert face_count == 1
    assert a.shape == b.shape == (1, 256, 256, 3)
    assert (a - b).abs().max() < 1e-4
    assert (a - astronaut_image).abs().max() > 1e-3    # the face really changed


def test_a_node_error_is_reported_and_the_next_prompt_runs(runs):
    error = runs["broken"]
    assert error["node_type"] == "CodeFormerPasteFaces"
    assert "connect the same image" in error["exception_message"] and error["exception_type"].endswith("InputError")
    assert runs["slider"][0]     # the executor went on with the next prompt


def test_moving_w_reruns_only_the_restore_step(runs):
    modular = runs["modular"]
    restore = node_of(modular, "CodeFormerRestoreFaces")
    executed, cached = runs["slider"]
    assert set(executed) == downstream(modular, restore)
    for kind in ("LoadImage", "CodeFormerModelLoader", "CodeFormerFaceDetectorLoader", "CodeFormerDetectFaces"):
        assert node_of(modular, kind) in cached, kind


def test_changed_weight_file_is_reloaded(runs):
    modular = runs["modular"]
    loader = node_of(modular, "CodeFormerModelLoader")
    executed, cached = runs["touched"]
    assert set(executed) == downstream(modular, loader)       # detection is still cached
    assert node_of(modular, "CodeFormerDetectFaces") in cached


def test_all_in_one_reuses_the_loaded_models(runs):
    simple = runs["simple"]
    executed, cached = runs["simple_run"]
    assert node_of(simple, "CodeFormerRestoreFacesAllInOne") in executed
    for loader in ("CodeFormerModelLoader", "CodeFormerFaceDetectorLoader"):
        assert node_of(simple, loader) in cached, loader


@pytest.mark.parametrize("node_type,name,value,message", [
    ("CodeFormerRestoreFaces", "w", 1.5, "bigger than max"),
    ("CodeFormerDetectFaces", "threshold", 0.0, "smaller than min"),
    ("CodeFormerDetectFaces", "selection", "biggest", "selection 'biggest' is not one of all, largest"),
    ("CodeFormerModelLoader", "model_name", "codeformer_v9.pth",
     "not in models/facerestore_models or models/codeformer"),
    ("CodeFormerModelLoader", "dtype", "fp8", "dtype 'fp8' is not one of auto, fp32"),
    ("CodeFormerFaceDetectorLoader", "parsing_model", "parsing_bisenet.pth", "is not an official file"),
])
def test_comfyui_refuses_bad_values_before_a_run(comfyui, infos, comfy_extras, node_type, name, value,
                                                  message):
    prompt = api_prompt("restore_faces_modular", infos)
    node = node_of(prompt, node_type)
    prompt[node]["inputs"][name] = value
    _, _, runnable, node_errors = Comfy(comfyui).validate(prompt)
    assert list(node_errors) == [node]
    assert node_of(prompt, "SaveImage") not in runnable     # the result would not be made
    text = json.dumps(node_errors[node]["errors"])
    assert message in text and name in text
