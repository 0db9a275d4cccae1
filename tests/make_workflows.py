"""Writes the example workflows in workflows/ (UI format, as the ComfyUI front end saves them).

    .venv/bin/python tests/make_workflows.py

The JSON files are the product; this script only keeps them consistent (ids, links, slots).
Settings that matter for the bundled synthetic-weight end-to-end run: threshold 0.7 and one face
per frame keep CPU time low; with the official weights real faces score above 0.95.
"""
from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import comfy_stubs  # noqa: E402

sys.modules.setdefault("folder_paths", comfy_stubs.make_folder_paths("/nonexistent-models"))
from nodes import NODE_CLASS_MAPPINGS  # noqa: E402
from nodes.comfy_bridge import register_folders  # noqa: E402

register_folders()

CORE = json.loads((ROOT / "tests" / "data" / "object_info_core.json").read_text())
SIZES = {"LoadImage": [320, 330], "SaveImage": [340, 360], "PreviewImage": [300, 300],
         "CodeFormerModelLoader": [320, 106], "CodeFormerFaceDetectorLoader": [340, 106]}


def outputs_of(node_type):
    if node_type == "Note":
        return []
    if node_type in CORE:
        info = CORE[node_type]
        return list(zip(info["output_name"], info["output"]))
    cls = NODE_CLASS_MAPPINGS[node_type]
    return list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES))


def inputs_of(node_type):
    """[(name, type, optional, is_widget)] in the front end's order."""
    if node_type == "Note":
        return []
    if node_type in CORE:
        info = CORE[node_type]
        spec, order = info["input"], info.get("input_order", {})
    else:
        spec = NODE_CLASS_MAPPINGS[node_type].INPUT_TYPES()
        order = {k: list(v) for k, v in spec.items()}
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, spec.get(section, {}).keys()):
            s = spec[section][name]
            t = "COMBO" if isinstance(s[0], list) else s[0]
            widget = t in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO") and not (
                len(s) > 1 and s[1].get("forceInput"))
            out.append((name, t, section == "optional", widget))
    return out


