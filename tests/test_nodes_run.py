"""The nodes run through their V3 entry points inside the real ComfyUI (headless, CPU), on synthetic
weight files in ComfyUI's model folders.

CodeFormer forwards cost seconds on a CPU, so the detected and restored faces are shared through
module-scoped fixtures (one face: selection 'largest').
"""
from __future__ import annotations

import pytest
import torch

from helpers import load_comfy_extras, run_node

DETECT = dict(threshold=0.7, selection="largest", sort_by="area", index=0, max_faces=0, resolution=640,
              smoothing=0.0)


@pytest.fixture(scope="module")
def model(N):
    m, variant = run_node(N["CodeFormerModelLoader"], model_name="codeformer.pth", dtype="auto")
    assert variant == "restoration"
    return m


@pytest.fixture(scope="module")
def batch(astronaut_image):
    """Two frames: the astronaut and a flat gray frame (no face)."""
    return torch.cat([astronaut_image, torch.full_like(astronaut_image, 0.5)])


@pytest.fixture(scope="module")
def detected(N, node_detector, batch):
    return run_node(N["CodeFormerDetectFaces"], image=batch, face_detector=node_detector, **DETECT)


@pytest.fixture(scope="module")
def restored(N, comfyui, model, detected):
    """Restore Faces on the detected face, with ComfyUI's progress hook and memory calls recorded."""
    events, freed = [], []
    free_memory = comfyui.mm.free_memory

    def recorded_free_memory(need, device, *args, **kwargs):   # ComfyUI's own free_memory still runs
        freed.append((need, device))
        return free_memory(need, device, *args, **kwargs)
    comfyui.utils.set_progress_bar_global_hook(lambda v, t, preview, node_id=None: events.append((v, t)))
    mp = pytest.MonkeyPatch()
    mp.setattr(comfyui.mm, "free_memory", recorded_free_memory)
    try:
        out = run_node(N["CodeFormerRestoreFaces"], model=model, faces=detected[0], w=0.5)
    finally:
        mp.undo()
        comfyui.utils.set_progress_bar_global_hook(None)
    return out, events, freed


def test_loader_lists_files_and_official_names(N):
    info = N["CodeFormerModelLoader"].GET_NODE_INFO_V1()["input"]["required"]
    assert {"codeformer.pth", "codeformer_colorization.pth", "codeformer_inpainting.pth"} <= \
        set(info["model_name"][1]["options"])
    assert info["model_name"][1]["default"] == "codeformer.pth"
    det = N["CodeFormerFaceDetectorLoader"].GET_NODE_INFO_V1()["input"]["required"]
    assert "detection_mobilenet0.25_Final.pth" in det["detector_model"][1]["options"]  # offered, downloaded on use
    assert "parsing_parsenet.pth" not in det["detector_model"][1]["options"]
    parsers = det["parsing_model"][1]["options"]
    assert parsers[0] == "none" and "parsing_parsenet.pth" in parsers


def test_model_sits_on_offload_device(model):
    assert next(model.parameters()).device.type == "cpu"
    # ComfyUI's should_use_fp16 says no on the CPU: float32, or CodeFormer's CPU bf16 policy
    # (loader.codeformer_dtype, on CPUs with native bf16) whose encoder stays float32
    assert model.conv_dtype in (torch.float32, torch.bfloat16)
    assert set(model.encoder_dtypes) == {torch.float32}


def test_auto_dtype_follows_comfy(N, comfyui, monkeypatch):
    monkeypatch.setattr(comfyui.mm, "should_use_fp16", lambda *a, **k: True)  # as on a GPU that runs fp16 well
    m, _ = run_node(N["CodeFormerModelLoader"], model_name="codeformer.pth", dtype="auto")
    assert m.conv_dtype == torch.float16


def test_detect_outputs(detected):
    faces, crops, mask, count = detected
    assert count == len(faces) == 1 and faces.counts_per_frame().tolist() == [1, 0]
    assert crops.shape == (1, 512, 512, 3) and crops.dtype == torch.float32
    assert mask.shape == (2, 256, 256) and mask[0].max() > 0.5 and mask[1].max() == 0
    assert faces.crops.device.type == "cpu" and faces.meta["parser"] is not None


