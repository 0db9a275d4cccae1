"""Paste FACES back into their frames (optionally upscaling the whole image)."""
from __future__ import annotations

from . import comfy_bridge as bridge
from ._common import CATEGORY, FACES_TYPE, core, faces_of_frames, frame_chunks


def upscale_inputs():
    return {
        "upscale": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 8.0, "step": 0.5,
                              "tooltip": "Output size factor for the whole image. The background is "
                                         "resized (Lanczos), or upscaled with 'upscale_model' if given."}),
    }


class CodeFormerPasteFaces:
    DESCRIPTION = ("Blends the (restored) face crops back into the original images with a soft mask: the "
                   "face-parsing mask when the detector loaded a parsing model, else a feathered square. "
                   "Can upscale the whole image, using an upscale model for the background.")
    CATEGORY = CATEGORY
    FUNCTION = "paste"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    OUTPUT_TOOLTIPS = ("The images with the faces pasted back (size x upscale).",
                       "Share of each output pixel that comes from the pasted faces (0..1).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The images the faces were detected in (same batch)."}),
            "faces": (FACES_TYPE, {"tooltip": "Faces to paste, e.g. from 'CodeFormer Restore Faces'."}),
            "visibility": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                     "tooltip": "Opacity of the pasted faces: 1 = fully replaced, 0 = "
                                                "original image."}),
            "use_parsing": ("BOOLEAN", {"default": True,
                                        "tooltip": "Use the face-parsing mask (needs a parsing model in the "
                                                   "face detector loader). Off = feathered square mask."}),
            "color_match": ("BOOLEAN", {"default": False,
                                        "tooltip": "Match the colour statistics of each new face to the "
                                                   "original face (helps against colour shifts)."}),
            "feather": ("INT", {"default": 0, "min": 0, "max": 256,
                                "tooltip": "Edge softness in pixels of the square mask. 0 = automatic "
                                           "(scaled with the face size)."}),
            **upscale_inputs(),
        }, "optional": {
            "upscale_model": ("UPSCALE_MODEL", {"tooltip": "Optional model from 'Load Upscale Model' for the "
                                                           "background when upscale > 1."}),
        }}

    def paste(self, image, faces, visibility=1.0, use_parsing=True, color_match=False, feather=0,
              upscale=1.0, upscale_model=None):
        pipeline, paste = core("pipeline"), core("faces.paste")
        frames = pipeline.to_frames(image)
        if frames.shape[0] != faces.num_frames or tuple(frames.shape[-2:]) != tuple(faces.frame_size):
            raise ValueError(f"the faces were found in {faces.num_frames} image(s) of "
                             f"{faces.frame_size[1]}x{faces.frame_size[0]}, but the image input has "
                             f"{frames.shape[0]} of {frames.shape[-1]}x{frames.shape[-2]}; connect the same "
                             f"image that went into 'Detect Faces'")
        parser = faces.meta.get("parser") if use_parsing else None
        if use_parsing and parser is None and len(faces):
            raise ValueError("use_parsing is on but no parsing model was loaded: choose parsing_parsenet.pth in "
                             "'Load Face Detector (CodeFormer)', or turn use_parsing off")
        upscaler = bridge.upscale_with_model(upscale_model) if upscale_model is not None else None
        images, masks = [], []
        bar = bridge.progress_bar(frames.shape[0])
        with bridge.on_compute_device([parser], 16 * frames[0].numel() * 4 * 8 * upscale ** 2) as device:
            for start, stop in frame_chunks(frames, device, float(upscale)):
                bridge.check_interrupt()
                part = faces_of_frames(faces, start, stop).to(device)
                parse = pipeline.parse_masks_for(parser, part.crops) if parser is not None and len(part) else None
                out, mask = paste.paste_faces(frames[start:stop].to(device), part, upscale=float(upscale),
                                              parse_masks=parse, visibility=float(visibility),
                                              color_match=bool(color_match), feather=int(feather) or None,
                                              background_upscaler=upscaler)
                images.append(pipeline.from_frames(out))
                masks.append(mask[:, 0].float().cpu())
                bar(stop, frames.shape[0])
        import torch
        return (torch.cat(images), torch.cat(masks))