class Graph:
    def __init__(self):
        self.nodes, self.links = [], []

    def add(self, node_type, pos, widgets=(), title=None, size=None):
        nid = len(self.nodes) + 1
        node = {"id": nid, "type": node_type, "pos": list(pos), "size": size or SIZES.get(node_type, [320, 200]),
                "flags": {}, "order": nid - 1, "mode": 0, "inputs": [], "outputs": [],
                "properties": {"Node name for S&R": node_type}, "widgets_values": list(widgets)}
        if title:
            node["title"] = title
        for name, t, optional, widget in inputs_of(node_type):
            if not widget:
                slot = {"name": name, "type": t, "link": None}
                if optional:
                    slot["shape"] = 7
                node["inputs"].append(slot)
        for i, (name, t) in enumerate(outputs_of(node_type)):
            node["outputs"].append({"name": name, "type": t, "links": [], "slot_index": i})
        self.nodes.append(node)
        return nid

    def link(self, src, out_name, dst, in_name):
        a, b = self.nodes[src - 1], self.nodes[dst - 1]
        slot = next(i for i, o in enumerate(a["outputs"]) if o["name"] == out_name)
        t = a["outputs"][slot]["type"]
        idx = next((i for i, s in enumerate(b["inputs"]) if s["name"] == in_name), None)
        if idx is None:  # a widget turned into a socket (e.g. CreateVideo fps)
            b["inputs"].append({"name": in_name, "type": t, "widget": {"name": in_name}, "link": None})
            idx = len(b["inputs"]) - 1
        lid = len(self.links) + 1
        b["inputs"][idx]["link"] = lid
        a["outputs"][slot]["links"].append(lid)
        self.links.append([lid, src, slot, dst, idx, t])

    def save(self, name, note=None):
        if note:
            nid = self.add("Note", (0, -200), [note], size=[520, 120])
            self.nodes[nid - 1]["properties"] = {}
        for n in self.nodes:
            for o in n["outputs"]:
                if not o["links"]:
                    o["links"] = None
        data = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"codeformer/{name}")), "revision": 0,
                "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.8, "offset": [60, 260]}, "frontendVersion": "1.27.10"},
                "version": 0.4}
        (ROOT / "workflows" / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")


# Shared settings of the modular and the all-in-one workflows (the tests compare their outputs).
W, VIS, THRESHOLD, SELECTION = 0.5, 1.0, 0.7, "largest"
DETECT = [THRESHOLD, SELECTION, "area", 0, 0, 640, 0.0]   # threshold, selection, sort, index, max, res, smooth
PASTE = [VIS, True, False, 0, 1.0]                         # visibility, parsing, colour match, feather, upscale


def loaders(g, model="codeformer.pth", y=0):
    m = g.add("CodeFormerModelLoader", (0, y), [model, "auto"])
    d = g.add("CodeFormerFaceDetectorLoader", (0, y + 160), ["detection_Resnet50_Final.pth", "parsing_parsenet.pth"])
    return m, d


def all_in_one():
    g = Graph()
    img = g.add("LoadImage", (0, 320), ["astronaut.png", "image"])
    m, d = loaders(g)
    r = g.add("CodeFormerRestoreFacesAllInOne", (400, 80), [W, VIS, SELECTION, THRESHOLD], size=[340, 200])
    g.link(img, "IMAGE", r, "image"); g.link(m, "model", r, "model"); g.link(d, "face_detector", r, "face_detector")
    s = g.add("SaveImage", (800, 80), ["codeformer/restored"])
    g.link(r, "image", s, "images")
    g.save("restore_faces_simple", "Restore every face of an image in one node. w: 0 = strongest restoration, "
           "1 = closest to the input. Missing official weights are downloaded on first run.")


def modular():
    g = Graph()
    img = g.add("LoadImage", (0, 320), ["astronaut.png", "image"])
    m, d = loaders(g)
    det = g.add("CodeFormerDetectFaces", (400, 0), DETECT, size=[320, 260])
    g.link(img, "IMAGE", det, "image"); g.link(d, "face_detector", det, "face_detector")
    r = g.add("CodeFormerRestoreFaces", (780, 0), [W], size=[300, 100])
    g.link(m, "model", r, "model"); g.link(det, "faces", r, "faces")
    p = g.add("CodeFormerPasteFaces", (1140, 0), PASTE, size=[320, 220])
    g.link(img, "IMAGE", p, "image"); g.link(r, "faces", p, "faces")
    s = g.add("SaveImage", (1520, 0), ["codeformer/modular"])
    g.link(p, "image", s, "images")
    pc = g.add("PreviewImage", (400, 340), title="Detected crops")
    g.link(det, "crops", pc, "images")
    pr = g.add("PreviewImage", (780, 340), title="Restored crops")
    g.link(r, "crops", pr, "images")
    mi = g.add("MaskToImage", (1140, 300), size=[220, 30])
    g.link(p, "mask", mi, "mask")
    pm = g.add("PreviewImage", (1140, 380), title="Paste mask")
    g.link(mi, "IMAGE", pm, "images")
    g.save("restore_faces_modular", "Modular chain: detect -> restore -> paste back. Any IMAGE node can work on "
           "the crops in between (Face Crops to Image / Image to Face Crops).")


def colorize():
    g = Graph()
    img = g.add("LoadImage", (0, 320), ["old_photo.png", "image"])
    m, d = loaders(g, "codeformer_colorization.pth")
    det = g.add("CodeFormerDetectFaces", (400, 0), DETECT, size=[320, 260])
    g.link(img, "IMAGE", det, "image"); g.link(d, "face_detector", det, "face_detector")
    c = g.add("CodeFormerColorizeFaces", (780, 0), size=[300, 80])
    g.link(m, "model", c, "model"); g.link(det, "faces", c, "faces")
    p = g.add("CodeFormerPasteFaces", (1140, 0), [1.0, True, False, 0, 1.0], size=[320, 220])
    g.link(img, "IMAGE", p, "image"); g.link(c, "faces", p, "faces")
    s = g.add("SaveImage", (1520, 0), ["codeformer/colorized"])
    g.link(p, "image", s, "images")
    pr = g.add("PreviewImage", (780, 200), title="Colorized crops")
    g.link(c, "crops", pr, "images")
    g.save("colorize_old_photo", "Colorize the faces of a black-and-white photo (codeformer_colorization.pth).")


def inpaint():
    g = Graph()
    img = g.add("LoadImage", (0, 320), ["astronaut_masked.png", "image"])
    m, d = loaders(g, "codeformer_inpainting.pth")
    det = g.add("CodeFormerDetectFaces", (400, 0), DETECT, size=[320, 260])
    g.link(img, "IMAGE", det, "image"); g.link(d, "face_detector", det, "face_detector")
    i = g.add("CodeFormerInpaintFaces", (780, 0), size=[300, 100])
    g.link(m, "model", i, "model"); g.link(det, "faces", i, "faces"); g.link(img, "MASK", i, "mask")
    p = g.add("CodeFormerPasteFaces", (1140, 0), [1.0, True, False, 0, 1.0], size=[320, 220])
    g.link(img, "IMAGE", p, "image"); g.link(i, "faces", p, "faces")
    s = g.add("SaveImage", (1520, 0), ["codeformer/inpainted"])
    g.link(p, "image", s, "images")
    pr = g.add("PreviewImage", (780, 200), title="Inpainted crops")
    g.link(i, "crops", pr, "images")
    g.save("inpaint_masked_face", "Paint the area to fill with Load Image's mask editor (right click > Open in "
           "MaskEditor); the inpainting model fills it inside each face.")


def txt2img():
    g = Graph()
    ck = g.add("CheckpointLoaderSimple", (0, 0), ["v1-5-pruned-emaonly-fp16.safetensors"], size=[320, 100])
    pos = g.add("CLIPTextEncode", (360, 0), ["portrait photo of an astronaut, detailed face, studio light"],
                size=[400, 160])
    neg = g.add("CLIPTextEncode", (360, 200), ["blurry, lowres, deformed"], size=[400, 160])
    lat = g.add("EmptyLatentImage", (360, 400), [512, 512, 1], size=[320, 110])
    ks = g.add("KSampler", (800, 0), [42, "fixed", 20, 7.0, "euler", "normal", 1.0], size=[320, 270])
    g.link(ck, "CLIP", pos, "clip"); g.link(ck, "CLIP", neg, "clip")
    g.link(ck, "MODEL", ks, "model"); g.link(pos, "CONDITIONING", ks, "positive")
    g.link(neg, "CONDITIONING", ks, "negative"); g.link(lat, "LATENT", ks, "latent_image")
    vd = g.add("VAEDecode", (1160, 0), size=[210, 50])
    g.link(ks, "LATENT", vd, "samples"); g.link(ck, "VAE", vd, "vae")
    m, d = loaders(g, y=560)
    r = g.add("CodeFormerRestoreFacesAllInOne", (1160, 120), [0.7, 1.0, "all", 0.8], size=[340, 200])
    g.link(vd, "IMAGE", r, "image"); g.link(m, "model", r, "model"); g.link(d, "face_detector", r, "face_detector")
    s = g.add("SaveImage", (1540, 0), ["codeformer/txt2img"])
    g.link(r, "image", s, "images")
    g.save("txt2img_fix_faces", "Text to image with any SD checkpoint, then fix the faces before saving.")


def upscale():
    g = Graph()
    img = g.add("LoadImage", (0, 320), ["astronaut.png", "image"])
    m, d = loaders(g)
    r = g.add("CodeFormerRestoreFacesAllInOne", (400, 80), [W, VIS, SELECTION, THRESHOLD], size=[340, 200])
    g.link(img, "IMAGE", r, "image"); g.link(m, "model", r, "model"); g.link(d, "face_detector", r, "face_detector")
    ul = g.add("UpscaleModelLoader", (400, 340), ["RealESRGAN_x2plus.pth"], size=[320, 60])
    up = g.add("ImageUpscaleWithModel", (800, 80), size=[240, 50])
    g.link(ul, "UPSCALE_MODEL", up, "upscale_model"); g.link(r, "image", up, "image")
    s = g.add("SaveImage", (1100, 80), ["codeformer/restored_upscaled"])
    g.link(up, "IMAGE", s, "images")
    g.save("restore_then_upscale", "Restore faces, then upscale the whole image with an ESRGAN-type model "
           "(models/upscale_models, e.g. RealESRGAN_x2plus.pth).")


def video():
    g = Graph()
    lv = g.add("LoadVideo", (0, 0), ["astronaut_clip.mp4", "image"], size=[300, 330])
    gc = g.add("GetVideoComponents", (0, 380), size=[240, 70])
    g.link(lv, "VIDEO", gc, "video")
    m, d = loaders(g, y=500)
    det = g.add("CodeFormerDetectFaces", (400, 0), [THRESHOLD, SELECTION, "area", 0, 0, 640, 0.5], size=[320, 260])
    g.link(gc, "images", det, "image"); g.link(d, "face_detector", det, "face_detector")
    r = g.add("CodeFormerRestoreFaces", (780, 0), [0.7], size=[300, 100])
    g.link(m, "model", r, "model"); g.link(det, "faces", r, "faces")
    p = g.add("CodeFormerPasteFaces", (1140, 0), PASTE, size=[320, 220])
    g.link(gc, "images", p, "image"); g.link(r, "faces", p, "faces")
    cv = g.add("CreateVideo", (1520, 0), [8.0], size=[270, 80])
    g.link(p, "image", cv, "images"); g.link(gc, "fps", cv, "fps")
    sv = g.add("SaveVideo", (1820, 0), ["video/codeformer", "auto", "auto"], size=[400, 400])
    g.link(cv, "VIDEO", sv, "video")
    g.save("restore_video_frames", "Video: frames -> detect (temporal smoothing 0.5 against flicker) -> restore "
           "-> paste -> video. Long clips: frames are processed in chunks.")


if __name__ == "__main__":
    for make in (all_in_one, modular, colorize, inpaint, txt2img, upscale, video):
        make()
    print("written:", sorted(p.name for p in (ROOT / "workflows").glob("*.json")))
