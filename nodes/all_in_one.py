"""One node for the common case: detect, restore and paste back every face of an image batch."""
from __future__ import annotations

from comfy_api.latest import io

from ..codeformer_core import pipeline
from ..codeformer_core.faces.detect import DetectOptions
from ..codeformer_core.faces.paste import PasteOptions
from . import comfy_bridge as bridge
from .common import (CATEGORY, ONNX_W_TIP, W_TOOLTIP, CodeFormerModel, FaceDetector, check_choice, face_size_inputs,
                     max_memory_input, memory_budget, network_batch, threshold_input, validation_result,
                     visibility_input, w_input)

ALL_IN_ONE_SELECTIONS = ("all", "largest", "center")


class CodeFormerRestoreFacesAllInOne(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CodeFormerRestoreFacesAllInOne",
            display_name="Restore Faces (CodeFormer, all-in-one)",
            category=CATEGORY,
            description=("Finds, restores and pastes back every face of an image batch in one step. With a "
                         "colorization or inpainting model it colorizes / inpaints instead (by the model's "
                         "variant). An ONNX face model (.onnx from 'Load CodeFormer Model') restores at its own "
                         "crop size and alignment. For more control use the modular nodes (Detect -> Restore "
                         "-> Paste)."),
            inputs=[
                io.Image.Input("image", tooltip="Image batch or video frames."),
                CodeFormerModel.Input("model", tooltip="From 'Load CodeFormer Model': CodeFormer weights or an "
                                                       "ONNX face model (.onnx)."),
                FaceDetector.Input("face_detector", tooltip="From 'Load Face Detector (CodeFormer)'; its parsing "
                                                            "model (if any) shapes the paste-back mask."),
                w_input(tooltip=W_TOOLTIP + ONNX_W_TIP),
                visibility_input(),
                io.Combo.Input("selection", options=list(ALL_IN_ONE_SELECTIONS), default="all",
                               tooltip="Restore all faces, only the largest, or only the one nearest the centre "
                                       "of each frame."),
                threshold_input("Detection confidence needed to count as a face."),
                max_memory_input(),
                *face_size_inputs(),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The images with restored faces (frames without a "
                                                              "face are unchanged)."),
                io.Mask.Output(display_name="mask", tooltip="Share of each pixel that comes from restored faces "
                                                            "(0..1)."),
                io.Int.Output(display_name="face_count", tooltip="Total number of faces restored."),
            ],
        )

    @classmethod
    def validate_inputs(cls, selection):
        return validation_result(check_choice("selection", selection, ALL_IN_ONE_SELECTIONS))

    @classmethod
    def execute(cls, image, model, face_detector, w=0.5, visibility=1.0, selection="all",
                threshold=0.8, max_memory_gb=2.0, min_size=0, max_size=0) -> io.NodeOutput:
        task = pipeline.model_task(model)   # the model's own task: restore, colorize or inpaint
        frames = int(image.shape[0]) if image.dim() == 4 else 1
        modules = [model, face_detector.detector.net, face_detector.parser]
        run = pipeline.RunOptions(batch_size=network_batch(), progress=bridge.progress_bar(frames),
                                  check_interrupt=bridge.check_interrupt,
                                  memory_budget=memory_budget(max_memory_gb))
        with bridge.on_compute_device(modules, pipeline.forward_bytes_per_face(model) * run.batch_size):
            result = pipeline.restore_images(
                image, model, face_detector.detector, w=float(w), task=task,
                detect=DetectOptions(conf_threshold=float(threshold), selection=selection,
                                     min_size=int(min_size), max_size=int(max_size)),
                paste=pipeline.PasteSettings(PasteOptions(visibility=float(visibility)),
                                             parser=face_detector.parser),
                run=run)
        return io.NodeOutput(result.images, result.mask, result.total_faces)
