"""Issue 14: every node output that can be empty (no face found) feeds ComfyUI's own Preview Image
and Save Image. Run in this process with the real ComfyUI 0.3.64: one prompt through ComfyUI's
validation and executor, and the other face steps' crops straight into the real preview nodes.
The threshold is 1.0, so the detector runs and finds nothing: no CodeFormer forward."""
from __future__ import annotations

import asyncio
import uuid

import pytest
import torch

from helpers import empty_outputs_prompt, load_comfy_extras, prompt_node, run_node

NO_FACE = 1.0


@pytest.fixture(scope="module")
def N(comfyui):
    assert load_comfy_extras(comfyui, "nodes_mask.py")          # MaskToImage, to preview masks
    return comfyui.nodes.NODE_CLASS_MAPPINGS


def infos(N) -> dict:
    return {k: v.GET_NODE_INFO_V1() for k, v in N.items() if k.startswith("CodeFormer")}


class Sink:
    """What ComfyUI's executor needs of its PromptServer; records the messages."""

    def __init__(self):
        self.client_id, self.last_node_id, self.messages = None, None, []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))


def test_every_empty_output_feeds_preview_and_save(comfyui, N):
    prompt, previews = empty_outputs_prompt(infos(N))
    valid, error, outputs, node_errors = asyncio.run(comfyui.execution.validate_prompt(str(uuid.uuid4()),
                                                                                        prompt, None))
    assert valid, (error, node_errors)
    sink = Sink()
    executor = comfyui.execution.PromptExecutor(sink)
    executor.execute(prompt, str(uuid.uuid4()), {"client_id": "tests"}, outputs)
    errors = [d for e, d in sink.messages if e == "execution_error"]
    assert executor.success and not errors, errors[0]["exception_message"] if errors else None
    shown = {d["node"]: d["output"] for e, d in sink.messages if e == "executed"}
    for what, nodes in previews.items():
        for node in nodes:
            assert shown.get(node, {}).get("images"), f"{what}: nothing shown by {prompt[node]['class_type']}"
    cache = executor.caches.outputs
    assert cache.get("4")[3][0] == 0 and cache.get("9")[2][0] == 0 and cache.get("6")[1][0] == 0  # counts: 0
    placeholder = cache.get("4")[1][0]
    assert placeholder.shape == (1, 64, 64, 3) and placeholder.max() == 0
    image = cache.get("1")[0][0]
    assert torch.equal(cache.get("8")[0][0], image) and torch.equal(cache.get("9")[0][0], image)


@pytest.mark.parametrize("step", ["CodeFormerColorizeFaces", "CodeFormerInpaintFaces",
                                  "CodeFormerRestoreFacesWithModel"])
def test_other_face_steps_crops_feed_preview_and_save(comfyui, N, synthetic_model, astronaut_image, step):
    (detector,) = run_node(N["CodeFormerFaceDetectorLoader"], detector_model="detection_mobilenet0.25_Final.pth",
                           parsing_model="none")
    faces, *_ = run_node(N["CodeFormerDetectFaces"], image=astronaut_image, face_detector=detector,
                         **prompt_node(infos(N), "CodeFormerDetectFaces", threshold=NO_FACE)["inputs"])
    if step == "CodeFormerRestoreFacesWithModel":
        pytest.importorskip("spandrel")
        import spandrel
        from codeformer_core.dev.face_models import random_restoreformer
        model = spandrel.ModelLoader().load_from_state_dict(random_restoreformer())
    else:
        model = synthetic_model("colorization" if step == "CodeFormerColorizeFaces" else "inpainting")
    out, crops = run_node(N[step], model=model, faces=faces)
    assert len(out) == 0 and crops.shape == (1, 64, 64, 3)
    preview = N["PreviewImage"]().save_images(images=crops)
    saved = N["SaveImage"]().save_images(images=crops, filename_prefix="empty_step")
    assert preview["ui"]["images"] and saved["ui"]["images"]


def test_node_out_of_memory_names_the_frame(comfyui, N, astronaut_image, monkeypatch):
    """The allocator refuses (as the CPU allocator words it): after the halving, one line naming the
    frame and its size, not the allocator's text."""
    def refuse(self, x):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 3276800000 bytes.")
    (detector,) = run_node(N["CodeFormerFaceDetectorLoader"], detector_model="detection_mobilenet0.25_Final.pth",
                           parsing_model="none")
    monkeypatch.setattr(type(detector.detector.net), "forward", refuse)   # the pack's own RetinaFace class
    frames = torch.cat([astronaut_image, astronaut_image])
    with pytest.raises(comfyui.pack.codeformer_core.errors.NotEnoughMemoryError) as info:
        run_node(N["CodeFormerDetectFaces"], image=frames, face_detector=detector,
                 **prompt_node(infos(N), "CodeFormerDetectFaces")["inputs"])
    assert str(info.value) == "not enough memory for frame 1 of 2 (256x256 pixels), even on its own"
