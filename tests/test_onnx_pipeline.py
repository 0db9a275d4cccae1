"""ONNX face models through ``pipeline.restore_images`` at their own crop size and template
(docs/onnx.md, "Face models"): GPEN-BFR-1024-shaped (fixed batch 1, FFHQ template at 1024) and
GPEN-BFR-256-shaped (dynamic batch, ArcFace template at 256) files built by tests/helpers.py.

The files invert the crop (``y = -x``), so inside the pasted face region the output is 1 - input.
The crops the model is fed are recorded by a thin wrapper (the pipeline is under test, not the
model) and compared with ``align_faces`` called directly with the template the file needs.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from codeformer_core import pipeline  # noqa: E402
from codeformer_core.faces.align import align_faces, template_for  # noqa: E402
from codeformer_core.faces.detect import Detections  # noqa: E402
from codeformer_core.models.onnx_face import OnnxFaceModel  # noqa: E402
from codeformer_core.templates import ARCFACE_128  # noqa: E402
from helpers import FACE, face_model_proto, write_onnx  # noqa: E402


class Recording:
    """Delegates to the model, keeping the crops [N,3,S,S] (-1..1) of every call."""

    def __init__(self, model):
        self.model, self.inputs = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, x, w=None, adain=None):
        self.inputs.append(x.detach().clone())
        return self.model(x, w=w, adain=adain)


@pytest.fixture(scope="module")
def scene():
    """The face golden's astronaut and its five landmarks as Detections (no detector needed)."""
    astronaut = pytest.importorskip("skimage.data").astronaut()
    g = np.load(os.path.join(FACE, "retinaface_align_paste.npz"))
    image = torch.from_numpy(np.ascontiguousarray(astronaut)).float()[None] / 255.0   # [1,H,W,3]
    lm = torch.tensor(g["landmarks"], dtype=torch.float32)[None]
    h, w = image.shape[1:3]
    dets = Detections(boxes=torch.tensor([[0.0, 0.0, 1.0, 1.0]]), scores=torch.ones(1), landmarks=lm,
                      frame_index=torch.zeros(1, dtype=torch.long), num_frames=1, frame_size=(h, w))
    return image, lm, dets


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_pipeline")
    return {"gpen1024": write_onnx(face_model_proto(1024, batch=1), folder / "gpen_bfr_1024.onnx"),
            "gpen256": write_onnx(face_model_proto(256), folder / "GPEN-BFR-256.onnx"),
            "gpen2048": write_onnx(face_model_proto(2048), folder / "GPEN-BFR-2048.onnx"),
            "w512": write_onnx(face_model_proto(512, fidelity="w"), folder / "w512.onnx")}


def _restore(image, model, dets, **paste):
    return pipeline.restore_images(image, model, None, detections=dets,
                                   paste=pipeline.PasteSettings(**paste))


def _check_inverted_face(image, result):
    frame = image[0]
    inside = result.mask[0] > 0.999
    assert int(inside.sum()) > 5000
    err = (result.images[0][inside] - (1 - frame[inside])).abs()
    assert float(err.mean()) < 0.02, float(err.mean())
    outside = result.mask[0] == 0
    assert torch.equal(result.images[0][outside], frame[outside])


def test_1024_fixed_batch_file_is_fed_1024_crops(scene, models):
    image, lm, dets = scene
    model = Recording(OnnxFaceModel(models["gpen1024"]))
    result = _restore(image, model, dets)
    assert result.face_counts == [1]
    assert [tuple(x.shape) for x in model.inputs] == [(1, 3, 1024, 1024)]
    want = align_faces(image.permute(0, 3, 1, 2), lm, torch.zeros(1, dtype=torch.long), size=1024).crops
    assert float((model.inputs[0] - (want * 2 - 1)).abs().max()) < 1e-5
    _check_inverted_face(image, result)


