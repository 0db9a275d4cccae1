"""Loader nodes: CodeFormer weights and the face detector (+ optional parsing model).

Files come from ComfyUI's model folders; official files that are not on disk yet are offered
too and downloaded on first use (verified, atomic) into the folder ComfyUI reads them from.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from comfy_api.latest import io

from ..codeformer_core.errors import MissingWeightError
from ..codeformer_core.faces.detect import load_detector
from ..codeformer_core.models import DTYPE_CHOICES
from ..codeformer_core.models.loader import codeformer_dtype, load_model, load_parsenet
from ..codeformer_core.models.onnx_face import is_onnx_file, load_onnx_face_model   # onnx itself: on use
from ..codeformer_core.weights import registry
from . import comfy_bridge as bridge
from .common import CATEGORY, CodeFormerModel, FaceDetector, check_choice, validation_result

NO_PARSER = "none"
log = logging.getLogger(__name__)


@dataclass
class FaceDetectorBundle:
    """What a FACE_DETECTOR socket carries: the RetinaFace detector and an optional ParseNet."""

    detector: object            # codeformer_core.faces.detect.FaceDetector
    parser: Optional[object]    # codeformer_core.models.parsenet.ParseNet or None
    name: str = ""


def is_parser_file(name: str) -> bool:
    return os.path.basename(name).lower().startswith("parsing")


def weight_options(folders: Sequence[str], kind: str, keep: Callable[[str], bool] = lambda name: True,
                   extensions: Sequence[str] = bridge.MODEL_EXTENSIONS) -> List[str]:
    """Official files of ``kind`` that are not on disk (downloaded on use), then the files on disk
    with one of ``extensions``.

    Never raises: a broken registry or folder only shortens the list (with a log line), so that
    ComfyUI's node list keeps working."""
    try:
        on_disk = [f for f in bridge.list_files(folders, extensions) if keep(f)]
    except OSError as exc:
        log.warning("CodeFormer: cannot list %s: %s", bridge.folders_text(folders), exc)
        on_disk = []
    try:
        known = [e.file for e in registry.known_weights().values() if e.kind == kind]
    except (OSError, ValueError) as exc:   # missing or malformed weights/registry.json (json errors are ValueErrors)
        log.warning("CodeFormer: weight registry unreadable, offering only files on disk: %s", exc)
        known = []
    lower = {f.lower() for f in on_disk}
    return [f for f in known if f.lower() not in lower] + on_disk


def weight_combo(name: str, options: List[str], default: str, tooltip: str) -> io.Combo.Input:
    return io.Combo.Input(name, options=options, default=default if default in options else None, tooltip=tooltip)


def resolve_weight(folders: Sequence[str], filename: str) -> str:
    """Path of ``filename``: found in ComfyUI's folders, else downloaded if it is an official file."""
    path = bridge.find_file(folders, filename)
    if path:
        return path
    entry = registry.find_entry(filename)
    if entry is None or os.path.basename(filename) != filename:
        raise MissingWeightError(
            f"{filename} is not in ComfyUI's {bridge.folders_text(folders)} folder and is not an official "
            f"file that can be downloaded; put it there and refresh the node list (press R)")
    target = bridge.download_dir(entry.folder)
    # ensure_weight writes <models_dir>/<entry.folder>/<file>; point it at ComfyUI's folder.
    if os.path.basename(os.path.normpath(target)) != entry.folder:
        raise MissingWeightError(f"{entry.file} is missing; download {entry.url} and place it in {target}")
    models_dir = os.path.dirname(os.path.normpath(target))
    total = entry.size or 1
    bar = bridge.progress_bar(total)

    def progress(done: int, size: Optional[int]) -> None:
        bar(done, size or max(done, total))
    return os.fspath(registry.ensure_weight(entry, models_dir=models_dir, progress=progress))


def missing_choice(name: str, value: str, folders: Sequence[str], options: Sequence[str]) -> Optional[str]:
    if value is None or value in options:
        return None
    return (f"{name} '{value}' is not in {bridge.folders_text(folders)} and is not an official file that can be "
            f"downloaded; put the file there and refresh the node list (press R), or pick another")


def face_model_options() -> List[str]:
    """What 'Load CodeFormer Model' offers: CodeFormer weights, and ONNX face models (.onnx)."""
    return weight_options(bridge.CODEFORMER_FOLDERS, "codeformer",
                          extensions=bridge.MODEL_EXTENSIONS + bridge.ONNX_EXTENSIONS)


class CodeFormerModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CodeFormerModelLoader",
            display_name="Load CodeFormer Model",
            category=CATEGORY,
            description=("Loads CodeFormer weights (restoration, colorization or inpainting; the variant is "
                         "detected from the file and shown on the 'variant' output). Official files not on "
                         "disk are downloaded on first use into models/facerestore_models, with a checksum "
                         "check where one is published. Also loads ONNX face-restoration models (.onnx: "
                         "GPEN-BFR-256..2048, GFPGAN, CodeFormer exports; needs onnx and onnxruntime) for the "
                         "restore nodes; they run with ONNX Runtime on ComfyUI's device (docs/onnx.md)."),
            inputs=[
                weight_combo("model_name", face_model_options(), "codeformer.pth",
                             "Weight file from models/facerestore_models or models/codeformer. "
                             "Official files that are missing are downloaded when the node first runs. "
                             ".onnx files are face models run with ONNX Runtime (restoration only; connect "
                             "this model to 'Detect Faces' too so faces are aligned at its crop size)."),
                io.Combo.Input("dtype", options=list(DTYPE_CHOICES), default="auto",
                               tooltip="Precision. auto = fp16 where ComfyUI says the device supports it; "
                                       "on CPU bf16 where the CPU runs bf16 natively; else fp32. In fp16 "
                                       "and bf16 the encoder stays fp32, so the chosen codes are those of "
                                       "fp32. fp32 is the reference. Ignored for .onnx files (they run in "
                                       "the precision they were exported in)."),
            ],
            outputs=[
                CodeFormerModel.Output(display_name="model", tooltip="The CodeFormer model, kept on ComfyUI's "
                                                                     "offload device between runs."),
                io.String.Output(display_name="variant",
                                 tooltip="The detected variant: restoration, colorization or inpainting."),
            ],
        )

    @classmethod
    def validate_inputs(cls, model_name, dtype):
        options = face_model_options()
        return validation_result(missing_choice("model_name", model_name, bridge.CODEFORMER_FOLDERS, options),
                                 check_choice("dtype", dtype, DTYPE_CHOICES))

    @classmethod
    def fingerprint_inputs(cls, model_name, dtype):
        return bridge.file_fingerprint(bridge.CODEFORMER_FOLDERS, model_name), dtype

    @classmethod
    def execute(cls, model_name: str, dtype: str = "auto") -> io.NodeOutput:
        path = resolve_weight(bridge.CODEFORMER_FOLDERS, model_name)
        if is_onnx_file(path):
            # ONNX Runtime's session lives on the device it is made for: ComfyUI's compute device picks
            # the providers (CUDA: TensorRT, CUDA; else CPU); TensorRT engines go to <name>.trt_cache.
            model = load_onnx_face_model(path, bridge.compute_device())
            log.info("CodeFormer: %r", model)
            return io.NodeOutput(model, model.variant)
        if dtype == "auto":
            device = bridge.compute_device()
            dtype = ("fp16" if bridge.auto_half(80_000_000) else
                     codeformer_dtype("auto", device) if device.type == "cpu" else "fp32")
        model = load_model(path, device=bridge.offload_device(), dtype=dtype)
        return io.NodeOutput(model, model.variant)


class CodeFormerFaceDetectorLoader(io.ComfyNode):
    @classmethod
    def file_options(cls):
        """(detector files, parser files) offered by the two combos."""
        folders = bridge.DETECTOR_FOLDERS
        detectors = weight_options(folders, "retinaface", keep=lambda f: not is_parser_file(f))
        parsers = [NO_PARSER] + weight_options(folders, "parsenet", keep=is_parser_file)
        return detectors, parsers

    @classmethod
    def define_schema(cls) -> io.Schema:
        detectors, parsers = cls.file_options()
        return io.Schema(
            node_id="CodeFormerFaceDetectorLoader",
            display_name="Load Face Detector (CodeFormer)",
            category=CATEGORY,
            description=("Loads the RetinaFace face detector (ResNet-50: accurate; MobileNet-0.25: fast) and "
                         "optionally the ParseNet face-parsing model used for a precise paste-back mask. "
                         "Official files not on disk are downloaded on first use into models/facedetection."),
            inputs=[
                weight_combo("detector_model", detectors, "detection_Resnet50_Final.pth",
                             "RetinaFace weights from models/facedetection (ResNet-50 or MobileNet-0.25; "
                             "the backbone is detected from the file)."),
                weight_combo("parsing_model", parsers, "parsing_parsenet.pth",
                             "Face-parsing model for the paste-back mask (skin, eyes, mouth...); 'none' "
                             "pastes with a feathered square mask instead."),
            ],
            outputs=[
                FaceDetector.Output(display_name="face_detector",
                                    tooltip="Face detector (and parsing model, if chosen) for the detect / "
                                            "restore nodes."),
            ],
        )

    @classmethod
    def validate_inputs(cls, detector_model, parsing_model):
        detectors, parsers = cls.file_options()
        folders = bridge.DETECTOR_FOLDERS
        return validation_result(missing_choice("detector_model", detector_model, folders, detectors),
                                 missing_choice("parsing_model", parsing_model, folders, parsers))

    @classmethod
    def fingerprint_inputs(cls, detector_model, parsing_model):
        folders = bridge.DETECTOR_FOLDERS
        return bridge.file_fingerprint(folders, detector_model), bridge.file_fingerprint(folders, parsing_model)

    @classmethod
    def execute(cls, detector_model: str, parsing_model: str = NO_PARSER) -> io.NodeOutput:
        folders = bridge.DETECTOR_FOLDERS
        off = bridge.offload_device()
        detector = load_detector(resolve_weight(folders, detector_model), device=off)
        parser = None
        if parsing_model and parsing_model != NO_PARSER:
            parser = load_parsenet(resolve_weight(folders, parsing_model), device=off)
        return io.NodeOutput(FaceDetectorBundle(detector, parser, detector_model))
