#!/usr/bin/env python3
"""Writes the example graphs in workflows/ (UI format, as ComfyUI's front end 1.27 saves them).

The JSON files are the product; this script keeps their node ids, links, slots and widget values
consistent with the node definitions a running ComfyUI reports (GET /object_info), so the pack's
own nodes and ComfyUI's core nodes are described by the server itself, not by a copy here.
Every widget gets the node's default unless a graph sets it on purpose (file names, prompts, and
the video graph's temporal smoothing): users start from the defaults the nodes define.

    python tools/make_workflows.py --object-info http://127.0.0.1:8188     # a ComfyUI with this pack
    python tools/make_workflows.py --object-info .comfyui/object_info.json  # saved by the real-server test
    python tools/make_workflows.py --object-info ... --check                # compare only; exit 1 if different

tests/test_real_server.py checks that the committed graphs are exactly what this script builds from
the live server's /object_info. Standard library only.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
FRONTEND_VERSION = "1.27.10"

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SIZES = {"LoadImage": [320, 330], "SaveImage": [340, 360], "PreviewImage": [300, 300],
         "CodeFormerModelLoader": [320, 106], "CodeFormerFaceDetectorLoader": [340, 106]}

# Where ComfyUI looks for the weights (second line of every note).
RESTORE_WEIGHTS = "codeformer.pth in models/facerestore_models"
FACE_WEIGHTS = "detection_Resnet50_Final.pth and parsing_parsenet.pth in models/facedetection"
DOWNLOADED = "(the CodeFormer loaders download missing official files there on first run)"


def weights_line(*files: str) -> str:
    return "Weights: " + "; ".join(files) + " " + DOWNLOADED + "."


def _spec_type(spec) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def _opts(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def ordered_inputs(info: dict):
    """[(name, spec, optional)] in the front end's order: required, then optional."""
    out = []
    for section in ("required", "optional"):
        specs = info["input"].get(section) or {}
        for name in (info.get("input_order") or {}).get(section) or list(specs):
            out.append((name, specs[name], section == "optional"))
    return out


def is_widget(spec) -> bool:
    return _spec_type(spec) in WIDGET_TYPES and not _opts(spec).get("forceInput")


def widget_layout(info: dict):
    """widgets_values slots as the front end lays them out: ("value", name), ("control", name) after
    a seed-like INT, ("upload", name) after the required section for an image/video file combo."""
    layout, upload = [], None
    for name, spec, optional in ordered_inputs(info):
        if optional and upload:
            layout.append(upload)
            upload = None
        if not is_widget(spec):
            continue
        layout.append(("value", name))
        opts = _opts(spec)
        if _spec_type(spec) == "INT" and opts.get("control_after_generate", name in ("seed", "noise_seed")):
            layout.append(("control", name))
        if not optional and (opts.get("image_upload") or opts.get("video_upload")):
            upload = ("upload", name)
    return layout + ([upload] if upload else [])


