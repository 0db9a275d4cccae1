"""What the node modules share: the menu category, the pack's socket types, the w input, and small
helpers between ComfyUI values and the core's."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from comfy_api.latest import io

from ..codeformer_core import pipeline
from ..codeformer_core.faces.batch import FaceBatch
from . import comfy_bridge as bridge

CATEGORY = "image/face restoration/CodeFormer"

# The pack's own socket types: what flows between its nodes.
CodeFormerModel = io.Custom("CODEFORMER_MODEL")   # codeformer_core.models.codeformer.CodeFormer
FaceDetector = io.Custom("FACE_DETECTOR")         # loaders.FaceDetectorBundle
Faces = io.Custom("FACES")                        # codeformer_core.faces.batch.FaceBatch

# Working memory of detection / paste-back per frame, as a multiple of the frame's element count
# (float32 copies of the frame and its masks through the chunk).
FRAME_WORK_BYTES = 16 * 4 * 8

W_TOOLTIP = ("Fidelity weight w, 0..1. 0 = strongest restoration (most change, cleanest face), "
             "1 = closest to the input face (most faithful, least change). 0.5 is a good start; "
             "use 0.7-1.0 to keep identity on good inputs.")


# Where an ONNX face model may be connected: when w is used.
ONNX_W_TIP = (" With an ONNX face model, w is used only when the file has a fidelity input (CodeFormer "
              "exports); GPEN-BFR and GFPGAN files ignore it.")


def w_input(default: float = 0.5, tooltip: str = W_TOOLTIP) -> io.Float.Input:
    return io.Float.Input("w", default=default, min=0.0, max=1.0, step=0.01, tooltip=tooltip)


def threshold_input(tooltip: str) -> io.Float.Input:
    return io.Float.Input("threshold", default=0.8, min=0.05, max=1.0, step=0.01, tooltip=tooltip)


def max_memory_input() -> io.Float.Input:
    return io.Float.Input("max_memory_gb", default=2.0, min=0.25, max=1024.0, step=0.25, optional=True,
                          tooltip="Working memory for frames, faces and paste-back besides the models, "
                                  "in GB: how many frames and faces are processed together and the bands "
                                  "large outputs are made in. Lower it on a small machine, raise it on a "
                                  "large GPU for speed; free memory is never looked at.")


def memory_budget(max_memory_gb: float) -> int:
    """The core's ``memory_budget`` (bytes) from a max_memory_gb input."""
    return int(float(max_memory_gb) * 2 ** 30)


def face_size_inputs() -> list:
    """min_size / max_size: the detector's face-size filter (pixels of the box's short side)."""
    return [io.Int.Input("min_size", default=0, min=0, max=16384, optional=True,
                         tooltip="Leave faces smaller than this alone: pixels of the face box's short side in the "
                                 "image. They are not restored and not counted. 0 = no limit."),
            io.Int.Input("max_size", default=0, min=0, max=16384, optional=True,
                         tooltip="Leave faces larger than this alone: pixels of the face box's short side in the "
                                 "image. They are not restored and not counted. 0 = no limit.")]


def visibility_input(faces: str = "restored") -> io.Float.Input:
    return io.Float.Input("visibility", default=1.0, min=0.0, max=1.0, step=0.01,
                          tooltip=f"Opacity of the {faces} faces: 1 = fully replaced, 0 = original image.")


PLACEHOLDER_SIZE = 64   # the black square a crops output carries when there is no face


def crops_image(faces: FaceBatch):
    """FACES crops as a ComfyUI IMAGE [N,S,S,3]. With no faces, one black placeholder square
    instead of an empty batch, which ComfyUI's Preview / Save Image (and most image nodes) cannot
    take; the face_count outputs stay 0, and 'Image to Face Crops' ignores it."""
    if len(faces) == 0:
        return torch.zeros(1, PLACEHOLDER_SIZE, PLACEHOLDER_SIZE, 3)
    return pipeline.from_frames(faces.crops)


def frames_per_chunk(frames, device, upscale: float = 1.0) -> int:
    """Frames that go to the compute device together (videos), by the core's memory rule."""
    return pipeline.auto_frames_per_chunk(frames.shape[-2], frames.shape[-1], device, upscale)


def frame_names(frames):
    """How ``run_in_chunks`` names a frame that does not fit in memory even alone, for frames
    [B,3,H,W]: "frame 3 of 8 (1920x1080 pixels)"."""
    b, h, w = int(frames.shape[0]), int(frames.shape[-2]), int(frames.shape[-1])
    return lambda i: f"frame {i + 1} of {b} ({w}x{h} pixels)"


def check_choice(name: str, value, options: Sequence[str]) -> Optional[str]:
    """For ``validate_inputs``: a message when ``value`` is not one of ``options`` (ComfyUI 0.3.64
    does not check V3 combo values itself). None = fine, or not known before the run (a link)."""
    if value is None or value in options:
        return None
    return f"{name} '{value}' is not one of {', '.join(map(str, options))}"


def validation_result(*messages: Optional[str]):
    """``validate_inputs`` return value: True, or the problems as one message."""
    problems = [m for m in messages if m]
    return "; ".join(problems) if problems else True


def face_geometry(model=None):
    """(crop size, five-point template [5,2] in crop pixels) faces are aligned to for ``model``
    (the core's ``pipeline.model_crop_size`` / ``model_template``; 512 and FFHQ without one)."""
    if model is None:
        return pipeline.MODEL_SIZE, pipeline.model_template(None)
    return pipeline.model_crop_size(model), pipeline.model_template(model)


def framing_of(size: int, template) -> tuple:
    """A FACES batch's framing as its meta keeps it: the template as fractions of the crop side."""
    return tuple(round(float(v) / size, 4) for v in template.flatten())


def network_batch() -> int:
    """Faces per CodeFormer forward on ComfyUI's compute device (1 on CPU, 8 on a GPU: the core's
    ``pipeline.default_network_batch``); the chunk loop halves it on out-of-memory."""
    return pipeline.default_network_batch(bridge.compute_device())