def test_256_arcface_file_is_fed_arcface_crops(scene, models):
    image, lm, dets = scene
    model = Recording(OnnxFaceModel(models["gpen256"]))
    result = _restore(image, model, dets)
    assert [tuple(x.shape) for x in model.inputs] == [(1, 3, 256, 256)]
    frames = image.permute(0, 3, 1, 2)
    idx = torch.zeros(1, dtype=torch.long)
    arcface = align_faces(frames, lm, idx, size=256, template=ARCFACE_128 * 256).crops
    ffhq = align_faces(frames, lm, idx, size=256).crops
    assert float((model.inputs[0] - (arcface * 2 - 1)).abs().max()) < 1e-5
    assert float((arcface - ffhq).abs().mean()) > 0.05   # the templates frame the face differently
    _check_inverted_face(image, result)


@pytest.fixture(scope="module")
def parser(models_dir):
    from codeformer_core.models.loader import load_parsenet
    return load_parsenet(models_dir / "facedetection" / "parsing_parsenet.pth")


class SeeingParser(torch.nn.Module):
    """Stands for ParseNet: keeps what it is given and returns that image as its 'logits' (3 classes)."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().float().clone())
        return x.float(), None


def test_arcface_crops_are_parsed_in_ffhq_framing(scene, models, parser):
    """ReframedParseNet hands the parser the face in FFHQ framing (what ParseNet was trained on) and
    carries the result back into the ArcFace framing: checked against align_faces' own crops."""
    from codeformer_core.faces.reframe import ReframedParseNet
    image, lm, _ = scene
    frames, idx = image.permute(0, 3, 1, 2), torch.zeros(1, dtype=torch.long)
    model = OnnxFaceModel(models["gpen256"])
    assert isinstance(pipeline.parser_for_model(parser, model), ReframedParseNet)
    assert pipeline.parser_for_model(parser, OnnxFaceModel(models["gpen1024"])) is parser
    seeing = SeeingParser()
    reframed = pipeline.parser_for_model(seeing, model)
    arc = align_faces(frames, lm, idx, size=512, template=ARCFACE_128 * 512).crops * 2 - 1
    ffhq = align_faces(frames, lm, idx, size=512).crops * 2 - 1
    back, _ = reframed(arc)
    given = seeing.seen[0]
    core = (slice(None), slice(None), slice(96, 448), slice(96, 416))   # inside both framings, off the border
    # The two templates are not the same shape (3.5 to 8 px apart at 512 after the best similarity), so
    # the FFHQ view is that similarity, close to but not exactly this face's own FFHQ alignment
    # (measured: 0.057 mean difference against 0.305 for the ArcFace crop as it is).
    reframed_err, unframed_err = float((given - ffhq)[core].abs().mean()), float((arc - ffhq)[core].abs().mean())
    assert reframed_err < 0.25 * unframed_err, (reframed_err, unframed_err)
    assert float((back - arc)[core].abs().mean()) < 0.01    # and its output comes back in ArcFace framing


def test_arcface_file_pastes_with_the_reframed_parse_mask(scene, models, parser):
    image, _, dets = scene
    model = OnnxFaceModel(models["gpen256"])
    plain = _restore(image, model, dets)
    parsed = _restore(image, model, dets, parser=parser)
    assert parsed.face_counts == [1]
    assert not torch.equal(parsed.mask, plain.mask)      # the parse mask shaped the blend
    assert float(parsed.mask.max()) > 0.99


def test_has_aligned_at_the_model_crop_size(models):
    model = Recording(OnnxFaceModel(models["gpen256"]))
    faces = torch.rand(2, 300, 300, 3, generator=torch.Generator().manual_seed(5))
    result = pipeline.restore_images(faces, model, has_aligned=True)
    assert [tuple(x.shape) for x in model.inputs] == [(2, 3, 256, 256)] or \
        [tuple(x.shape) for x in model.inputs] == [(1, 3, 256, 256)] * 2
    assert result.images.shape == (2, 300, 300, 3)


