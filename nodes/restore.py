"""CodeFormer on FACES: restore (fidelity w), colorize, inpaint. One network batch at a time,
with a progress bar counting faces and a cancel check between batches."""
from __future__ import annotations

from typing import Callable

from comfy_api.latest import io

from ..codeformer_core import pipeline
from ..codeformer_core.errors import InputError, NotAFaceModelError, WrongVariantError
from ..codeformer_core.faces.batch import FaceBatch
from ..codeformer_core.faces.masks import check_frame_masks
from ..codeformer_core.models.face_model import FaceModel
from ..codeformer_core.tasks import BY_VARIANT, TASKS
from ..codeformer_core.weights import registry
from . import comfy_bridge as bridge
from .common import (CATEGORY, ONNX_W_TIP, W_TOOLTIP, CodeFormerModel, Faces, crops_image, face_geometry,
                     framing_of, network_batch, w_input)

FACES_INPUT_TIP = "Faces from 'Detect Faces (CodeFormer)' (or another face node)."
FACES_OUTPUT_TIP = "The faces with the new crops, for 'Paste Faces Back (CodeFormer)'."
TEMPORAL_TIP = ("Video frames: less flicker. Each face's codebook choices are combined along its track over a "
                "Gaussian of this many frames (sigma), so a face that barely moves keeps its details from frame "
                "to frame. Needs faces tracked by 'Detect Faces (CodeFormer)' with smoothing above 0. Costs the "
                "encoder a second time per face. 0 = off (each frame on its own); 2 is a good start.")
CROPS_OUTPUT_TIP = "The new crops as an image batch (one image per face), e.g. for a preview."


class FaceStepNode(io.ComfyNode):
    """Base of the three CodeFormer steps on FACES: model + faces (+ extra inputs) in, faces + crops out.
    Each step names its task, node id, texts and extra inputs, and runs its core function in ``execute``."""

    TASK = NODE_ID = DISPLAY_NAME = ABOUT = MODEL_TIP = ""
    MODEL_SOCKET = CodeFormerModel

    @classmethod
    def extra_inputs(cls) -> list:
        return []

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.NODE_ID, display_name=cls.DISPLAY_NAME, category=CATEGORY, description=cls.ABOUT,
            inputs=[cls.MODEL_SOCKET.Input("model", tooltip=cls.MODEL_TIP),
                    Faces.Input("faces", tooltip=FACES_INPUT_TIP), *cls.extra_inputs()],
            outputs=[Faces.Output(display_name="faces", tooltip=FACES_OUTPUT_TIP),
                     io.Image.Output(display_name="crops", tooltip=CROPS_OUTPUT_TIP)],
        )

    @classmethod
    def run_on_faces(cls, model, faces: FaceBatch, step: Callable[..., FaceBatch]) -> io.NodeOutput:
        """Checks the variant first (clear error, nothing moved), then runs ``step`` on the compute device."""
        require_variant(model, cls.TASK)
        require_framing(model, faces)
        if len(faces) == 0:
            return io.NodeOutput(faces, crops_image(faces))
        bar = bridge.progress_bar(len(faces))
        batch = network_batch()
        with bridge.on_compute_device([model], pipeline.forward_bytes_per_face(model) * min(len(faces), batch)):
            out = step(batch_size=batch, progress=bar, check_interrupt=bridge.check_interrupt)
        out = out.to("cpu")
        return io.NodeOutput(out, crops_image(out))


def require_variant(model, task: str) -> None:
    """The core's variant check, its WrongVariantError worded for the node graph (which node to use)."""
    try:
        pipeline.check_variant(model, task)
    except WrongVariantError as err:
        other = BY_VARIANT.get(err.have)
        use = f"use the '{FACE_NODES[other.name].DISPLAY_NAME}' node for it, or " if other else ""
        weight = registry.get_entry(TASKS[task].weight).file
        raise WrongVariantError(err.have, err.want, f"'{FACE_NODES[task].DISPLAY_NAME}' needs the {err.want} "
                                                    f"model, but the connected model is the {err.have} variant; "
                                                    f"{use}load {weight} in 'Load CodeFormer Model'") from None


def require_framing(model, faces: FaceBatch) -> None:
    """Faces aligned for another framing than the model's (an ArcFace-template ONNX model on faces
    'Detect Faces' aligned the FFHQ way, or the other way round) are refused, saying what to connect.
    Only the crop size differing is fine: the crops are resized to the model's (connect the model to
    'Detect Faces' for full-resolution crops)."""
    have = faces.meta.get("framing")
    size, template = face_geometry(model)
    if have is not None and tuple(have) != framing_of(size, template):
        name = getattr(model, "name", "the connected model")
        raise InputError(f"these faces were aligned for another face model than {name}, which needs its own "
                         f"face alignment; connect the model to the 'model' input of 'Detect Faces (CodeFormer)' "
                         f"too")


