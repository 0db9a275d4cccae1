"""Detect faces, and move face crops in and out of FACES so any IMAGE node can edit them."""
from __future__ import annotations

from . import comfy_bridge as bridge
from ._common import (CATEGORY, DETECTOR_TYPE, FACES_TYPE, SELECTIONS, SORT_KEYS, concat_faces, core,
                      crops_image, frame_chunks)

CROP_BYTES = 3 * 512 * 512 * 4


class CodeFormerDetectFaces:
    DESCRIPTION = ("Finds faces in an image batch (or video frames), aligns each to a 512x512 crop and "
                   "returns them as FACES for the restore / colorize / inpaint and paste-back nodes. "
                   "Frames without a face pass through; the count output says how many were found.")
    CATEGORY = CATEGORY
    FUNCTION = "detect"
    RETURN_TYPES = (FACES_TYPE, "IMAGE", "MASK", "INT")
    RETURN_NAMES = ("faces", "crops", "mask", "face_count")
    OUTPUT_TOOLTIPS = ("The detected faces: aligned crops plus what is needed to paste them back.",
                       "The aligned 512x512 face crops as an image batch (one image per face).",
                       "Per input frame, where the faces are (1 = face region).",
                       "Total number of faces found in the batch.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Image batch or video frames to search for faces."}),
            "face_detector": (DETECTOR_TYPE, {"tooltip": "From 'Load Face Detector (CodeFormer)'."}),
            "threshold": ("FLOAT", {"default": 0.8, "min": 0.05, "max": 1.0, "step": 0.01,
                                    "tooltip": "Detection confidence needed to count as a face. Lower "
                                               "finds more (and more false) faces."}),
            "selection": (list(SELECTIONS), {"default": "all",
                                             "tooltip": "Which faces per frame: all, the largest, the one "
                                                        "nearest the centre, or the one at 'index' in "
                                                        "'sort_by' order."}),
            "sort_by": (list(SORT_KEYS), {"default": "area",
                                          "tooltip": "Order of faces within a frame (also used by 'index' "
                                                     "and 'max_faces'): largest area first, left to right, "
                                                     "or highest confidence first."}),
            "index": ("INT", {"default": 0, "min": -64, "max": 64,
                              "tooltip": "With selection 'index': which face in sort order (0 = first, "
                                         "-1 = last). Frames with fewer faces get none."}),
            "max_faces": ("INT", {"default": 0, "min": 0, "max": 256,
                                  "tooltip": "With selection 'all': at most this many faces per frame "
                                             "(0 = no limit)."}),
            "resolution": ("INT", {"default": 640, "min": 0, "max": 4096, "step": 32,
                                   "tooltip": "Short side the frames are resized to for detection. 0 = "
                                              "original size. Larger finds small faces, slower."}),
            "smoothing": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.95, "step": 0.05,
                                    "tooltip": "Temporal smoothing of face landmarks across consecutive "
                                               "frames (video) to reduce flicker. 0 = off."}),
        }}

    def detect(self, image, face_detector, threshold=0.8, selection="all", sort_by="area", index=0,
               max_faces=0, resolution=640, smoothing=0.0):
        pipeline, paste = core("pipeline"), core("faces.paste")
        frames = pipeline.to_frames(image)
        b, _, h, w = frames.shape
        smoother = pipeline.LandmarkSmoother(float(smoothing)) if smoothing > 0 else None
        kwargs = dict(conf_threshold=float(threshold), selection=selection, sort_by=sort_by, index=int(index),
                      max_faces=int(max_faces), resolution=int(resolution) or None)
        parts, masks, offsets = [], [], []
        bar = bridge.progress_bar(b)
        with bridge.on_compute_device([face_detector.detector.net], 16 * frames[0].numel() * 4 * 8) as device:
            for start, stop in frame_chunks(frames, device):
                bridge.check_interrupt()
                chunk = frames[start:stop].to(device)
                faces = pipeline.detect_faces(chunk, face_detector.detector, smoother=smoother, **kwargs)
                _, mask = paste.paste_faces(chunk, faces)
                parts.append(faces.to("cpu"))
                masks.append(mask[:, 0].float().cpu())
                offsets.append(start)
                bar(stop, b)
        import torch
        if not parts:
            faces, mask = core("faces.batch").FaceBatch.empty(0, (h, w)), torch.zeros(0, h, w)
        else:
            faces = concat_faces(parts, offsets, b, (h, w), meta={"parser": face_detector.parser})
            mask = torch.cat(masks)
        return (faces, crops_image(faces), mask, len(faces))


class CodeFormerCropsToImage:
    DESCRIPTION = ("Takes the face crops out of FACES as an IMAGE batch (one image per face), so any "
                   "image node (upscaler, detailer, diffusion pass, ...) can work on them; put them back "
                   "with 'Image to Face Crops (CodeFormer)'.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "INT")
    RETURN_NAMES = ("crops", "face_count")
    OUTPUT_TOOLTIPS = ("The face crops, one image per face, in FACES order.",
                       "Number of faces (images in the batch).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"faces": (FACES_TYPE, {"tooltip": "Faces from a detect / restore node."})}}

    def run(self, faces):
        return (crops_image(faces), len(faces))


class CodeFormerImageToCrops:
    DESCRIPTION = ("Replaces the crops of FACES with an edited IMAGE batch (same number of images, in the "
                   "same order, square; any size: it is mapped onto the original crop when pasting).")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = (FACES_TYPE,)
    RETURN_NAMES = ("faces",)
    OUTPUT_TOOLTIPS = ("The same faces with the new crop pixels, ready for paste-back or restoration.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "faces": (FACES_TYPE, {"tooltip": "The faces whose crops are replaced."}),
            "crops": ("IMAGE", {"tooltip": "Edited crops: one square image per face, in FACES order."}),
        }}

    def run(self, faces, crops):
        n = int(crops.shape[0])
        if n != len(faces):
            raise ValueError(f"got {n} images for {len(faces)} faces; the crops image batch must have one "
                             f"image per face, in the order 'Face Crops to Image' gave them")
        if n and crops.shape[1] != crops.shape[2]:
            raise ValueError(f"face crops must be square, got {crops.shape[2]}x{crops.shape[1]}; resize them "
                             f"back to a square (for example 512x512) first")
        return (faces.with_crops(core("pipeline").to_frames(crops), edited=True),)
