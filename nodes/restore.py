"""CodeFormer on FACES: restore (fidelity w), colorize, inpaint. One network batch at a time,
with a progress bar counting faces and a cancel check between batches."""
from __future__ import annotations

from . import comfy_bridge as bridge
from ._common import CATEGORY, FACES_TYPE, MODEL_TYPE, NETWORK_BATCH, W_TOOLTIP, core, crops_image

RETURNS = (FACES_TYPE, "IMAGE")
NAMES = ("faces", "crops")
# Rough activation memory of one 512x512 CodeFormer forward, for free_memory before a batch.
FORWARD_BYTES = 600 * 2 ** 20


def _run(model, faces, task: str, step):
    """Checks the variant first (clear error, nothing moved), then runs ``step`` on the device."""
    pipeline = core("pipeline")
    pipeline.check_variant(model, task)
    if len(faces) == 0:
        return (faces, crops_image(faces))
    bar = bridge.progress_bar(len(faces))
    with bridge.on_compute_device([model], FORWARD_BYTES * min(len(faces), NETWORK_BATCH)):
        out = step(pipeline, dict(batch_size=NETWORK_BATCH, progress=bar, check_interrupt=bridge.check_interrupt))
    out = out.to("cpu")
    return (out, crops_image(out))


def _model_input(tip: str):
    return (MODEL_TYPE, {"tooltip": tip})


_FACES_IN = (FACES_TYPE, {"tooltip": "Faces from 'Detect Faces (CodeFormer)' (or another face node)."})
_OUT_TIPS = ("The faces with the new crops, for 'Paste Faces Back (CodeFormer)'.",
             "The new crops as an image batch (one image per face), e.g. for a preview.")


class CodeFormerRestoreFaces:
    DESCRIPTION = ("Restores the face crops with CodeFormer (restoration model). w trades quality for "
                   "fidelity: 0 = strongest restoration, 1 = closest to the input.")
    CATEGORY = CATEGORY
    FUNCTION = "restore"
    RETURN_TYPES = RETURNS
    RETURN_NAMES = NAMES
    OUTPUT_TOOLTIPS = _OUT_TIPS

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": _model_input("CodeFormer restoration model (codeformer.pth) from 'Load CodeFormer Model'."),
            "faces": _FACES_IN,
            "w": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": W_TOOLTIP}),
        }}

    def restore(self, model, faces, w=0.5):
        return _run(model, faces, "restore", lambda p, kw: p.restore_faces(model, faces, w=float(w), **kw))


class CodeFormerColorizeFaces:
    DESCRIPTION = ("Colorizes gray or faded face crops with the CodeFormer colorization model; the "
                   "pasted faces stay in colour even on a black-and-white photo.")
    CATEGORY = CATEGORY
    FUNCTION = "colorize"
    RETURN_TYPES = RETURNS
    RETURN_NAMES = NAMES
    OUTPUT_TOOLTIPS = _OUT_TIPS

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": _model_input("CodeFormer colorization model (codeformer_colorization.pth)."),
            "faces": _FACES_IN,
        }}

    def colorize(self, model, faces):
        return _run(model, faces, "colorize", lambda p, kw: p.colorize_faces(model, faces, **kw))


class CodeFormerInpaintFaces:
    DESCRIPTION = ("Fills holes in the face crops with the CodeFormer inpainting model. The hole is the "
                   "mask (in image space, e.g. from the mask editor of Load Image), warped into each crop; "
                   "without a mask, pure-white crop pixels are the hole. Pixels outside it are kept.")
    CATEGORY = CATEGORY
    FUNCTION = "inpaint"
    RETURN_TYPES = RETURNS
    RETURN_NAMES = NAMES
    OUTPUT_TOOLTIPS = _OUT_TIPS

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": _model_input("CodeFormer inpainting model (codeformer_inpainting.pth)."),
            "faces": _FACES_IN,
        }, "optional": {
            "mask": ("MASK", {"tooltip": "Hole to fill, 1 = fill, the size of the image the faces were "
                                         "detected in (one mask, or one per frame)."}),
        }}

    def inpaint(self, model, faces, mask=None):
        if mask is not None and mask.dim() == 2:
            mask = mask[None]
        return _run(model, faces, "inpaint", lambda p, kw: p.inpaint_faces(model, faces, mask, **kw))
