"""Node classes run through their FUNCTIONs with ComfyUI stand-ins and synthetic weight files.

CodeFormer forwards cost seconds on a CPU, so the detected and restored faces are shared
through module-scoped fixtures (one face: selection 'largest').
"""
from __future__ import annotations

import pytest
import torch

import comfy_stubs
from nodes import NODE_CLASS_MAPPINGS as N

DETECT = dict(threshold=0.7, selection="largest", sort_by="area", index=0, max_faces=0, resolution=640,
              smoothing=0.0)


@pytest.fixture(scope="module")
def mod_comfy(comfy_models_dir):
    mp = pytest.MonkeyPatch()
    ns = comfy_stubs.install(mp, comfy_models_dir)
    from nodes.comfy_bridge import register_folders
    register_folders()
    yield ns
    mp.undo()


@pytest.fixture(scope="module")
def model(mod_comfy):
    m, variant = N["CodeFormerModelLoader"]().load("codeformer.pth", "auto")
    assert variant == "restoration"
    return m


@pytest.fixture(scope="module")
def detector(mod_comfy):
    (bundle,) = N["CodeFormerFaceDetectorLoader"]().load("detection_Resnet50_Final.pth", "parsing_parsenet.pth")
    return bundle


@pytest.fixture(scope="module")
def batch(astronaut_image):
    """Two frames: the astronaut and a flat gray frame (no face)."""
    return torch.cat([astronaut_image, torch.full_like(astronaut_image, 0.5)])


@pytest.fixture(scope="module")
def detected(mod_comfy, detector, batch):
    return N["CodeFormerDetectFaces"]().detect(batch, detector, **DETECT)


@pytest.fixture(scope="module")
def restored(mod_comfy, model, detected):
    mod_comfy.calls.clear()
    out = N["CodeFormerRestoreFaces"]().restore(model, detected[0], w=0.5)
    return out, dict(mod_comfy.calls)


def test_loader_lists_files_and_official_names(mod_comfy):
    opts = N["CodeFormerModelLoader"].INPUT_TYPES()["required"]["model_name"]
    assert {"codeformer.pth", "codeformer_colorization.pth", "codeformer_inpainting.pth"} <= set(opts[0])
    assert opts[1]["default"] == "codeformer.pth"
    det = N["CodeFormerFaceDetectorLoader"].INPUT_TYPES()["required"]
    assert "detection_mobilenet0.25_Final.pth" in det["detector_model"][0]  # offered, downloaded on use
    assert "parsing_parsenet.pth" not in det["detector_model"][0]
    assert det["parsing_model"][0][0] == "none" and "parsing_parsenet.pth" in det["parsing_model"][0]


def test_model_sits_on_offload_device(model, mod_comfy):
    assert next(model.parameters()).device.type == "cpu"
    assert next(model.parameters()).dtype == torch.float32  # should_use_fp16 said no


def test_auto_dtype_follows_comfy(mod_comfy):
    mod_comfy.calls["fp16_ok"] = True
    try:
        m, _ = N["CodeFormerModelLoader"]().load("codeformer.pth", "auto")
    finally:
        mod_comfy.calls.pop("fp16_ok")
    assert any(p.dtype == torch.float16 for p in m.parameters())


def test_detect_outputs(detected, batch):
    faces, crops, mask, count = detected
    assert count == len(faces) == 1 and faces.counts_per_frame().tolist() == [1, 0]
    assert crops.shape == (1, 512, 512, 3) and crops.dtype == torch.float32
    assert mask.shape == (2, 256, 256) and mask[0].max() > 0.5 and mask[1].max() == 0
    assert faces.crops.device.type == "cpu" and faces.meta["parser"] is not None


def test_restore_progress_memory_and_crops(restored, detected):
    (faces, crops), calls = restored
    assert len(faces) == 1 and crops.shape == (1, 512, 512, 3)
    assert not torch.equal(faces.crops, detected[0].crops)
    bar = calls["progress"][-1]
    assert bar.total == 1 and bar.updates[-1] == (1, 1)      # progress counts faces
    assert calls["interrupt_checks"] >= 1 and calls["free_memory"] and calls["soft_empty_cache"]


def test_paste_back(mod_comfy, restored, batch):
    image, mask = N["CodeFormerPasteFaces"]().paste(batch, restored[0][0], 1.0, True, False, 0, 1.0)
    assert image.shape == batch.shape and mask.shape == batch.shape[:3]
    assert torch.equal(image[1], batch[1])                     # no face: frame unchanged
    changed = (image[0] - batch[0]).abs().amax(-1) > 1e-4
    assert changed.any() and not changed[mask[0] == 0].any()   # only pixels under the mask change
    zero, _ = N["CodeFormerPasteFaces"]().paste(batch, restored[0][0], 0.0, False, False, 0, 1.0)
    assert torch.allclose(zero, batch, atol=1e-6)              # visibility 0 = original