class Graph:
    def __init__(self, object_info: dict):
        self.info = object_info
        self.nodes, self.links = [], []

    def add(self, node_type, pos, size=None, title=None, **values):
        """A node; widgets not given in ``values`` get the node's default."""
        nid = len(self.nodes) + 1
        node = {"id": nid, "type": node_type, "pos": list(pos), "size": size or SIZES.get(node_type, [320, 200]),
                "flags": {}, "order": nid - 1, "mode": 0, "inputs": [], "outputs": [],
                "properties": {"Node name for S&R": node_type}, "widgets_values": []}
        if title:
            node["title"] = title
        self.nodes.append(node)
        if node_type == "Note":
            node["properties"] = {}
            node["widgets_values"] = [values.pop("text")]
            return nid
        if node_type not in self.info:
            raise KeyError(f"node type {node_type} is not in the given object_info (is the pack loaded?)")
        info = self.info[node_type]
        for name, spec, optional in ordered_inputs(info):
            if not is_widget(spec):
                slot = {"name": name, "type": _spec_type(spec), "link": None}
                if optional:
                    slot["shape"] = 7
                node["inputs"].append(slot)
        for i, (name, t) in enumerate(zip(info["output_name"], info["output"])):
            node["outputs"].append({"name": name, "type": t, "links": [], "slot_index": i})
        specs = {name: spec for name, spec, _ in ordered_inputs(info)}
        for kind, name in widget_layout(info):
            if kind == "control":
                node["widgets_values"].append(values.pop(name + "_control", "fixed"))
            elif kind == "upload":
                node["widgets_values"].append("image")
            elif name in values:
                node["widgets_values"].append(values.pop(name))
            elif "default" in _opts(specs[name]):
                node["widgets_values"].append(_opts(specs[name])["default"])
            else:
                raise ValueError(f"{node_type}.{name} has no default; give it a value")
        if values:
            raise ValueError(f"{node_type} has no widget(s) {sorted(values)}")
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

    def finish(self, name, does: str, weights: str) -> dict:
        """The workflow dict, with a note: line 1 what the graph does, line 2 its weight files."""
        self.add("Note", (0, -200), size=[640, 110], text=does + "\n" + weights)
        for n in self.nodes:
            for o in n["outputs"]:
                if not o["links"]:
                    o["links"] = None
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"codeformer/{name}")), "revision": 0,
                "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.8, "offset": [60, 260]}, "frontendVersion": FRONTEND_VERSION},
                "version": 0.4}


def loaders(g, model="codeformer.pth", y=0):
    m = g.add("CodeFormerModelLoader", (0, y), model_name=model)
    d = g.add("CodeFormerFaceDetectorLoader", (0, y + 160))
    return m, d


def detect_restore_paste(g, image, restore_type, model_name, loader_y=0, x=400, paste=None, restore=None,
                         **detect):
    """Image or frames -> Detect -> restore_type -> Paste Faces Back (widgets ``restore``, ``paste``);
    returns (detect, restore, paste)."""
    m, d = loaders(g, model_name, loader_y)
    det = g.add("CodeFormerDetectFaces", (x, 0), size=[320, 260], **detect)
    g.link(image[0], image[1], det, "image")
    g.link(d, "face_detector", det, "face_detector")
    r = g.add(restore_type, (x + 380, 0), size=[300, 100], **(restore or {}))
    g.link(m, "model", r, "model")
    g.link(det, "faces", r, "faces")
    p = g.add("CodeFormerPasteFaces", (x + 740, 0), size=[320, 220], **(paste or {}))
    g.link(image[0], image[1], p, "image")
    g.link(r, "faces", p, "faces")
    return det, r, p


def all_in_one(info):
    g = Graph(info)
    img = g.add("LoadImage", (0, 320), image="astronaut.png")
    m, d = loaders(g)
    r = g.add("CodeFormerRestoreFacesAllInOne", (400, 80), size=[340, 200])
    g.link(img, "IMAGE", r, "image")
    g.link(m, "model", r, "model")
    g.link(d, "face_detector", r, "face_detector")
    s = g.add("SaveImage", (800, 80), filename_prefix="codeformer/restored")
    g.link(r, "image", s, "images")
    return g.finish("restore_faces_simple",
                    "Restores every face of an image in one node (w: 0 = strongest restoration, 1 = closest "
                    "to the input).", weights_line(RESTORE_WEIGHTS, FACE_WEIGHTS))


def modular(info):
    g = Graph(info)
    img = g.add("LoadImage", (0, 320), image="astronaut.png")
    det, r, p = detect_restore_paste(g, (img, "IMAGE"), "CodeFormerRestoreFaces", "codeformer.pth")
    s = g.add("SaveImage", (1520, 0), filename_prefix="codeformer/modular")
    g.link(p, "image", s, "images")
    pc = g.add("PreviewImage", (400, 340), title="Detected crops")
    g.link(det, "crops", pc, "images")
    pr = g.add("PreviewImage", (780, 340), title="Restored crops")
    g.link(r, "crops", pr, "images")
    mi = g.add("MaskToImage", (1140, 300), size=[220, 30])
    g.link(p, "mask", mi, "mask")
    pm = g.add("PreviewImage", (1140, 380), title="Paste mask")
    g.link(mi, "IMAGE", pm, "images")
    return g.finish("restore_faces_modular",
                    "Detect -> restore -> paste back as separate nodes; any IMAGE node can edit the crops in "
                    "between (Face Crops to Image / Image to Face Crops).",
                    weights_line(RESTORE_WEIGHTS, FACE_WEIGHTS))


