"""Example workflows: node types known, widget values valid, and the modular and all-in-one
graphs, converted to API format, give the same image when executed in-process."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from node_fixtures import load_image
from nodes import NODE_CLASS_MAPPINGS

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
CORE = json.loads((ROOT / "tests" / "data" / "object_info_core.json").read_text())
VIRTUAL = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@pytest.fixture
def infos(comfy):
    """/object_info-style descriptions: core entries from ComfyUI 0.3.64, ours from INPUT_TYPES."""
    out = dict(CORE)
    for name, cls in NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        out[name] = {"input": spec, "input_order": {k: list(v) for k, v in spec.items()},
                     "output": list(cls.RETURN_TYPES), "output_name": list(cls.RETURN_NAMES)}
    return out


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
    for name, spec, extra in slots:
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
        ours += node["type"] in NODE_CLASS_MAPPINGS
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
            "txt2img_fix_faces", "restore_then_upscale", "restore_video_frames"} <= names


# -- in-process execution --------------------------------------------------------------------------
class Executor:
    """Runs an API prompt: our nodes through their FUNCTIONs, a few core nodes as stand-ins.

    Loader outputs are cached by (class, widget inputs), as ComfyUI's output cache does, so two
    graphs run by one executor share the loaded models.
    """

    CACHED = ("CodeFormerModelLoader", "CodeFormerFaceDetectorLoader")

    def __init__(self):
        self.saved, self.cache = {}, {}

    def core(self, class_type, inputs, node_id):
        if class_type == "LoadImage":
            return load_image(ROOT / "tests" / "data" / inputs["image"])
        if class_type in ("SaveImage", "PreviewImage"):
            self.saved[node_id] = inputs["images"]
            return ()
        if class_type == "MaskToImage":
            m = inputs["mask"]
            return (m.reshape(-1, 1, *m.shape[-2:]).movedim(1, -1).expand(-1, -1, -1, 3),)
        raise NotImplementedError(class_type)

    def run(self, api):
        done, order = {}, []
        pending = dict(api)
        while pending:   # topological order
            ready = [k for k, v in pending.items()
                     if all(not isinstance(x, list) or x[0] in done for x in v["inputs"].values())]
            assert ready, "cycle or dangling link"
            for k in sorted(ready, key=int):
                node = pending.pop(k)
                inputs = {n: (done[x[0]][x[1]] if isinstance(x, list) else x) for n, x in node["inputs"].items()}
                cls = NODE_CLASS_MAPPINGS.get(node["class_type"])
                key = (node["class_type"], json.dumps(node["inputs"], sort_keys=True))
                if cls is None:
                    done[k] = self.core(node["class_type"], inputs, k)
                elif node["class_type"] in self.CACHED and key in self.cache:
                    done[k] = self.cache[key]
                else:
                    done[k] = self.cache[key] = getattr(cls(), cls.FUNCTION)(**inputs)
                order.append(node["class_type"])
        return done, order


def _load(name):
    return json.loads((ROOT / "workflows" / f"{name}.json").read_text())


def test_modular_and_all_in_one_agree(infos):
    modular, simple = to_api(_load("restore_faces_modular"), infos), to_api(_load("restore_faces_simple"), infos)
    det = next(v for v in modular.values() if v["class_type"] == "CodeFormerDetectFaces")["inputs"]
    aio = next(v for v in simple.values() if v["class_type"] == "CodeFormerRestoreFacesAllInOne")["inputs"]
    res = next(v for v in modular.values() if v["class_type"] == "CodeFormerRestoreFaces")["inputs"]
    paste = next(v for v in modular.values() if v["class_type"] == "CodeFormerPasteFaces")["inputs"]
    # The two example graphs are meant to be the same settings.
    assert (det["threshold"], det["selection"], res["w"], paste["visibility"]) == \
        (aio["threshold"], aio["selection"], aio["w"], aio["visibility"])
    runs, ex = [], Executor()
    for api in (modular, simple):
        ex.saved.clear()
        done, order = ex.run(api)
        saves = [k for k, v in api.items() if v["class_type"] == "SaveImage"]
        runs.append((ex.saved[saves[0]], done, order))
    (a, done_m, order_m), (b, done_s, _) = runs
    assert order_m.index("CodeFormerDetectFaces") < order_m.index("CodeFormerRestoreFaces") < \
        order_m.index("CodeFormerPasteFaces")
    face_count = next(done_s[k][2] for k, v in simple.items() if v["class_type"] == "CodeFormerRestoreFacesAllInOne")
    assert face_count == 1
    assert a.shape == b.shape == (1, 256, 256, 3)
    assert (a - b).abs().max() < 1e-4
    src = load_image(ROOT / "tests" / "data" / "astronaut.png")[0]
    assert (a - src).abs().max() > 1e-3    # the face really changed