def test_faces_per_batch_scales_with_the_crop_area(models):
    budget = 64 * pipeline.FORWARD_BYTES_PER_FACE   # half of it: 32 faces of 512 px
    assert pipeline.faces_per_batch(OnnxFaceModel(models["w512"]), budget) == 32
    assert pipeline.faces_per_batch(OnnxFaceModel(models["gpen256"]), budget) == 64   # 128 by area, at most 64
    assert pipeline.faces_per_batch(OnnxFaceModel(models["gpen2048"]), budget) == 2   # 16x a 512 face
    assert pipeline.faces_per_batch(OnnxFaceModel(models["gpen1024"]), budget) == 1   # its fixed batch


def test_model_geometry_defaults_for_codeformer_like_models(models):
    class Plain:
        pass
    assert pipeline.model_crop_size(Plain()) == 512
    assert torch.equal(pipeline.model_template(Plain()), template_for(512, torch.float64))
    assert pipeline.model_fixed_batch(Plain()) is None and pipeline.has_ffhq_framing(Plain())
    assert pipeline.has_ffhq_framing(OnnxFaceModel(models["gpen1024"]))
    assert not pipeline.has_ffhq_framing(OnnxFaceModel(models["gpen256"]))


# -- the command line: codeformer restore --face-model FILE.onnx ------------------------------------
def test_cli_face_model_onnx_on_an_aligned_face(tmp_path, models_dir, models):
    from PIL import Image
    from helpers import DETECTOR_ARGS, aligned_face, run_cli
    face = aligned_face(300)
    src, dest = tmp_path / "face.png", tmp_path / "out.png"
    Image.fromarray(face).save(src)
    rc, _, err = run_cli("restore", src, "--has-aligned", "--face-model", models["gpen256"], "--dtype", "fp32",
                         "-o", dest, "--models", models_dir, *DETECTOR_ARGS)
    assert rc == 0, err
    assert "--dtype fp32 does not apply to GPEN-BFR-256.onnx" in err
    got = np.asarray(Image.open(dest)).astype(np.float64) / 255
    assert got.shape == face.shape
    # the file inverts the 256 px crop; resized 300 -> 256 -> 300 on the way
    assert float(np.abs(got - (1 - face / 255.0)).mean()) < 0.03


def test_cli_face_model_onnx_with_detection_and_parse(tmp_path, models_dir, models):
    from PIL import Image
    from helpers import DETECTOR_ARGS, astronaut, run_cli
    src, dest = tmp_path / "a.png", tmp_path / "a_out.png"
    Image.fromarray(astronaut((96, 96))).save(src)
    rc, _, err = run_cli("restore", src, "--face-model", models["gpen256"], "--parse", "-s", "1", "-o", dest,
                         "--models", models_dir, *DETECTOR_ARGS)
    assert rc == 0, err
    assert "--parse" not in err
    assert Image.open(dest).size == (96, 96)


def test_cli_face_model_only_for_restore(tmp_path, models_dir, models):
    from helpers import DETECTOR_ARGS, run_cli
    rc, _, err = run_cli("colorize", tmp_path / "x.png", "--face-model", models["gpen256"], "--models", models_dir,
                         *DETECTOR_ARGS)
    assert rc != 0 and "--face-model is for 'codeformer restore' only" in err and "Traceback" not in err


def test_cli_a_broken_onnx_file_is_a_one_line_error(tmp_path, models_dir):
    from PIL import Image
    from helpers import DETECTOR_ARGS, astronaut, run_cli
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file at all")
    src = tmp_path / "a.png"
    Image.fromarray(astronaut((64, 64))).save(src)
    rc, _, err = run_cli("restore", src, "--face-model", bad, "--models", models_dir, *DETECTOR_ARGS)
    assert rc != 0 and err.count("\n") == 1 and "Traceback" not in err and "broken.onnx" in err
