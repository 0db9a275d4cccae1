"""Command line, issue 10: ``--face-model`` (a spandrel face model instead of CodeFormer) and video
smoothing options (``--smooth`` zero-lag two-pass, ``--smooth-online``). A small random-weight
RestoreFormer keeps the network cheap."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run_cli, DETECTOR_ARGS, aligned_face, astronaut, make_video, video_facts
from codeformer_core import cli

pytest.importorskip("spandrel")
from spandrel import ModelLoader  # noqa: E402

from codeformer_core.dev.face_models import random_restoreformer, random_upscaler, write_model  # noqa: E402


@pytest.fixture(scope="module")
def restoreformer_file(tmp_path_factory):
    return write_model(random_restoreformer(), tmp_path_factory.mktemp("face") / "restoreformer_tiny.pth")


call = run_cli


def test_aligned_face_restored_by_the_face_model(tmp_path, models_dir, restoreformer_file):
    face = aligned_face(512)
    src, dest = tmp_path / "face.png", tmp_path / "out.png"
    Image.fromarray(face).save(src)
    rc, out, err = call("restore", src, "--has-aligned", "--face-model", restoreformer_file, "-o", dest,
                        "--models", models_dir, *DETECTOR_ARGS)
    assert rc == 0, err
    desc = ModelLoader().load_from_state_dict(random_restoreformer())   # the same weights, called by spandrel
    with torch.inference_mode():
        want = desc(torch.from_numpy(face).permute(2, 0, 1).float()[None] / 255)[0].permute(1, 2, 0).numpy()
    got = np.asarray(Image.open(dest)).astype(np.float64) / 255
    assert np.abs(got - want).max() <= 1 / 255 + 1e-6


def test_an_upscaler_as_face_model_is_a_one_line_error(tmp_path, models_dir):
    up = write_model(random_upscaler(scale=4), tmp_path / "4x_tiny.pth")
    src = tmp_path / "a.png"
    Image.fromarray(astronaut((64, 64))).save(src)
    rc, _, err = call("restore", src, "--face-model", up, "--models", models_dir, *DETECTOR_ARGS)
    assert rc == cli.EXIT_ERROR and err.count("\n") == 1 and "Traceback" not in err
    assert "4x_tiny.pth is a 4x image upscaler (ESRGAN), not a face-restoration model" in err
    assert "use it with --bg-upsampler" in err


def test_face_model_option_errors(tmp_path, models_dir, restoreformer_file, monkeypatch):
    src = tmp_path / "a.png"
    Image.fromarray(astronaut((64, 64))).save(src)
    rc, _, err = call("restore", src, "--face-model", restoreformer_file, "--model", restoreformer_file,
                      "--models", models_dir, *DETECTOR_ARGS)
    assert rc == cli.EXIT_ERROR and "not both" in err
    rc, _, err = call("colorize", src, "--face-model", restoreformer_file)
    assert rc == cli.EXIT_ERROR and "--face-model is for 'codeformer restore' only" in err   # restore only
    import sys
    monkeypatch.setitem(sys.modules, "spandrel", None)
    rc, _, err = call("restore", src, "--face-model", restoreformer_file, "--models", models_dir, *DETECTOR_ARGS)
    assert rc == cli.EXIT_ERROR and "--face-model needs spandrel: pip install spandrel" in err
    rc, _, err = call("restore", src, "--smooth-online", "1.5", "--models", models_dir, *DETECTOR_ARGS)
    assert rc == cli.EXIT_ERROR and "--smooth-online" in err


def test_video_faces_detected_first_then_smoothed_and_restored(tmp_path, models_dir, restoreformer_file):
    """Zero-lag smoothing (the default): a first pass finds the faces of every frame, the second
    restores them; the face moves 3 px a frame."""
    base = astronaut((192, 192))
    frames = [np.roll(base, 3 * i, axis=1) for i in range(3)]
    src = tmp_path / "clip.mp4"
    make_video(src, frames, fps=8, audio=False)
    rc, out, err = call("restore", src, "-s", "1", "--face-model", restoreformer_file, "--only-center-face",
                        "--detection-threshold", "0.6", "--smooth", "2", "--draw-box", "--models", models_dir,
                        *DETECTOR_ARGS)
    assert rc == 0, err
    assert "3 faces, 0 frames with no face" in out
    got = video_facts(tmp_path / "clip_restored.mp4")
    assert got["frames"] == 3 and (got["width"], got["height"]) == (192, 192)
