"""Issue 10 in the graph (real ComfyUI 0.3.64, headless, CPU): a face model from ComfyUI's own
'Load Upscale Model' restores FACES, the paste node enlarges faces with its upscale model, and the
detect node's zero-lag smoothing over an IMAGE batch."""
from __future__ import annotations

import pytest
import torch

from helpers import load_comfy_extras, run_node

pytest.importorskip("spandrel")

DETECT = dict(threshold=0.7, selection="largest", sort_by="area", index=0, max_faces=0, resolution=640)


@pytest.fixture(scope="module")
def N(comfyui):
    assert load_comfy_extras(comfyui, "nodes_upscale_model.py")
    return {**comfyui.N, **{k: comfyui.nodes.NODE_CLASS_MAPPINGS[k]
                            for k in ("UpscaleModelLoader", "ImageUpscaleWithModel")}}


@pytest.fixture(scope="module")
def upscale_models(comfyui):
    """Random-weight files in models/upscale_models: a small RestoreFormer, a 2x and a 4x upscaler."""
    from codeformer_core.dev.face_models import random_restoreformer, random_upscaler, write_model
    folder = comfyui.base / "models" / "upscale_models"
    write_model(random_restoreformer(), folder / "restoreformer_tiny.pth")
    write_model(random_upscaler(scale=2), folder / "esrgan_tiny_x2.pth")
    write_model(random_upscaler(scale=4), folder / "esrgan_tiny_x4.pth")
    return folder


@pytest.fixture(scope="module")
def detector(N):
    (bundle,) = run_node(N["CodeFormerFaceDetectorLoader"], detector_model="detection_Resnet50_Final.pth",
                         parsing_model="none")
    return bundle


@pytest.fixture(scope="module")
def detected(N, detector, astronaut_image):
    return run_node(N["CodeFormerDetectFaces"], image=astronaut_image, face_detector=detector, smoothing=0.0,
                    **DETECT)


def test_face_model_from_load_upscale_model_restores_faces(N, upscale_models, detected, progress):
    (model,) = run_node(N["UpscaleModelLoader"], model_name="restoreformer_tiny.pth")
    faces = detected[0]
    assert len(faces) == 1
    out, crops = run_node(N["CodeFormerRestoreFacesWithModel"], model=model, faces=faces)
    want = model(faces.crops)          # spandrel's own call for RestoreFormer (0..1 in and out)
    assert torch.allclose(out.crops, want, atol=1e-5) and crops.shape == (1, 512, 512, 3)
    assert progress and progress[-1] == (1, 1)
    assert next(model.model.parameters()).device.type == "cpu"      # back on the offload device


def test_an_upscaler_is_refused_by_the_face_model_node(N, upscale_models, detected):
    (up,) = run_node(N["UpscaleModelLoader"], model_name="esrgan_tiny_x4.pth")
    with pytest.raises(ValueError, match=r"the connected model is a 4x image upscaler \(ESRGAN\), not a "
                                         r"face-restoration model.*upscale_model input of 'Paste Faces Back"):
        run_node(N["CodeFormerRestoreFacesWithModel"], model=up, faces=detected[0])


def test_paste_enlarges_the_faces_with_its_upscale_model(N, comfyui, upscale_models, detected, astronaut_image):
    from codeformer_core.faces.paste import paste_faces
    (up,) = run_node(N["UpscaleModelLoader"], model_name="esrgan_tiny_x2.pth")
    faces = detected[0]
    kw = dict(image=astronaut_image, faces=faces, visibility=1.0, use_parsing=False, color_match=False, feather=0,
              upscale=2.0, upscale_model=up)
    image, _ = run_node(N["CodeFormerPasteFaces"], upscale_faces=True, **kw)
    plain, _ = run_node(N["CodeFormerPasteFaces"], upscale_faces=False, **kw)
    # what the graph would do by hand: crops -> 'Upscale Image (using Model)' -> pasted onto the background
    (big_crops,) = run_node(N["ImageUpscaleWithModel"], upscale_model=up, image=detected[1])
    (background,) = run_node(N["ImageUpscaleWithModel"], upscale_model=up, image=astronaut_image)
    want, _ = paste_faces(astronaut_image.permute(0, 3, 1, 2), faces, big_crops.permute(0, 3, 1, 2), upscale=2.0,
                          background=background.permute(0, 3, 1, 2))
    assert big_crops.shape[1] == 1024
    assert torch.allclose(image, want.permute(0, 2, 3, 1), atol=1e-5)
    assert (image - plain).abs().amax() > 0.05
    with pytest.raises(ValueError, match="upscale_faces enlarges the faces with the upscale model"):
        run_node(N["CodeFormerPasteFaces"], upscale_faces=True, **{**kw, "upscale_model": None})


def test_detect_smoothing_is_zero_lag_over_the_batch(N, detector, astronaut_image):
    """The detect node's smoothing: the faces of every frame found first, then smoothed along their
    track (as faces.tracks.smooth_detections does on the unsmoothed detections)."""
    from codeformer_core.faces.detect import Detections
    from codeformer_core.faces.tracks import smooth_detections
    frames = torch.cat([astronaut_image.roll(2 * i, dims=2) for i in range(4)])
    raw = run_node(N["CodeFormerDetectFaces"], image=frames, face_detector=detector, smoothing=0.0, **DETECT)[0]
    smooth, crops, mask, count = run_node(N["CodeFormerDetectFaces"], image=frames, face_detector=detector,
                                          smoothing=2.0, **DETECT)
    assert count == len(raw) > 1
    dets = Detections(raw.boxes, raw.scores, raw.landmarks, raw.frame_index, raw.num_frames, raw.frame_size)
    assert torch.allclose(smooth.landmarks, smooth_detections(dets, 2.0).landmarks, atol=1e-4)
    assert not torch.allclose(smooth.landmarks, raw.landmarks, atol=1e-3)
