"""Detect faces, and move face crops in and out of FACES so any IMAGE node can edit them."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..codeformer_core import pipeline
from ..codeformer_core.chunks import run_in_chunks
from ..codeformer_core.errors import InputError
from ..codeformer_core.faces.batch import FaceBatch
from ..codeformer_core.faces.detect import SELECTIONS, SORT_KEYS
from ..codeformer_core.faces.paste import paste_faces
from . import comfy_bridge as bridge
from .common import (CATEGORY, FRAME_WORK_BYTES, CodeFormerModel, FaceDetector, Faces, check_choice, crops_image,
                     face_geometry, face_size_inputs, frame_names, frames_per_chunk, framing_of, threshold_input,
                     validation_result)


class CodeFormerDetectFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CodeFormerDetectFaces",
            display_name="Detect Faces (CodeFormer)",
            category=CATEGORY,
            description=("Finds faces in an image batch (or video frames), aligns each to a 512x512 crop (or "
                         "to the crop size and alignment of the model connected to 'model') and returns them "
                         "as FACES for the restore / colorize / inpaint and paste-back nodes. Frames without a "
                         "face pass through; the count output says how many were found."),
            inputs=[
                io.Image.Input("image", tooltip="Image batch or video frames to search for faces."),
                FaceDetector.Input("face_detector", tooltip="From 'Load Face Detector (CodeFormer)'."),
                threshold_input("Detection confidence needed to count as a face. Lower finds more (and more "
                                "false) faces."),
                io.Combo.Input("selection", options=list(SELECTIONS), default="all",
                               tooltip="Which faces per frame: all, the largest, the one nearest the centre, or "
                                       "the one at 'index' in 'sort_by' order."),
                io.Combo.Input("sort_by", options=list(SORT_KEYS), default="area",
                               tooltip="Order of faces within a frame (also used by 'index' and 'max_faces'): "
                                       "largest area first, left to right, or highest confidence first."),
                io.Int.Input("index", default=0, min=-64, max=64,
                             tooltip="With selection 'index': which face in sort order (0 = first, -1 = last). "
                                     "Frames with fewer faces get none."),
                io.Int.Input("max_faces", default=0, min=0, max=256,
                             tooltip="With selection 'all': at most this many faces per frame (0 = no limit)."),
                io.Int.Input("resolution", default=640, min=0, max=4096, step=32,
                             tooltip="Short side the frames are resized to for detection. 0 = original size. "
                                     "Larger finds small faces, slower."),
                io.Float.Input("smoothing", default=0.0, min=0.0, max=10.0, step=0.5,
                               tooltip="Video frames: steadier faces, less flicker. Each face's landmarks are "
                                       "smoothed along its track over time with a centred Gaussian of this many "
                                       "frames (sigma), so the face does not lag behind when it moves (the "
                                       "whole batch is searched first). Above 0 the faces are also tracked: a "
                                       "face missed for up to 3 frames is filled in, no track crosses a scene "
                                       "cut, and Restore Faces' temporal can use the tracks. 0 = off; 2 is a good "
                                       "start."),
                *face_size_inputs(),
                CodeFormerModel.Input("model", optional=True,
                                      tooltip="Optional: the face model the faces are for (from 'Load CodeFormer "
                                              "Model'). Faces are aligned at its crop size and with its alignment "
                                              "(e.g. 1024 px for GPEN-BFR-1024.onnx, ArcFace framing for "
                                              "GPEN-BFR-256.onnx). Leave it empty for CodeFormer (512 px)."),
            ],
            outputs=[
                Faces.Output(display_name="faces", tooltip="The detected faces: aligned crops plus what is "
                                                           "needed to paste them back."),
                io.Image.Output(display_name="crops", tooltip="The aligned face crops (512x512, or the connected "
                                                              "model's crop size) as an image batch (one image "
                                                              "per face)."),
                io.Mask.Output(display_name="mask", tooltip="Per input frame, where the faces are (1 = face "
                                                            "region)."),
                io.Int.Output(display_name="face_count", tooltip="Total number of faces found in the batch."),
            ],
        )

    @classmethod
    def validate_inputs(cls, selection, sort_by):
        return validation_result(check_choice("selection", selection, SELECTIONS),
                                 check_choice("sort_by", sort_by, SORT_KEYS))

    @classmethod
    def execute(cls, image, face_detector, threshold=0.8, selection="all", sort_by="area", index=0,
                max_faces=0, resolution=640, smoothing=0.0, min_size=0, max_size=0, model=None) -> io.NodeOutput:
        frames = pipeline.to_frames(image)
        crop_size, template = face_geometry(model)
        # the paste node's parse mask, fitted to the model's framing (ArcFace crops are parsed in FFHQ framing)
        parser = face_detector.parser if model is None else pipeline.parser_for_model(face_detector.parser, model)
        b, _, h, w = frames.shape
        detect_kwargs = dict(conf_threshold=float(threshold), selection=selection, sort_by=sort_by,
                             index=int(index), max_faces=int(max_faces), resolution=int(resolution) or None,
                             min_size=int(min_size), max_size=int(max_size))
        sigma = float(smoothing)
        done = b if sigma > 0 else 0     # the progress bar counts the first pass too
        bar = bridge.progress_bar(b + done)
        with bridge.on_compute_device([face_detector.detector.net],
                                      FRAME_WORK_BYTES * frames[0].numel()) as device:
            size = frames_per_chunk(frames, device)
            found = None
            if sigma > 0:   # first pass: every frame's faces, smoothed along each face's track (zero lag)
                found = pipeline.detect_clip((image[s:s + size] for s in range(0, b, size)), face_detector.detector,
                                             sigma, check_interrupt=bridge.check_interrupt,
                                             progress=lambda d, _t: bar(d), **detect_kwargs)

            def detect_chunk(start: int, stop: int):
                chunk = frames[start:stop].to(device)
                faces = pipeline.detect_faces(chunk, face_detector.detector, crop_size=crop_size, template=template,
                                              **detect_kwargs, detections=None
                                              if found is None else found.take_frames(range(start, stop)))
                _, mask = paste_faces(chunk, faces)
                bar(done + stop, b + done)
                return faces.to("cpu"), mask[:, 0].float().cpu()
            parts = run_in_chunks(b, size, detect_chunk, device=device, check_interrupt=bridge.check_interrupt,
                                  describe=frame_names(frames))
        meta = {"parser": parser, "framing": framing_of(crop_size, template)}
        if not parts:   # an empty image batch
            faces, mask = FaceBatch.empty(0, (h, w), crop_size), torch.zeros(0, h, w)
            faces = FaceBatch.join([faces], meta=meta)
        else:
            faces = FaceBatch.join([f for f, _ in parts], meta=meta)
            mask = torch.cat([m for _, m in parts])
        return io.NodeOutput(faces, crops_image(faces), mask, len(faces))


class CodeFormerCropsToImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CodeFormerCropsToImage",
            display_name="Face Crops to Image (CodeFormer)",
            category=CATEGORY,
            description=("Takes the face crops out of FACES as an IMAGE batch (one image per face), so any "
                         "image node (upscaler, detailer, diffusion pass, ...) can work on them; put them back "
                         "with 'Image to Face Crops (CodeFormer)'."),
            inputs=[Faces.Input("faces", tooltip="Faces from a detect / restore node.")],
            outputs=[
                io.Image.Output(display_name="crops", tooltip="The face crops, one image per face, in FACES order."),
                io.Int.Output(display_name="face_count", tooltip="Number of faces (images in the batch)."),
            ],
        )

    @classmethod
    def execute(cls, faces) -> io.NodeOutput:
        return io.NodeOutput(crops_image(faces), len(faces))


class CodeFormerImageToCrops(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CodeFormerImageToCrops",
            display_name="Image to Face Crops (CodeFormer)",
            category=CATEGORY,
            description=("Replaces the crops of FACES with an edited IMAGE batch (same number of images, in the "
                         "same order, square; any size: it is mapped onto the original crop when pasting)."),
            inputs=[
                Faces.Input("faces", tooltip="The faces whose crops are replaced."),
                io.Image.Input("crops", tooltip="Edited crops: one square image per face, in FACES order."),
            ],
            outputs=[
                Faces.Output(display_name="faces", tooltip="The same faces with the new crop pixels, ready for "
                                                           "paste-back or restoration."),
            ],
        )

    @classmethod
    def execute(cls, faces, crops) -> io.NodeOutput:
        n = int(crops.shape[0])
        if len(faces) == 0:   # nothing to replace (the crops are 'Face Crops to Image''s placeholder)
            return io.NodeOutput(faces)
        if n != len(faces):
            raise InputError(f"got {n} images for {len(faces)} faces; the crops image batch must have one "
                             f"image per face, in the order 'Face Crops to Image' gave them")
        if n and crops.shape[1] != crops.shape[2]:
            raise InputError(f"face crops must be square, got {crops.shape[2]}x{crops.shape[1]}; resize them "
                             f"back to a square (for example 512x512) first")
        return io.NodeOutput(faces.with_crops(pipeline.to_frames(crops), edited=True))