def test_detect_in_chunks_equals_one_chunk(N, comfyui, node_detector, batch, detected, monkeypatch):
    """A video split into one-frame chunks (little memory) gives the same faces and masks."""
    monkeypatch.setattr(comfyui.pack.codeformer_core.pipeline, "auto_frames_per_chunk", lambda *a, **k: 1)
    faces, crops, mask, count = run_node(N["CodeFormerDetectFaces"], image=batch.flip(0), face_detector=node_detector,
                                         **DETECT)
    assert count == 1 and faces.frame_index.tolist() == [1] and faces.num_frames == 2
    assert torch.allclose(crops, detected[1], atol=1e-5) and torch.allclose(mask, detected[2].flip(0), atol=1e-5)


def test_restore_progress_memory_and_crops(restored, detected):
    (faces, crops), events, freed = restored
    assert len(faces) == 1 and crops.shape == (1, 512, 512, 3)
    assert not torch.equal(faces.crops, detected[0].crops)
    assert events and events[-1] == (1, 1)          # the progress bar counts faces
    assert freed and freed[0][0] > 300 * 2 ** 20    # room for the model and a forward asked of ComfyUI


def test_paste_back(N, restored, batch):
    faces = restored[0][0]
    image, mask = run_node(N["CodeFormerPasteFaces"], image=batch, faces=faces, visibility=1.0, use_parsing=True,
                           color_match=False, feather=0, upscale=1.0)
    assert image.shape == batch.shape and mask.shape == batch.shape[:3]
    assert torch.equal(image[1], batch[1])                     # no face: frame unchanged
    changed = (image[0] - batch[0]).abs().amax(-1) > 1e-4
    assert changed.any() and not changed[mask[0] == 0].any()   # only pixels under the mask change
    zero, _ = run_node(N["CodeFormerPasteFaces"], image=batch, faces=faces, visibility=0.0, use_parsing=False,
                       color_match=False, feather=0, upscale=1.0)
    assert torch.allclose(zero, batch, atol=1e-6)              # visibility 0 = original


def test_paste_upscale_model_goes_through_comfy(N, comfyui, detected, batch):
    """A (tiny, random) x2 ESRGAN-compact file loaded by ComfyUI's Load Upscale Model upscales the background."""
    from spandrel.architectures.Compact import Compact
    torch.manual_seed(0)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    torch.save(net.state_dict(), comfyui.base / "models" / "upscale_models" / "tiny_x2.pth")
    assert load_comfy_extras(comfyui, "nodes_upscale_model.py")
    extras = comfyui.nodes.NODE_CLASS_MAPPINGS
    (up,) = run_node(extras["UpscaleModelLoader"], model_name="tiny_x2.pth")
    image, mask = run_node(N["CodeFormerPasteFaces"], image=batch, faces=detected[0], visibility=1.0,
                           use_parsing=False, color_match=True, feather=8, upscale=2.0, upscale_model=up)
    assert image.shape == (2, 512, 512, 3) and mask.shape == (2, 512, 512)
    (background,) = run_node(extras["ImageUpscaleWithModel"], upscale_model=up, image=batch[1:])
    assert torch.allclose(image[1], background[0], atol=1e-5)    # the no-face frame is the model's output


def test_paste_parsing_without_parser_is_an_error(N, detected, batch):
    from dataclasses import replace
    faces = replace(detected[0], meta={})
    with pytest.raises(ValueError, match="parsing model"):
        run_node(N["CodeFormerPasteFaces"], image=batch, faces=faces, use_parsing=True)


def test_paste_wrong_image_is_an_error(N, detected, batch):
    with pytest.raises(ValueError, match="same image"):
        run_node(N["CodeFormerPasteFaces"], image=batch[:1], faces=detected[0], use_parsing=False)


def test_crops_out_and_in(N, detected, batch):
    crops, n = run_node(N["CodeFormerCropsToImage"], faces=detected[0])
    assert n == 1 and torch.equal(crops, detected[1])
    small = torch.nn.functional.interpolate(crops.movedim(-1, 1), size=(256, 256), mode="area").movedim(1, -1)
    (faces,) = run_node(N["CodeFormerImageToCrops"], faces=detected[0], crops=small.flip(-1))  # an "edit"
    assert faces.crop_size == 256 and len(faces) == 1
    image, _ = run_node(N["CodeFormerPasteFaces"], image=batch, faces=faces, use_parsing=False)
    assert image.shape == batch.shape
    with pytest.raises(ValueError, match="one image per face"):
        run_node(N["CodeFormerImageToCrops"], faces=detected[0], crops=torch.cat([crops, crops]))