def test_paste_upscale_model_goes_through_comfy(mod_comfy, detected, batch):
    class Up:  # stands in for spandrel's ImageModelDescriptor
        scale = 2

        def __call__(self, x):
            return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    mod_comfy.calls.pop("upscale", None)
    image, mask = N["CodeFormerPasteFaces"]().paste(batch, detected[0], 1.0, False, True, 8, 2.0, upscale_model=Up())
    assert image.shape == (2, 512, 512, 3) and mask.shape == (2, 512, 512)
    assert mod_comfy.calls["upscale"] == [(2, 256, 256, 3)]


def test_paste_parsing_without_parser_is_an_error(mod_comfy, detected, batch):
    from dataclasses import replace
    faces = replace(detected[0], meta={})
    with pytest.raises(ValueError, match="parsing model"):
        N["CodeFormerPasteFaces"]().paste(batch, faces, 1.0, True, False, 0, 1.0)


def test_paste_wrong_image_is_an_error(mod_comfy, detected, batch):
    with pytest.raises(ValueError, match="same image"):
        N["CodeFormerPasteFaces"]().paste(batch[:1], detected[0], 1.0, False, False, 0, 1.0)


def test_crops_out_and_in(mod_comfy, detected, batch):
    crops, n = N["CodeFormerCropsToImage"]().run(detected[0])
    assert n == 1 and torch.equal(crops, detected[1])
    small = torch.nn.functional.interpolate(crops.movedim(-1, 1), size=(256, 256), mode="area").movedim(1, -1)
    (faces,) = N["CodeFormerImageToCrops"]().run(detected[0], small.flip(-1))   # an "edit": BGR swap
    assert faces.crop_size == 256 and len(faces) == 1
    image, _ = N["CodeFormerPasteFaces"]().paste(batch, faces, 1.0, False, False, 0, 1.0)
    assert image.shape == batch.shape
    with pytest.raises(ValueError, match="one image per face"):
        N["CodeFormerImageToCrops"]().run(detected[0], torch.cat([crops, crops]))


def test_no_face_passes_through(mod_comfy, detector, model, batch):
    gray = batch[1:]
    faces, crops, mask, count = N["CodeFormerDetectFaces"]().detect(gray, detector, **DETECT)
    assert count == 0 and crops.shape[0] == 0 and mask.abs().max() == 0
    out, _ = N["CodeFormerRestoreFaces"]().restore(model, faces, 0.5)
    image, _ = N["CodeFormerPasteFaces"]().paste(gray, out, 1.0, True, False, 0, 1.0)
    assert torch.equal(image, gray)
    image, mask, count = N["CodeFormerRestoreFacesAllInOne"]().restore(gray, model, detector, 0.5, 1.0, "all", 0.7)
    assert count == 0 and torch.equal(image, gray) and mask.max() == 0


def test_wrong_variant_names_the_node(mod_comfy, detected, synthetic_model):
    from codeformer_core.pipeline import WrongVariantError
    with pytest.raises(WrongVariantError, match="CodeFormer Inpaint Faces"):
        N["CodeFormerRestoreFaces"]().restore(synthetic_model("inpainting"), detected[0], 0.5)
    with pytest.raises(WrongVariantError, match="CodeFormer Colorize Faces"):
        N["CodeFormerInpaintFaces"]().inpaint(synthetic_model("colorization"), detected[0])


def test_interrupt_stops_before_the_network(mod_comfy, model, detected):
    mod_comfy.mm.interrupt_current_processing(True)
    with pytest.raises(comfy_stubs.InterruptProcessingException):
        N["CodeFormerRestoreFaces"]().restore(model, detected[0], 0.5)
    assert next(model.parameters()).device.type == "cpu"


def test_colorize_keeps_colour(mod_comfy, detector, synthetic_model, batch):
    gray = batch[:1].mean(-1, keepdim=True).expand(-1, -1, -1, 3).contiguous()
    faces, *_ = N["CodeFormerDetectFaces"]().detect(gray, detector, **DETECT)
    assert len(faces) == 1 and bool(faces.gray.all())
    out, crops = N["CodeFormerColorizeFaces"]().colorize(synthetic_model("colorization"), faces)
    assert not bool(out.gray.any())
    assert (crops[..., 0] - crops[..., 1]).abs().max() > 1e-3


def test_inpaint_with_frame_mask(mod_comfy, detected, synthetic_model, batch):
    faces = detected[0]
    box = faces.boxes[0].round().long().tolist()
    mask = torch.zeros(2, 256, 256)
    cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
    mask[0, cy - 12:cy + 12, cx - 12:cx + 12] = 1
    out, crops = N["CodeFormerInpaintFaces"]().inpaint(synthetic_model("inpainting"), faces, mask)
    from codeformer_core.pipeline import crop_hole_masks
    hole = crop_hole_masks(faces, mask)[:, 0]
    changed = (out.crops - faces.crops).abs().amax(1) > 0
    assert changed.any() and not (changed & ~hole).any()     # only the warped hole changes
    assert torch.equal(crops, out.crops.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="image size"):
        N["CodeFormerInpaintFaces"]().inpaint(synthetic_model("inpainting"), faces, torch.zeros(1, 64, 64))