def colorize(info):
    g = Graph(info)
    img = g.add("LoadImage", (0, 320), image="old_photo.png")
    _, c, p = detect_restore_paste(g, (img, "IMAGE"), "CodeFormerColorizeFaces", "codeformer_colorization.pth")
    s = g.add("SaveImage", (1520, 0), filename_prefix="codeformer/colorized")
    g.link(p, "image", s, "images")
    pr = g.add("PreviewImage", (780, 200), title="Colorized crops")
    g.link(c, "crops", pr, "images")
    return g.finish("colorize_old_photo", "Colorizes the faces of a black-and-white or faded photo.",
                    weights_line("codeformer_colorization.pth in models/facerestore_models", FACE_WEIGHTS))


def inpaint(info):
    g = Graph(info)
    img = g.add("LoadImage", (0, 320), image="astronaut_masked.png")
    _, i, p = detect_restore_paste(g, (img, "IMAGE"), "CodeFormerInpaintFaces", "codeformer_inpainting.pth")
    g.link(img, "MASK", i, "mask")
    s = g.add("SaveImage", (1520, 0), filename_prefix="codeformer/inpainted")
    g.link(p, "image", s, "images")
    pr = g.add("PreviewImage", (780, 200), title="Inpainted crops")
    g.link(i, "crops", pr, "images")
    return g.finish("inpaint_masked_face",
                    "Fills the masked part of each face (paint the mask in Load Image: right click > Open in "
                    "MaskEditor).", weights_line("codeformer_inpainting.pth in models/facerestore_models",
                                                 FACE_WEIGHTS))


def txt2img(info):
    g = Graph(info)
    ck = g.add("CheckpointLoaderSimple", (0, 0), size=[320, 100], ckpt_name="v1-5-pruned-emaonly-fp16.safetensors")
    pos = g.add("CLIPTextEncode", (360, 0), size=[400, 160],
                text="portrait photo of an astronaut, detailed face, studio light")
    neg = g.add("CLIPTextEncode", (360, 200), size=[400, 160], text="blurry, lowres, deformed")
    lat = g.add("EmptyLatentImage", (360, 400), size=[320, 110])
    ks = g.add("KSampler", (800, 0), size=[320, 270], seed=42, cfg=7.0, sampler_name="euler", scheduler="normal")
    g.link(ck, "CLIP", pos, "clip")
    g.link(ck, "CLIP", neg, "clip")
    g.link(ck, "MODEL", ks, "model")
    g.link(pos, "CONDITIONING", ks, "positive")
    g.link(neg, "CONDITIONING", ks, "negative")
    g.link(lat, "LATENT", ks, "latent_image")
    vd = g.add("VAEDecode", (1160, 0), size=[210, 50])
    g.link(ks, "LATENT", vd, "samples")
    g.link(ck, "VAE", vd, "vae")
    m, d = loaders(g, y=560)
    r = g.add("CodeFormerRestoreFacesAllInOne", (1160, 120), size=[340, 200])
    g.link(vd, "IMAGE", r, "image")
    g.link(m, "model", r, "model")
    g.link(d, "face_detector", r, "face_detector")
    s = g.add("SaveImage", (1540, 0), filename_prefix="codeformer/txt2img")
    g.link(r, "image", s, "images")
    return g.finish("txt2img_fix_faces", "Text to image with a Stable Diffusion checkpoint, then restores the "
                    "faces before saving.",
                    weights_line("an SD 1.5 checkpoint in models/checkpoints", RESTORE_WEIGHTS, FACE_WEIGHTS))


