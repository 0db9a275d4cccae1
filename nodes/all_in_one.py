"""One node for the common case: detect, restore and paste back every face of an image batch."""
from __future__ import annotations

from . import comfy_bridge as bridge
from ._common import CATEGORY, DETECTOR_TYPE, MODEL_TYPE, NETWORK_BATCH, W_TOOLTIP, core
from .restore import FORWARD_BYTES

ALL_IN_ONE_SELECTIONS = ("all", "largest", "center")


class CodeFormerRestoreFacesAllInOne:
    DESCRIPTION = ("Finds, restores and pastes back every face of an image batch in one step. With a "
                   "colorization or inpainting model it colorizes / inpaints instead (by the model's "
                   "variant). For more control use the modular nodes (Detect -> Restore -> Paste).")
    CATEGORY = CATEGORY
    FUNCTION = "restore"
    RETURN_TYPES = ("IMAGE", "MASK", "INT")
    RETURN_NAMES = ("image", "mask", "face_count")
    OUTPUT_TOOLTIPS = ("The images with restored faces (frames without a face are unchanged).",
                       "Share of each pixel that comes from restored faces (0..1).",
                       "Total number of faces restored.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Image batch or video frames."}),
            "model": (MODEL_TYPE, {"tooltip": "From 'Load CodeFormer Model'."}),
            "face_detector": (DETECTOR_TYPE, {"tooltip": "From 'Load Face Detector (CodeFormer)'; its parsing "
                                                         "model (if any) shapes the paste-back mask."}),
            "w": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": W_TOOLTIP}),
            "visibility": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                     "tooltip": "Opacity of the restored faces: 1 = fully replaced, 0 = "
                                                "original image."}),
            "selection": (list(ALL_IN_ONE_SELECTIONS), {"default": "all",
                                                        "tooltip": "Restore all faces, only the largest, or "
                                                                   "only the one nearest the centre of "
                                                                   "each frame."}),
            "threshold": ("FLOAT", {"default": 0.8, "min": 0.05, "max": 1.0, "step": 0.01,
                                    "tooltip": "Detection confidence needed to count as a face."}),
        }}

    def restore(self, image, model, face_detector, w=0.5, visibility=1.0, selection="all", threshold=0.8):
        pipeline = core("pipeline")
        task = {v: t for t, v in pipeline.TASK_VARIANT.items()}.get(getattr(model, "variant", None), "restore")
        pipeline.check_variant(model, task)
        frames = int(image.shape[0]) if image.dim() == 4 else 1
        bar = bridge.progress_bar(frames)
        modules = [model, face_detector.detector.net, face_detector.parser]
        with bridge.on_compute_device(modules, FORWARD_BYTES * NETWORK_BATCH):
            result = pipeline.restore_images(
                image, model, face_detector.detector, w=float(w), task=task, visibility=float(visibility),
                parser=face_detector.parser, batch_size=NETWORK_BATCH, progress=bar,
                check_interrupt=bridge.check_interrupt, conf_threshold=float(threshold), selection=selection)
        return (result.images, result.mask, result.total_faces)
