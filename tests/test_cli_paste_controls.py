"""The command line's paste-back controls (issue 20): regions, mask shape, --paste-mask, face sizes.

One restoration run on a small astronaut (one face, synthetic weights) with a paste mask that
covers the right half only, checked against the input itself; the other tests refuse bad values
before any network runs or let detection filter every face away.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import DETECTOR_ARGS, astronaut, run_cli
from codeformer_core.io.images import read_image

pytestmark = pytest.mark.usefixtures("cached_model_loading")

# The synthetic RetinaFace-R50 finds the astronaut's face at about x 69..169, y 54..160 in 256 px
# (score ~0.73; false faces score below ~0.6); the MobileNet's synthetic boxes are a few pixels.
FACE_ARGS = ["--detector", "retinaface_resnet50", "--detection-threshold", "0.7", "--max-faces", "1", "-s", "1",
             "--no-download"]


def write_png(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]) if rgb.ndim == 3 else rgb)
    return path


@pytest.mark.parametrize("argv, words", [
    (["--keep-regions", "eyes"], "add --parse"),
    (["--region-preset", "skin_only"], "add --parse"),
    (["--mask-blur", "-1"], "--mask-blur"),
    (["--mask-grow", "500"], "--mask-grow"),
    (["--min-face-size", "50", "--max-face-size", "20"], "above --max-face-size"),
])
def test_bad_values_are_refused_before_loading(tmp_path, argv, words):
    src = write_png(tmp_path / "a.png", astronaut((64, 64)))
    rc, out, err = run_cli("restore", src, "--models", tmp_path / "no_models", *argv, *DETECTOR_ARGS)
    assert rc != 0
    assert words in err and "Traceback" not in err and "unexpected" not in err, err
    assert not list(tmp_path.glob("a_restored*"))


def test_unknown_region_names_the_choices(tmp_path, models_dir):
    src = write_png(tmp_path / "a.png", astronaut((64, 64)))
    rc, _, err = run_cli("restore", src, "--parse", "--regions", "skin,pupils", "--models", models_dir,
                         *DETECTOR_ARGS)
    assert rc != 0
    line = err.strip().splitlines()[-1]
    assert "pupils" in line and all(name in line for name in ("skin", "eyes", "mouth", "cloth")), err
    assert "unexpected" not in err and "Traceback" not in err


def test_size_filter_leaves_every_face_alone(tmp_path, models_dir):
    src = write_png(tmp_path / "a.png", astronaut((256, 256)))
    rc, out, err = run_cli("restore", src, "-o", tmp_path / "out", *FACE_ARGS, "--min-face-size", "2000",
                           "--models", models_dir)
    assert rc == 0, err
    assert "0 faces found" in out + err, out + err
    result = read_image(tmp_path / "out" / "a_restored.png").rgb
    assert np.array_equal(result, read_image(src).rgb)


def test_paste_mask_limits_the_change_to_its_area(tmp_path, models_dir):
    rgb = astronaut((256, 256))
    src = write_png(tmp_path / "a.png", rgb)
    # The mask's edge at x = 117 cuts through the face found, so both halves are in play.
    mask = np.zeros((256, 256), np.uint8)
    mask[:, 117:] = 255
    mask_file = write_png(tmp_path / "m.png", mask)
    rc, out, err = run_cli("restore", src, "-o", tmp_path / "out", *FACE_ARGS, "--paste-mask", mask_file,
                           "--models", models_dir)
    assert rc == 0, err
    assert "1 faces found" in out + err, out + err
    result = read_image(tmp_path / "out" / "a_restored.png").rgb.astype(int)
    before = read_image(src).rgb.astype(int)
    assert np.array_equal(result[:, :117], before[:, :117])          # outside the mask: the input, exactly
    assert np.abs(result[:, 117:] - before[:, 117:]).max() > 10        # inside it the face was pasted


def test_paste_mask_of_another_size_is_one_line(tmp_path, models_dir):
    src = write_png(tmp_path / "a.png", astronaut((256, 256)))
    mask_file = write_png(tmp_path / "m.png", np.full((100, 80), 255, np.uint8))
    rc, _, err = run_cli("restore", src, "-o", tmp_path / "out", *FACE_ARGS, "--paste-mask", mask_file,
                         "--models", models_dir, "-q")
    assert rc != 0
    assert "256x256" in err and "Traceback" not in err and "unexpected" not in err, err
    assert not (tmp_path / "out" / "a_restored.png").exists()
