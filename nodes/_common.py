"""Shared bits of the node layer: the core import, type names, option lists, small helpers."""
from __future__ import annotations

import importlib

CATEGORY = "image/face restoration/CodeFormer"
MODEL_TYPE = "CODEFORMER_MODEL"
DETECTOR_TYPE = "FACE_DETECTOR"
FACES_TYPE = "FACES"

# Mirrors of codeformer_core.faces.detect.SELECTIONS / SORT_KEYS, kept here so that building the
# node list never imports torch (a test checks they stay equal).
SELECTIONS = ("all", "largest", "center", "index")
SORT_KEYS = ("area", "left_to_right", "confidence")
DTYPES = ("auto", "fp32", "fp16", "bf16")
NETWORK_BATCH = 4  # faces per CodeFormer forward; halves itself on out-of-memory

W_TOOLTIP = ("Fidelity weight w, 0..1. 0 = strongest restoration (most change, cleanest face), "
             "1 = closest to the input face (most faithful, least change). 0.5 is a good start; "
             "use 0.7-1.0 to keep identity on good inputs.")


def core(name: str = ""):
    """``codeformer_core`` (or one of its submodules), imported on first use.

    Inside ComfyUI the pack is a package and the core a sub-package of it; in tests and
    scripts the repository root is on sys.path and the core is top-level.
    """
    try:
        base = importlib.import_module("..codeformer_core", __package__) if __package__ and "." in __package__ \
            else importlib.import_module("codeformer_core")
    except ImportError:
        base = importlib.import_module("codeformer_core")
    return importlib.import_module(f"{base.__name__}.{name}") if name else base


def crops_image(faces):
    """FACES crops as a ComfyUI IMAGE [N,S,S,3] (an empty batch when there are no faces)."""
    return core("pipeline").from_frames(faces.crops)


def frame_chunks(frames, device, upscale: float = 1.0):
    """(start, stop) ranges: frames go to the compute device a chunk at a time (videos), as
    many as the core's memory rule allows (``pipeline.auto_frames_per_chunk``)."""
    num_frames, height, width = frames.shape[0], frames.shape[-2], frames.shape[-1]
    size = core("pipeline").auto_frames_per_chunk(height, width, device, upscale)
    return [(s, min(num_frames, s + size)) for s in range(0, num_frames, size)]


def faces_of_frames(faces, start: int, stop: int):
    """The faces of frames [start, stop) as their own FaceBatch (frame indices from 0)."""
    from dataclasses import replace
    if start == 0 and stop == faces.num_frames:
        return faces
    keep = (faces.frame_index >= start) & (faces.frame_index < stop)
    part = faces.select(keep)
    return replace(part, frame_index=part.frame_index - start, num_frames=stop - start)


def concat_faces(parts, offsets, num_frames: int, frame_size, meta=None):
    """Join per-chunk FaceBatches (frame indices shifted by each chunk's first frame)."""
    import torch
    from dataclasses import replace
    first = parts[0]

    def cat(name):
        vals = [getattr(p, name) for p in parts]
        return None if any(v is None for v in vals) else torch.cat(vals)
    return replace(first, crops=cat("crops"), affines=cat("affines"), inverse_affines=cat("inverse_affines"),
                   frame_index=torch.cat([p.frame_index + o for p, o in zip(parts, offsets)]),
                   boxes=cat("boxes"), scores=cat("scores"), landmarks=cat("landmarks"), gray=cat("gray"),
                   frame_size=tuple(frame_size), num_frames=num_frames, meta=dict(meta or first.meta))
