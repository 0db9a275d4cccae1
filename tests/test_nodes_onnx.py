"""Issue 21 in the graph (real ComfyUI 0.3.64, headless, CPU): ONNX face models (.onnx in
models/facerestore_models) through 'Load CodeFormer Model', 'Detect Faces' with the model connected
(its crop size and alignment), 'CodeFormer Restore Faces' and the all-in-one node.

The files are the small ones of tests/helpers.py (``face_model_proto``): two copying convolutions,
then ``-x``, so a restored crop is 1 - the crop fed to it. Nodes run through their V3 entry point
as ComfyUI's executor calls them (helpers.run_node).
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from helpers import face_model_proto, run_node, write_onnx  # noqa: E402

DETECT = dict(threshold=0.7, selection="largest", sort_by="area", index=0, max_faces=0, resolution=640)
FILES = {"GPEN-BFR-256.onnx": dict(size=256), "gpen_bfr_1024.onnx": dict(size=1024, batch=1)}


@pytest.fixture(scope="module")
def N(comfyui):
    folder = comfyui.base / "models" / "facerestore_models"
    written = [write_onnx(face_model_proto(**kw), folder / name) for name, kw in FILES.items()]
    yield comfyui.N
    for path in written:   # other modules list this folder
        path.unlink()


@pytest.fixture(scope="module")
def gpen256(N):
    model, variant = run_node(N["CodeFormerModelLoader"], model_name="GPEN-BFR-256.onnx", dtype="auto")
    assert variant == "restoration"
    return model


def test_loader_lists_onnx_files(N):
    options = N["CodeFormerModelLoader"].GET_NODE_INFO_V1()["input"]["required"]["model_name"][1]["options"]
    assert set(FILES) <= set(options) and "codeformer.pth" in options


def test_loader_loads_an_onnx_file_on_comfyuis_device(comfyui, gpen256):
    onnx_face = comfyui.pack.codeformer_core.models.onnx_face
    assert isinstance(gpen256, onnx_face.OnnxFaceModel)
    assert gpen256.crop_size == 256 and not gpen256.has_fidelity
    assert gpen256.providers == [onnx_face.CPU]   # ComfyUI computes on the CPU here (--cpu)


def test_detect_with_the_model_aligns_at_its_size_and_template(comfyui, N, node_detector, gpen256, astronaut_image):
    faces, crops, _, count = run_node(N["CodeFormerDetectFaces"], image=astronaut_image, face_detector=node_detector,
                                      model=gpen256, **DETECT)
    assert count == 1 and crops.shape == (1, 256, 256, 3)
    parser = faces.meta["parser"]    # ParseNet expects FFHQ crops: ArcFace crops are parsed reframed
    assert type(parser).__name__ == "ReframedParseNet" and parser.parser is node_detector.parser
    core = comfyui.pack.codeformer_core
    want = core.faces.align.align_faces(astronaut_image.permute(0, 3, 1, 2), faces.landmarks, faces.frame_index,
                                        size=256, template=core.templates.ARCFACE_128 * 256).crops
    assert float((faces.crops - want).abs().max()) < 1e-5
    out, restored = run_node(N["CodeFormerRestoreFaces"], model=gpen256, faces=faces, w=0.3)
    assert restored.shape == (1, 256, 256, 3)
    assert float((out.crops - (1 - faces.crops)).abs().max()) < 1e-5


def test_restore_refuses_faces_aligned_for_another_framing(N, node_detector, gpen256, astronaut_image):
    faces = run_node(N["CodeFormerDetectFaces"], image=astronaut_image, face_detector=node_detector, **DETECT)[0]
    assert faces.crop_size == 512 and faces.meta["parser"] is not None
    with pytest.raises(ValueError, match="connect the model to the 'model' input of 'Detect Faces"):
        run_node(N["CodeFormerRestoreFaces"], model=gpen256, faces=faces, w=0.5)


def test_a_1024_model_takes_faces_detected_without_it(N, node_detector, astronaut_image):
    """Same (FFHQ) framing, another size: the crops are resized to the model's 1024 px."""
    model, _ = run_node(N["CodeFormerModelLoader"], model_name="gpen_bfr_1024.onnx", dtype="auto")
    faces = run_node(N["CodeFormerDetectFaces"], image=astronaut_image, face_detector=node_detector, **DETECT)[0]
    out, restored = run_node(N["CodeFormerRestoreFaces"], model=model, faces=faces, w=0.5)
    assert restored.shape == (1, 1024, 1024, 3)
    small = torch.nn.functional.interpolate(out.crops, size=(512, 512), mode="area")
    assert float((small - (1 - faces.crops)).abs().mean()) < 0.01


def test_all_in_one_with_an_onnx_model(N, node_detector, gpen256, astronaut_image):
    image, mask, count = run_node(N["CodeFormerRestoreFacesAllInOne"], image=astronaut_image, model=gpen256,
                                  face_detector=node_detector, w=0.5, visibility=1.0, selection="largest",
                                  threshold=0.7)
    assert count == 1
    inside = mask[0] > 0.999
    assert int(inside.sum()) > 500
    err = (image[0][inside] - (1 - astronaut_image[0][inside])).abs()
    assert float(err.mean()) < 0.03, float(err.mean())
    outside = mask[0] == 0
    assert torch.equal(image[0][outside], astronaut_image[0][outside])