def upscale(info):
    g = Graph(info)
    img = g.add("LoadImage", (0, 320), image="astronaut.png")
    m, d = loaders(g)
    r = g.add("CodeFormerRestoreFacesAllInOne", (400, 80), size=[340, 200])
    g.link(img, "IMAGE", r, "image")
    g.link(m, "model", r, "model")
    g.link(d, "face_detector", r, "face_detector")
    ul = g.add("UpscaleModelLoader", (400, 340), size=[320, 60], model_name="RealESRGAN_x2plus.pth")
    up = g.add("ImageUpscaleWithModel", (800, 80), size=[240, 50])
    g.link(ul, "UPSCALE_MODEL", up, "upscale_model")
    g.link(r, "image", up, "image")
    s = g.add("SaveImage", (1100, 80), filename_prefix="codeformer/restored_upscaled")
    g.link(up, "IMAGE", s, "images")
    return g.finish("restore_then_upscale", "Restores the faces, then upscales the whole image 2x with an "
                    "ESRGAN-type model.",
                    weights_line("RealESRGAN_x2plus.pth in models/upscale_models", RESTORE_WEIGHTS, FACE_WEIGHTS))


def video(info):
    g = Graph(info)
    lv = g.add("LoadVideo", (0, 0), size=[300, 330], file="astronaut_clip.mp4")
    gc = g.add("GetVideoComponents", (0, 380), size=[240, 70])
    g.link(lv, "VIDEO", gc, "video")
    # smoothing: a video setting, not the node default (0 = off): faces tracked and smoothed over about
    # 2 frames along their tracks (zero lag), steadier faces, less flicker. temporal (needs the tracks):
    # codebook choices combined along each track over 2 frames, the restored details do not flicker.
    _, _, p = detect_restore_paste(g, (gc, "images"), "CodeFormerRestoreFaces", "codeformer.pth", loader_y=500,
                                   smoothing=2.0, restore={"temporal": 2.0})
    cv = g.add("CreateVideo", (1520, 0), size=[270, 100])
    g.link(p, "image", cv, "images")
    g.link(gc, "audio", cv, "audio")
    g.link(gc, "fps", cv, "fps")
    sv = g.add("SaveVideo", (1820, 0), size=[400, 400], filename_prefix="video/codeformer")
    g.link(cv, "VIDEO", sv, "video")
    return g.finish("restore_video_frames",
                    "Restores the faces of every video frame (faces tracked and smoothed, codes chosen along "
                    "each track: temporal 2, against flicker) and keeps the frame rate and the sound.",
                    weights_line(RESTORE_WEIGHTS, FACE_WEIGHTS))


def face_model(info):
    g = Graph(info)
    img = g.add("LoadImage", (0, 320), image="astronaut.png")
    d = g.add("CodeFormerFaceDetectorLoader", (0, 160))
    det = g.add("CodeFormerDetectFaces", (400, 0), size=[320, 260])
    g.link(img, "IMAGE", det, "image")
    g.link(d, "face_detector", det, "face_detector")
    ul = g.add("UpscaleModelLoader", (400, 340), size=[320, 60], model_name="GFPGANv1.4.pth")
    r = g.add("CodeFormerRestoreFacesWithModel", (780, 0), size=[300, 100])
    g.link(ul, "UPSCALE_MODEL", r, "model")
    g.link(det, "faces", r, "faces")
    p = g.add("CodeFormerPasteFaces", (1140, 0), size=[320, 220])
    g.link(img, "IMAGE", p, "image")
    g.link(r, "faces", p, "faces")
    s = g.add("SaveImage", (1520, 0), filename_prefix="codeformer/gfpgan")
    g.link(p, "image", s, "images")
    pr = g.add("PreviewImage", (780, 200), title="Restored crops")
    g.link(r, "crops", pr, "images")
    return g.finish("restore_faces_gfpgan",
                    "Restores the faces with GFPGAN (or RestoreFormer) loaded by the core 'Load Upscale Model', "
                    "with this pack's detection and paste-back.",
                    "Weights: GFPGANv1.4.pth (or RestoreFormer.pth, from their authors' releases) in "
                    "models/upscale_models; " + FACE_WEIGHTS + " (the detector loader downloads missing official "
                    "files there on first run).")