class CodeFormerRestoreFaces(FaceStepNode):
    TASK, NODE_ID, DISPLAY_NAME = "restore", "CodeFormerRestoreFaces", "CodeFormer Restore Faces"
    ABOUT = ("Restores the face crops with CodeFormer (restoration model), or with an ONNX face model (.onnx) "
             "loaded by 'Load CodeFormer Model'. w trades quality for fidelity: 0 = strongest restoration, "
             "1 = closest to the input.")
    MODEL_TIP = ("CodeFormer restoration model (codeformer.pth) or an ONNX face model (e.g. GPEN-BFR-512.onnx) "
                 "from 'Load CodeFormer Model'; connect it to 'Detect Faces' too when its crop size or "
                 "alignment is not CodeFormer's.")

    @classmethod
    def extra_inputs(cls) -> list:
        return [w_input(tooltip=W_TOOLTIP + ONNX_W_TIP),
                io.Float.Input("temporal", default=0.0, min=0.0, max=10.0, step=0.5, optional=True,
                               tooltip=TEMPORAL_TIP)]

    @classmethod
    def execute(cls, model, faces, w=0.5, temporal=0.0) -> io.NodeOutput:
        return cls.run_on_faces(model, faces, lambda **kw: pipeline.restore_faces(model, faces, w=float(w),
                                                                                   temporal=float(temporal), **kw))


class CodeFormerColorizeFaces(FaceStepNode):
    TASK, NODE_ID, DISPLAY_NAME = "colorize", "CodeFormerColorizeFaces", "CodeFormer Colorize Faces"
    ABOUT = ("Colorizes gray or faded face crops with the CodeFormer colorization model; the pasted faces stay "
             "in colour even on a black-and-white photo.")
    MODEL_TIP = "CodeFormer colorization model (codeformer_colorization.pth)."

    @classmethod
    def execute(cls, model, faces) -> io.NodeOutput:
        return cls.run_on_faces(model, faces, lambda **kw: pipeline.colorize_faces(model, faces, **kw))


class CodeFormerInpaintFaces(FaceStepNode):
    TASK, NODE_ID, DISPLAY_NAME = "inpaint", "CodeFormerInpaintFaces", "CodeFormer Inpaint Faces"
    ABOUT = ("Fills holes in the face crops with the CodeFormer inpainting model. The hole is the mask (in image "
             "space, e.g. from the mask editor of Load Image), warped into each crop; without a mask, pure-white "
             "crop pixels are the hole. Pixels outside it are kept.")
    MODEL_TIP = "CodeFormer inpainting model (codeformer_inpainting.pth)."

    @classmethod
    def extra_inputs(cls) -> list:
        return [io.Mask.Input("mask", optional=True,
                              tooltip="Hole to fill, 1 = fill, the size of the image the faces were detected in "
                                      "(one mask, or one per frame).")]

    @classmethod
    def execute(cls, model, faces, mask=None) -> io.NodeOutput:
        if mask is not None:
            mask = check_frame_masks(mask, faces.num_frames, faces.frame_size)   # before any work
        return cls.run_on_faces(model, faces, lambda **kw: pipeline.inpaint_faces(model, faces, mask, **kw))


class CodeFormerRestoreFacesWithModel(FaceStepNode):
    TASK, NODE_ID = "restore", "CodeFormerRestoreFacesWithModel"
    DISPLAY_NAME = "Restore Faces with Face Model (CodeFormer)"
    ABOUT = ("Restores the face crops with another face-restoration model loaded by 'Load Upscale Model': "
             "GFPGAN (v1.2-1.4), RestoreFormer, or CodeFormer where spandrel-extra-arches is installed. Same "
             "faces in and out as 'CodeFormer Restore Faces', so detection and paste-back stay the same.")
    MODEL_TIP = ("A face model from 'Load Upscale Model' (e.g. GFPGANv1.4.pth or RestoreFormer.pth in "
                 "models/upscale_models). An ordinary upscaler is refused.")
    MODEL_SOCKET = io.UpscaleModel

    @classmethod
    def execute(cls, model, faces) -> io.NodeOutput:
        try:
            face_model = FaceModel(model, name="the connected model")
        except NotAFaceModelError as e:
            raise NotAFaceModelError(e.name, e.architecture, e.purpose, e.scale,
                                     f"{e}; connect a face model (GFPGANv1.4.pth, RestoreFormer.pth) here, and "
                                     f"an upscaler to the upscale_model input of 'Paste Faces Back "
                                     f"(CodeFormer)'") from None
        return cls.run_on_faces(face_model, faces, lambda **kw: pipeline.restore_faces(face_model, faces, **kw))


FACE_NODES = {node.TASK: node for node in (CodeFormerRestoreFaces, CodeFormerColorizeFaces, CodeFormerInpaintFaces)}
