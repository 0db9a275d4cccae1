"""Paste FACES back into their frames (optionally upscaling the whole image)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..codeformer_core import pipeline
from ..codeformer_core.chunks import run_in_chunks
from ..codeformer_core.errors import InputError
from ..codeformer_core.faces.masks import REGION_PRESETS, check_frame_masks, region_labels
from ..codeformer_core.faces.paste import PasteOptions, paste_bands
from . import comfy_bridge as bridge
from .common import (CATEGORY, FRAME_WORK_BYTES, Faces, check_choice, frame_names, max_memory_input, memory_budget,
                     validation_result, visibility_input)


class CodeFormerPasteFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CodeFormerPasteFaces",
            display_name="Paste Faces Back (CodeFormer)",
            category=CATEGORY,
            description=("Blends the (restored) face crops back into the original images with a soft mask: the "
                         "face-parsing mask when the detector loaded a parsing model, else a feathered square. "
                         "Can upscale the whole image, using an upscale model for the background."),
            inputs=[
                io.Image.Input("image", tooltip="The images the faces were detected in (same batch)."),
                Faces.Input("faces", tooltip="Faces to paste, e.g. from 'CodeFormer Restore Faces'."),
                visibility_input("pasted"),
                io.Boolean.Input("use_parsing", default=True,
                                 tooltip="Use the face-parsing mask (needs a parsing model in the face detector "
                                         "loader). Off = feathered square mask."),
                io.Boolean.Input("color_match", default=False,
                                 tooltip="Match the colour statistics of each new face to the original face "
                                         "(helps against colour shifts)."),
                io.Int.Input("feather", default=0, min=0, max=256,
                             tooltip="Edge softness in pixels of the square mask. 0 = automatic (scaled with the "
                                     "face size)."),
                io.Float.Input("upscale", default=1.0, min=1.0, max=8.0, step=0.5,
                               tooltip="Output size factor for the whole image. The background is resized "
                                       "(Lanczos), or upscaled with 'upscale_model' if given."),
                io.UpscaleModel.Input("upscale_model", optional=True,
                                      tooltip="Optional model from 'Load Upscale Model' for the background when "
                                              "upscale > 1."),
                io.Boolean.Input("upscale_faces", default=False, optional=True,
                                 tooltip="Also enlarge the restored faces with 'upscale_model' before pasting "
                                         "them (sharper faces in an upscaled image; the original's "
                                         "--face_upsample). Needs upscale_model."),
                max_memory_input(),
                io.Combo.Input("regions", options=list(REGION_PRESETS), default="face", optional=True,
                               tooltip="Which face-parsing regions take the restored pixels (needs use_parsing): "
                                       "face = the original CodeFormer's (skin, nose, glasses, eyes, brows, ears, "
                                       "mouth, lips, hair); face_keep_eyes / face_keep_mouth keep the original "
                                       "eyes / mouth and lips; skin_only; face_no_hair; face_and_hair adds hats."),
                io.String.Input("keep_regions", default="", optional=True,
                                tooltip="Regions whose original pixels stay, comma-separated, taken out of "
                                        "'regions' (needs use_parsing): skin, brows, eyes, glasses, ears, nose, "
                                        "mouth (inner mouth and teeth), lips, hair, hat, neck, cloth. Empty = none."),
                io.Int.Input("mask_grow", default=0, min=-128, max=128, optional=True,
                             tooltip="Grow the paste mask by this many pixels of the 512 face crop (negative "
                                     "shrinks it), parsing or square mask alike. 0 = as is."),
                io.Int.Input("mask_blur", default=0, min=0, max=128, optional=True,
                             tooltip="Soften the paste mask's edge: Gaussian blur of this many pixels of the 512 "
                                     "face crop, after mask_grow, parsing or square mask alike. 0 = as is."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional mask of the image size: restored pixels are pasted only where it "
                                      "is set (soft values blend). One mask for all images or one per image."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The images with the faces pasted back (size x "
                                                              "upscale)."),
                io.Mask.Output(display_name="mask", tooltip="Share of each output pixel that comes from the "
                                                            "pasted faces (0..1): the final blend weight (regions "
                                                            "x mask input x mask_grow / mask_blur x visibility)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, regions="face"):
        return validation_result(check_choice("regions", regions, REGION_PRESETS))

    @classmethod
    def execute(cls, image, faces, visibility=1.0, use_parsing=True, color_match=False, feather=0,
                upscale=1.0, upscale_model=None, upscale_faces=False, max_memory_gb=2.0, regions="face",
                keep_regions="", mask_grow=0, mask_blur=0, mask=None) -> io.NodeOutput:
        frames = pipeline.to_frames(image)
        if frames.shape[0] != faces.num_frames or tuple(frames.shape[-2:]) != tuple(faces.frame_size):
            raise InputError(f"the faces were found in {faces.num_frames} image(s) of {faces.frame_size[1]}x"
                             f"{faces.frame_size[0]}, but the image input has {frames.shape[0]} of "
                             f"{frames.shape[-1]}x{frames.shape[-2]}; connect the same image that went into "
                             f"'Detect Faces (CodeFormer)'")
        if frames.shape[0] == 0:
            return io.NodeOutput(image, torch.zeros(0, *frames.shape[-2:]))
        parser = faces.meta.get("parser") if use_parsing else None
        if use_parsing and parser is None and len(faces):
            raise InputError("use_parsing is on but no parsing model was loaded: choose parsing_parsenet.pth in "
                             "'Load Face Detector (CodeFormer)', or turn use_parsing off")
        if not use_parsing and (regions != "face" or (keep_regions or "").strip()):
            raise InputError("regions and keep_regions choose face-parsing regions: turn use_parsing on (with a "
                             "parsing model in 'Load Face Detector (CodeFormer)'), or leave them at face / empty")
        frame_masks = None if mask is None else check_frame_masks(mask, frames.shape[0], frames.shape[-2:])
        if upscale_faces and upscale_model is None:
            raise InputError("upscale_faces enlarges the faces with the upscale model: connect one from 'Load "
                             "Upscale Model' to upscale_model, or turn upscale_faces off")
        upscaler = bridge.upscale_with_model(upscale_model) if upscale_model is not None else None
        options = PasteOptions(upscale=float(upscale), visibility=float(visibility), color_match=bool(color_match),
                               feather=int(feather) or None, regions=region_labels(regions, keep_regions=keep_regions),
                               mask_grow=int(mask_grow), mask_blur=int(mask_blur))
        b, h, w = frames.shape[0], frames.shape[-2], frames.shape[-1]
        out_h, out_w = int(h * options.upscale), int(w * options.upscale)
        budget = memory_budget(max_memory_gb)
        # As the all-in-one node: frames in chunks, each pasted in bands of rows within the budget.
        images_out, masks_out = torch.empty(b, out_h, out_w, 3), torch.empty(b, out_h, out_w)
        bar = bridge.progress_bar(b)
        with bridge.on_compute_device([parser], FRAME_WORK_BYTES * frames[0].numel() * options.upscale ** 2) as device:
            def paste_chunk(start: int, stop: int) -> None:
                part = faces.take_frames(range(start, stop)).to(device)
                parse = pipeline.parse_masks_for(parser, part.crops, options.regions) \
                    if parser is not None and len(part) else None
                restored = upscaler(part.crops) if upscale_faces and len(part) else None
                for row0, out, band_mask in paste_bands(frames[start:stop].to(device), part, restored, options,
                                                   parse_masks=parse, background_upscaler=upscaler,
                                                   frame_masks=None if frame_masks is None else frame_masks[start:stop],
                                                   band_rows=pipeline.band_rows_for(out_w, stop - start, budget),
                                                   layer_bytes=budget // 4):
                    images_out[start:stop, row0:row0 + out.shape[2]] = pipeline.from_frames(out)
                    masks_out[start:stop, row0:row0 + out.shape[2]] = band_mask[:, 0].float().cpu()
                bar(stop, b)
            size = pipeline.auto_frames_per_chunk(h, w, device, options.upscale, budget=budget, output_whole=False)
            run_in_chunks(b, size, paste_chunk, device=device, check_interrupt=bridge.check_interrupt,
                          describe=frame_names(frames))
        return io.NodeOutput(images_out, masks_out)