def keep_eyes(info):
    g = Graph(info)
    img = g.add("LoadImage", (0, 320), image="astronaut.png")
    _, _, p = detect_restore_paste(g, (img, "IMAGE"), "CodeFormerRestoreFaces", "codeformer.pth",
                                   paste={"regions": "face_keep_eyes"})
    s = g.add("SaveImage", (1520, 0), filename_prefix="codeformer/keep_eyes")
    g.link(p, "image", s, "images")
    return g.finish("restore_keep_original_eyes",
                    "Restores the faces but keeps the original eyes: Paste Faces Back's regions preset "
                    "face_keep_eyes pastes every face-parsing region except the eyes (keep_regions names others).",
                    weights_line(RESTORE_WEIGHTS, FACE_WEIGHTS))


def onnx_face_model(info):
    g = Graph(info)
    img = g.add("LoadImage", (0, 320), image="astronaut.png")
    det, r, p = detect_restore_paste(g, (img, "IMAGE"), "CodeFormerRestoreFaces", "GPEN-BFR-512.onnx")
    m = next(n["id"] for n in g.nodes if n["type"] == "CodeFormerModelLoader")
    g.link(m, "model", det, "model")   # faces aligned at the model's crop size and template
    s = g.add("SaveImage", (1520, 0), filename_prefix="codeformer/onnx")
    g.link(p, "image", s, "images")
    pr = g.add("PreviewImage", (780, 340), title="Restored crops")
    g.link(r, "crops", pr, "images")
    return g.finish("restore_faces_onnx",
                    "Restores the faces with an ONNX face model (GPEN-BFR-256/512/1024/2048, GFPGAN or a CodeFormer "
                    "export) run by ONNX Runtime; the model also goes to Detect Faces, which aligns at its crop size.",
                    "Weights: GPEN-BFR-512.onnx (or gpen_bfr_1024.onnx, GPEN-BFR-256.onnx ...; not downloaded: "
                    "put the file there, pip install onnx onnxruntime) in models/facerestore_models; "
                    + FACE_WEIGHTS + " (the detector loader downloads missing official files there on first run).")


BUILDERS = {"restore_faces_simple": all_in_one, "restore_faces_modular": modular, "colorize_old_photo": colorize,
            "inpaint_masked_face": inpaint, "txt2img_fix_faces": txt2img, "restore_then_upscale": upscale,
            "restore_video_frames": video, "restore_faces_gfpgan": face_model,
            "restore_keep_original_eyes": keep_eyes,
            "restore_faces_onnx": onnx_face_model}


def build_all(object_info: dict) -> dict:
    """{workflow name: UI-format graph} built from a ComfyUI /object_info answer."""
    return {name: make(object_info) for name, make in BUILDERS.items()}


def dumps(workflow: dict) -> str:
    return json.dumps(workflow, indent=2) + "\n"


def load_object_info(source: str) -> dict:
    if source.startswith(("http://", "https://")):
        url = source.rstrip("/")
        url = url if url.endswith("/object_info") else url + "/object_info"
        with urllib.request.urlopen(url, timeout=120) as r:
            return json.loads(r.read().decode("utf-8"))
    return json.loads(Path(source).read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--object-info", required=True,
                    help="URL of a ComfyUI server that has this pack loaded, or a saved /object_info JSON file")
    ap.add_argument("--check", action="store_true", help="only compare with workflows/; exit 1 if any differs")
    ap.add_argument("--out", type=Path, default=WORKFLOWS, help="folder to write (default: workflows/)")
    args = ap.parse_args(argv)
    graphs = build_all(load_object_info(args.object_info))
    differ = []
    for name, wf in graphs.items():
        path = args.out / f"{name}.json"
        if path.exists() and path.read_text() == dumps(wf):
            continue
        differ.append(path.name)
        if not args.check:
            path.write_text(dumps(wf))
    if args.check:
        print("differ from the generator:" if differ else "all graphs match the generator", ", ".join(differ))
        return 1 if differ else 0
    print("written:" if differ else "unchanged", ", ".join(differ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
