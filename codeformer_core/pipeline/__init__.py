"""Frames in, frames out: detection -> alignment -> CodeFormer -> paste-back.

The one entry point used by the ComfyUI nodes and the command line alike is
``restore_images``; the steps are public too so the modular nodes can run them one by one.
Frames are processed in chunks (all faces of a chunk go through the network together); on
an out-of-memory error the chunk is halved and retried (``chunks.run_in_chunks``, which also
sizes the network batches).

The face model: anything called as ``model(x, w=..., adain=...)`` on aligned crops [N,3,S,S] in
-1..1 returning the same shape in -1..1, with ``parameters()`` (the first one gives the device and
element size) and a ``variant``. Optionally (``model_crop_size``, ``model_template``,
``model_fixed_batch``): ``crop_size`` (S; default 512), ``template(dtype)`` (the five alignment points
[5,2] in crop pixels; default the FFHQ template scaled to S) and ``fixed_batch`` (the faces one
forward takes at once, e.g. 1 for most ONNX files; None: any number). CodeFormer and the spandrel
face models keep the defaults; ``models.onnx_face.OnnxFaceModel`` says all three (GPEN-BFR 256..2048 ...).

The package, in the order data flows: ``frames`` (inputs as float frames and back), ``model``
(what the pipeline asks of a face model), ``detection`` (frames -> aligned faces, the clip pass),
``codes`` (temporal codes along face tracks), ``network`` (faces -> restored faces), ``memory``
(sizing against the budget), ``restore`` (``restore_images``: all of it, chunk by chunk). Every
public name is importable from ``codeformer_core.pipeline``.
"""
from __future__ import annotations

from .codes import CodeChooser, TrackCodes, clip_codes
from .detection import aligned_faces, detect_clip, detect_faces
from .frames import from_frames, image_batch, rgb_planes, to_frames
from .memory import (
                     BAND_COPIES,
                     FORWARD_BYTES_PER_FACE,
                     FRAME_COPIES,
                     OUTPUT_COPIES,
                     auto_frames_per_chunk,
                     band_rows_for,
                     faces_per_batch,
                     forward_bytes_per_face,
)
from .model import (
                     GPU_NETWORK_BATCH,
                     MODEL_SIZE,
                     Interrupt,
                     Progress,
                     check_variant,
                     default_network_batch,
                     has_ffhq_framing,
                     model_crop_size,
                     model_fixed_batch,
                     model_task,
                     model_template,
                     parser_for_model,
)
from .network import (
                     colorize_faces,
                     crop_hole_masks,
                     gray_model_input,
                     inpaint_faces,
                     parse_masks_for,
                     restore_faces,
                     run_network,
)
from .restore import (
                     DEFAULT_DETECT,
                     DEFAULT_PASTE,
                     DEFAULT_RUN,
                     PasteSettings,
                     RestoreResult,
                     RunOptions,
                     Sink,
                     restore_images,
)

__all__ = [
    "CodeChooser", "TrackCodes", "clip_codes", "aligned_faces", "detect_clip", "detect_faces", "from_frames",
    "image_batch", "rgb_planes", "to_frames", "BAND_COPIES", "FORWARD_BYTES_PER_FACE", "FRAME_COPIES",
    "OUTPUT_COPIES", "auto_frames_per_chunk", "band_rows_for", "faces_per_batch", "forward_bytes_per_face",
    "GPU_NETWORK_BATCH", "MODEL_SIZE", "Interrupt", "Progress", "check_variant", "default_network_batch",
    "has_ffhq_framing", "model_crop_size", "model_fixed_batch", "model_task", "model_template", "parser_for_model",
    "colorize_faces", "crop_hole_masks", "gray_model_input", "inpaint_faces", "parse_masks_for", "restore_faces",
    "run_network", "DEFAULT_DETECT", "DEFAULT_PASTE", "DEFAULT_RUN", "PasteSettings", "RestoreResult", "RunOptions",
    "Sink", "restore_images",
]
