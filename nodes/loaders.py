"""Loader nodes: CodeFormer weights and the face detector (+ optional parsing model).

Files come from ComfyUI's model folders; official files that are not on disk yet are offered
too and downloaded on first use (verified, atomic) into the folder ComfyUI reads them from.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

from . import comfy_bridge as bridge
from ._common import CATEGORY, DETECTOR_TYPE, DTYPES, MODEL_TYPE, core

NO_PARSER = "none"


@dataclass
class FaceDetectorBundle:
    """What a FACE_DETECTOR socket carries: the RetinaFace detector and an optional ParseNet."""

    detector: object            # codeformer_core.faces.detect.FaceDetector
    parser: Optional[object]    # codeformer_core.models.parsenet.ParseNet or None
    name: str = ""


def _registry(kind: str):
    """Registry entries of one kind, in registry order (reading JSON only, no torch)."""
    weights = core("weights.registry")
    return [e for e in weights.known_weights().values() if e.kind == kind]


def _options(folders, kinds, keep=lambda name: True) -> List[str]:
    """Files on disk plus the official files of ``kinds`` that are not (downloaded on use)."""
    known = [e.file for k in kinds for e in _registry(k)]
    on_disk = [f for f in bridge.list_files(folders) if keep(f)]
    lower = {f.lower() for f in on_disk}
    return [f for f in known if f.lower() not in lower] + on_disk if known else on_disk


def _combo(options: List[str], default: str, tooltip: str):
    opts = {"tooltip": tooltip}
    if default in options:
        opts["default"] = default
    return (options, opts)


def resolve_weight(folders, filename: str) -> str:
    """Path of ``filename``: found in ComfyUI's folders, else downloaded if it is an official file."""
    path = bridge.find_file(folders, filename)
    if path:
        return path
    weights = core("weights.registry")
    entry = weights.find_entry(filename)
    if entry is None or os.path.basename(filename) != filename:
        raise FileNotFoundError(
            f"{filename} is not in ComfyUI's {' / '.join('models/' + f for f in folders)} folders "
            f"and is not an official file that can be downloaded; put it there and refresh")
    target = bridge.download_dir(entry.folder)
    # ensure_weight writes <models_dir>/<entry.folder>/<file>; point it at ComfyUI's folder.
    if os.path.basename(os.path.normpath(target)) == entry.folder:
        models_dir = os.path.dirname(os.path.normpath(target))
    else:
        raise FileNotFoundError(f"{entry.file} is missing; download {entry.url} and place it in {target}")
    total = entry.size or 1
    bar = bridge.progress_bar(total)

    def progress(done: int, size: Optional[int]) -> None:
        bar(done, size or max(done, total))
    return os.fspath(weights.ensure_weight(entry, models_dir=models_dir, progress=progress))


class CodeFormerModelLoader:
    DESCRIPTION = ("Loads CodeFormer weights (restoration, colorization or inpainting; the variant is "
                   "detected from the file and shown on the 'variant' output). Official files not on "
                   "disk are downloaded on first use into models/facerestore_models, with a checksum "
                   "check where one is published.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL_TYPE, "STRING")
    RETURN_NAMES = ("model", "variant")
    OUTPUT_TOOLTIPS = ("The CodeFormer model, kept on ComfyUI's offload device between runs.",
                       "The detected variant: restoration, colorization or inpainting.")

    @classmethod
    def INPUT_TYPES(cls):
        options = _options(bridge.CODEFORMER_FOLDERS, ("codeformer",))
        return {"required": {
            "model_name": _combo(options, "codeformer.pth",
                                 "Weight file from models/facerestore_models or models/codeformer. "
                                 "Official files that are missing are downloaded when the node first runs."),
            "dtype": (list(DTYPES), {"default": "auto",
                                     "tooltip": "Precision. auto = fp16 where ComfyUI says the device "
                                                "supports it, else fp32. fp32 is the reference."}),
        }}

    def load(self, model_name: str, dtype: str = "auto"):
        path = resolve_weight(bridge.CODEFORMER_FOLDERS, model_name)
        if dtype == "auto":
            dtype = "fp16" if bridge.auto_half(80_000_000) else "fp32"
        model = core().load_model(path, device=bridge.offload_device(), dtype=dtype)
        return (model, model.variant)


class CodeFormerFaceDetectorLoader:
    DESCRIPTION = ("Loads the RetinaFace face detector (ResNet-50: accurate; MobileNet-0.25: fast) and "
                   "optionally the ParseNet face-parsing model used for a precise paste-back mask. "
                   "Official files not on disk are downloaded on first use into models/facedetection.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (DETECTOR_TYPE,)
    RETURN_NAMES = ("face_detector",)
    OUTPUT_TOOLTIPS = ("Face detector (and parsing model, if chosen) for the detect / restore nodes.",)

    @classmethod
    def INPUT_TYPES(cls):
        folders = ("facedetection",)
        is_parser = lambda f: os.path.basename(f).lower().startswith("parsing")  # noqa: E731
        detectors = _options(folders, ("retinaface",), keep=lambda f: not is_parser(f))
        parsers = [NO_PARSER] + _options(folders, ("parsenet",), keep=is_parser)
        return {"required": {
            "detector_model": _combo(detectors, "detection_Resnet50_Final.pth",
                                     "RetinaFace weights from models/facedetection (ResNet-50 or "
                                     "MobileNet-0.25; the backbone is detected from the file)."),
            "parsing_model": _combo(parsers, "parsing_parsenet.pth",
                                    "Face-parsing model for the paste-back mask (skin, eyes, mouth...); "
                                    "'none' pastes with a feathered square mask instead."),
        }}

    def load(self, detector_model: str, parsing_model: str = NO_PARSER):
        folders = ("facedetection",)
        off = bridge.offload_device()
        detector = core("faces.detect").load_detector(resolve_weight(folders, detector_model), device=off)
        parser = None
        if parsing_model and parsing_model != NO_PARSER:
            parser = core("models.parsenet").load_parsenet(resolve_weight(folders, parsing_model), device=off)
        return (FaceDetectorBundle(detector, parser, detector_model),)
