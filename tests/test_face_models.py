"""Face models through spandrel (models/face_model.py): GFPGAN and RestoreFormer with random weights
built from spandrel's own architectures, run by our pipeline, against the spandrel model called
directly on the same crops and pasted with our paste-back."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("spandrel")
from spandrel import ModelLoader  # noqa: E402

from codeformer_core.dev.face_models import (random_gfpgan, random_restoreformer, random_upscaler,  # noqa: E402
                                             write_model)
from codeformer_core.errors import CodeFormerError, NotAFaceModelError  # noqa: E402
from codeformer_core.faces.align import align_faces  # noqa: E402
from codeformer_core.faces.detect import Detections  # noqa: E402
from codeformer_core.faces.paste import paste_faces  # noqa: E402
from codeformer_core.models.face_model import FaceModel, load_face_model  # noqa: E402
from codeformer_core.pipeline import restore_images, run_network  # noqa: E402

FACE = Path(__file__).parent / "data" / "face_golden"


@pytest.fixture(scope="module")
def photo():
    """The astronaut frame [1,3,H,W] and its face's five landmarks [5,2]."""
    rgb = torch.from_numpy(np.asarray(Image.open(FACE / "astronaut_rgb.png")).copy()).permute(2, 0, 1)
    lm = torch.from_numpy(np.load(FACE / "retinaface_align_paste.npz")["landmarks"]).float()
    return rgb.float()[None] / 255, lm


@pytest.fixture(scope="module")
def restoreformer():
    return ModelLoader().load_from_state_dict(random_restoreformer())


def through_pipeline(model, photo, **kwargs):
    """restore_images on the photo with its face given as the detection (no detector needed)."""
    frame, lm = photo
    box = torch.cat([lm.min(0).values - 60, lm.max(0).values + 60])[None]
    dets = Detections(box, torch.ones(1), lm[None], torch.tensor([0]), 1, tuple(frame.shape[-2:]))
    return restore_images(frame.permute(0, 2, 3, 1), model, None, detections=dets, **kwargs).images


def direct_and_pasted(photo, call):
    """The same face aligned by us, restored by ``call`` (the spandrel model itself), pasted by us."""
    frame, lm = photo
    faces = align_faces(frame, lm[None], torch.tensor([0]))
    with torch.inference_mode():
        restored = call(faces.crops)
    return paste_faces(frame, faces, restored)[0].permute(0, 2, 3, 1)


def test_gfpgan_equals_the_spandrel_model_called_directly(photo):
    desc = ModelLoader().load_from_state_dict(random_gfpgan())
    ours = through_pipeline(FaceModel(desc), photo)
    # GFPGAN's own inference: input and output in -1..1, the first output is the image; the noise
    # is the checkpoint's fixed noise (spandrel's descriptor call would feed 0..1 and clamp).
    want = direct_and_pasted(photo, lambda x: (desc.model(x * 2 - 1, return_rgb=False, randomize_noise=False)[0]
                                               .clamp(-1, 1) + 1) / 2)
    assert torch.allclose(ours, want, atol=1e-5)
    assert (ours - photo[0].permute(0, 2, 3, 1)).abs().amax() > 0.1    # the face did change


def test_restoreformer_equals_the_spandrel_descriptor_call(photo, restoreformer):
    ours = through_pipeline(FaceModel(restoreformer), photo)
    want = direct_and_pasted(photo, restoreformer)      # spandrel's own 0..1 call for RestoreFormer
    assert torch.allclose(ours, want, atol=1e-5)
    assert (ours - photo[0].permute(0, 2, 3, 1)).abs().amax() > 0.1


def test_batches_progress_interrupt_and_out_of_memory_as_codeformer(restoreformer, monkeypatch):
    model = FaceModel(restoreformer)
    crops = torch.rand(2, 3, 512, 512, generator=torch.Generator().manual_seed(1))
    want = torch.cat([restoreformer(crops[i:i + 1]) for i in range(2)])
    forward, sizes = restoreformer.model.forward, []

    def no_room_for_two(x, *args, **kwargs):
        sizes.append(int(x.shape[0]))
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("simulated")
        return forward(x, *args, **kwargs)
    monkeypatch.setattr(restoreformer.model, "forward", no_room_for_two)
    seen = []
    out = run_network(model, crops, batch_size=2, progress=lambda done, total: seen.append((done, total)))
    assert sizes == [2, 1, 1] and seen == [(1, 2), (2, 2)]
    assert torch.allclose(out, want, atol=1e-5)

    class Stop(Exception):
        pass
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) > 1:
            raise Stop
    with pytest.raises(Stop):
        run_network(model, crops, batch_size=1, check_interrupt=interrupt)
    assert sizes[3:] == [1]                       # stopped before the second crop


def test_an_upscaler_is_refused_saying_what_it_is(tmp_path):
    path = write_model(random_upscaler(scale=4), tmp_path / "4x_tiny.pth")
    with pytest.raises(NotAFaceModelError) as e:
        load_face_model(path)
    msg = str(e.value)
    assert isinstance(e.value, CodeFormerError) and e.value.scale == 4 and e.value.purpose == "SR"
    assert "4x_tiny.pth is a 4x image upscaler (ESRGAN)" in msg and "not a face-restoration model" in msg
    with pytest.raises(NotAFaceModelError):
        FaceModel(ModelLoader().load_from_state_dict(random_upscaler(scale=2)))


def test_file_round_trip_and_unreadable_file(tmp_path, restoreformer):
    model = load_face_model(write_model(random_restoreformer(), tmp_path / "rf.safetensors"))
    assert model.architecture == "RestoreFormer" and model.name == "rf.safetensors"
    assert model.dtype == torch.float32 and model.variant == "restoration"
    bad = tmp_path / "bad.pth"
    torch.save({"foo.weight": torch.zeros(2)}, bad)
    with pytest.raises(CodeFormerError, match="bad.pth: not a model file spandrel can load"):
        load_face_model(bad)