def test_no_face_passes_through(N, node_detector, model, batch):
    gray = batch[1:]
    faces, crops, mask, count = run_node(N["CodeFormerDetectFaces"], image=gray, face_detector=node_detector, **DETECT)
    # no face: the count says 0, the crops output carries one black placeholder for previews (issue 14)
    assert count == 0 and crops.shape == (1, 64, 64, 3) and crops.max() == 0 and mask.abs().max() == 0
    out, _ = run_node(N["CodeFormerRestoreFaces"], model=model, faces=faces, w=0.5)
    image, _ = run_node(N["CodeFormerPasteFaces"], image=gray, faces=out, use_parsing=True)
    assert torch.equal(image, gray)
    image, mask, count = run_node(N["CodeFormerRestoreFacesAllInOne"], image=gray, model=model,
                                  face_detector=node_detector, w=0.5, visibility=1.0, selection="all", threshold=0.7)
    assert count == 0 and torch.equal(image, gray) and mask.max() == 0


def test_wrong_variant_names_the_node(N, comfyui, detected, synthetic_model):
    errors = comfyui.pack.codeformer_core.errors
    with pytest.raises(errors.WrongVariantError, match="'CodeFormer Inpaint Faces' node") as err:
        run_node(N["CodeFormerRestoreFaces"], model=synthetic_model("inpainting"), faces=detected[0], w=0.5)
    assert (err.value.have, err.value.want) == ("inpainting", "restoration")
    assert "codeformer.pth" in str(err.value)
    with pytest.raises(errors.WrongVariantError, match="'CodeFormer Colorize Faces' node"):
        run_node(N["CodeFormerInpaintFaces"], model=synthetic_model("colorization"), faces=detected[0])


def test_interrupt_stops_before_the_network(N, comfyui, model, detected):
    comfyui.mm.interrupt_current_processing(True)
    try:
        with pytest.raises(comfyui.mm.InterruptProcessingException):
            run_node(N["CodeFormerRestoreFaces"], model=model, faces=detected[0], w=0.5)
    finally:
        comfyui.mm.interrupt_current_processing(False)
    assert next(model.parameters()).device.type == "cpu"


def test_colorize_keeps_colour(N, node_detector, synthetic_model, batch):
    gray = batch[:1].mean(-1, keepdim=True).expand(-1, -1, -1, 3).contiguous()
    faces, *_ = run_node(N["CodeFormerDetectFaces"], image=gray, face_detector=node_detector, **DETECT)
    assert len(faces) == 1 and bool(faces.gray.all())
    out, crops = run_node(N["CodeFormerColorizeFaces"], model=synthetic_model("colorization"), faces=faces)
    assert not bool(out.gray.any())
    assert (crops[..., 0] - crops[..., 1]).abs().max() > 1e-3


def test_inpaint_with_frame_mask(N, detected, synthetic_model):
    faces = detected[0]
    box = faces.boxes[0].round().long().tolist()
    mask = torch.zeros(2, 256, 256)
    cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
    mask[0, cy - 12:cy + 12, cx - 12:cx + 12] = 1
    out, crops = run_node(N["CodeFormerInpaintFaces"], model=synthetic_model("inpainting"), faces=faces, mask=mask)
    from codeformer_core.pipeline import crop_hole_masks
    hole = crop_hole_masks(faces, mask)[:, 0]
    changed = (out.crops - faces.crops).abs().amax(1) > 0
    assert changed.any() and not (changed & ~hole).any()     # only the warped hole changes
    assert torch.equal(crops, out.crops.permute(0, 2, 3, 1))


def test_inpaint_mask_of_another_size_fails_before_any_work(N, detected, synthetic_model, monkeypatch, comfyui):
    moved = []
    monkeypatch.setattr(comfyui.pack.nodes.comfy_bridge, "on_compute_device", lambda *a, **k: moved.append(a))
    with pytest.raises(ValueError, match="mask is 64x64.*images of 256x256"):
        run_node(N["CodeFormerInpaintFaces"], model=synthetic_model("inpainting"), faces=detected[0],
                 mask=torch.zeros(1, 64, 64))
    assert moved == []


def test_node_list_survives_a_broken_registry(N, comfyui, monkeypatch):
    """ComfyUI builds /object_info from the schemas: an unreadable registry only shortens the file list."""
    def broken():
        raise ValueError("weights/registry.json: expected a non-empty 'weights' object")
    monkeypatch.setattr(comfyui.pack.codeformer_core.weights.registry, "known_weights", broken)
    options = N["CodeFormerModelLoader"].GET_NODE_INFO_V1()["input"]["required"]["model_name"][1]["options"]
    assert options == ["codeformer.pth"]     # what is on disk
