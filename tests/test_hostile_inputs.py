"""The command line against hostile inputs (issue 14): extreme shapes, out of memory, empty and
damaged files checked before any network loads, variable frame rate, rotation, truncated
videos, the memory budget option and ``weights verify``. Small media made here; the detector
finds no face in them (``NO_FACES``), so CodeFormer never runs."""
from __future__ import annotations

import io
import struct
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from helpers import run_cli, DETECTOR_ARGS, NO_FACES, astronaut, make_video, video_facts
from codeformer_core import cli

CPU_REFUSAL = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
               "you tried to allocate 3276800000 bytes. Error code 12 (Cannot allocate memory)")


@pytest.fixture(scope="module")
def models(models_dir):
    return models_dir


pytestmark = pytest.mark.usefixtures("cached_model_loading")


call = run_cli


def error_lines(err: str):
    return [line for line in err.splitlines() if "error" in line]


def gradient_frames(n: int, w: int = 64, h: int = 48):
    y, x = np.mgrid[0:h, 0:w]
    return [np.dstack([(x * 4 + 30 * i) % 256, (y * 5) % 256, np.full_like(x, 25 * i)]).astype(np.uint8)
            for i in range(n)]


# ----------------------------------------------------------------------------- extreme shapes
def test_extreme_aspect_images_finish_with_a_sane_allocation(tmp_path, models):
    """8000x64 and 64x8000: the detector would see 640x80000 (3.3 GB for one tensor); bounded, the
    whole run (models included) stays small. Peak memory measured in a process of its own."""
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "wide.png"), cv2.resize(astronaut(), (8000, 64))[..., ::-1])
    cv2.imwrite(str(folder / "tall.png"), cv2.resize(astronaut(), (64, 8000))[..., ::-1])
    # VmHWM is this process's own peak: ru_maxrss would carry over the (large) pytest parent's peak,
    # since Linux keeps it across the fork + exec that starts the child.
    script = ("import re, sys; from codeformer_core import cli; rc = cli.main(sys.argv[1:]); "
              "print('MAXRSS', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); "
              "sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", script, "restore", str(folder), "-o", str(tmp_path / "out"),
                        *NO_FACES, "--models", str(models), *DETECTOR_ARGS],
                       capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=600)
    assert r.returncode == 0, r.stderr
    peak_gib = int(r.stdout.split("MAXRSS")[1].split()[0]) / 2 ** 20
    assert peak_gib < 2.0, f"peak {peak_gib:.2f} GiB"      # was 4.8 GiB (wide) and 7 GiB (tall)
    assert cv2.imread(str(tmp_path / "out" / "wide.png")).shape == (128, 16000, 3)
    assert cv2.imread(str(tmp_path / "out" / "tall.png")).shape == (16000, 128, 3)


# ----------------------------------------------------------------------------- out of memory
@pytest.fixture
def allocator_refuses(monkeypatch):
    """The detector network's allocations fail, as on a machine without the memory (frames are
    counted: ``refuse["from"]`` is the first call that fails)."""
    from codeformer_core.models.retinaface import RetinaFace
    real, state = RetinaFace.forward, {"calls": 0, "from": 1}

    def forward(self, x):
        state["calls"] += 1
        if state["calls"] >= state["from"]:
            raise RuntimeError(CPU_REFUSAL)
        return real(self, x)

    monkeypatch.setattr(RetinaFace, "forward", forward)
    return state


def test_out_of_memory_is_one_line_naming_file_and_size(tmp_path, models, allocator_refuses):
    src = tmp_path / "wide.png"
    cv2.imwrite(str(src), cv2.resize(astronaut(), (800, 64))[..., ::-1])
    rc, out, err = call("restore", src, *NO_FACES, "--models", models, *DETECTOR_ARGS)
    assert rc == cli.EXIT_ERROR
    assert error_lines(err) == ["codeformer: error: wide.png: not enough memory for the image (800x64 pixels, "
                                "output 1600x128), even on its own; free some memory (close other programs) "
                                "or lower -s"]
    assert "DefaultCPUAllocator" not in err and "Traceback" not in err
    assert not list(tmp_path.glob("wide_restored*"))


def test_out_of_memory_in_a_video_names_the_frame(tmp_path, models, allocator_refuses):
    src = tmp_path / "clip.mp4"
    make_video(src, gradient_frames(3), fps=10, audio=False)
    allocator_refuses["from"] = 2          # frame 1 is detected, frame 2 is not
    rc, out, err = call("restore", src, "-s", "1", "--frames-per-chunk", "1", "--smooth", "0", *NO_FACES,
                        "--models", models, *DETECTOR_ARGS)
    assert rc == cli.EXIT_ERROR
    assert error_lines(err) == ["codeformer: error: clip.mp4: not enough memory for frame 2 (64x48 pixels, "
                                "output 64x48), even on its own; free some memory (close other programs) or "
                                "lower -s"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


# ----------------------------------------------------------------------------- inputs checked first
@pytest.fixture
def no_model_loading(monkeypatch):
    from codeformer_core.models import loader
    loads = []
    monkeypatch.setattr(loader, "load_model", lambda *a, **k: loads.append(a) or pytest.fail("models loaded"))
    return loads


@pytest.mark.parametrize("name, content, message", [
    ("empty.png", b"", "empty.png: empty file (0 bytes)"),
    ("empty.mp4", b"", "empty.mp4: empty file (0 bytes)"),
    ("broken.jpg", b"not a jpeg at all", "broken.jpg: not a readable image"),
    ("broken.mp4", b"\x00not a video" * 40, "broken.mp4: cannot open video"),
])
def test_bad_single_input_fails_before_models_load(tmp_path, models, no_model_loading, name, content, message):
    (tmp_path / name).write_bytes(content)
    rc, _, err = call("restore", tmp_path / name, *NO_FACES, "--models", models, *DETECTOR_ARGS)
    assert rc == cli.EXIT_ERROR and len(error_lines(err)) == 1 and message in err, err
    assert not no_model_loading


def test_folder_reports_bad_inputs_then_processes_the_rest(tmp_path, models):
    src = tmp_path / "in"
    src.mkdir()
    (src / "empty.png").write_bytes(b"")
    cv2.imwrite(str(src / "good.png"), astronaut((40, 32))[..., ::-1])
    rc, out, err = call("restore", src, "-o", tmp_path / "out", *NO_FACES, "--models", models, *DETECTOR_ARGS)
    assert rc == cli.EXIT_PARTIAL
    assert "empty.png: failed: empty.png: empty file (0 bytes)" in err
    assert "1 file done, 1 failed" in out and (tmp_path / "out" / "good.png").is_file()


# ----------------------------------------------------------------------------- memory budget option
def test_max_memory_sets_the_frames_per_chunk(tmp_path, models, monkeypatch):
    from codeformer_core import pipeline
    src = tmp_path / "hd.mp4"
    make_video(src, gradient_frames(3, 1280, 720), fps=10, audio=False)
    real, seen = pipeline.restore_images, []
    monkeypatch.setattr(pipeline, "restore_images", lambda images, *a, **k: seen.append(len(images)) or
                        real(images, *a, **k))
    args = ["restore", src, "-s", "1", "--smooth", "0", *NO_FACES, "--models", models, *DETECTOR_ARGS]
    assert call(*args, "-o", tmp_path / "a.mp4")[0] == 0
    assert seen == [3]                       # default budget: the whole clip in one chunk
    seen.clear()
    # 64 MiB: half of it holds no 1280x720 frame's 4 float copies (44 MB): one frame at a time
    assert call(*args, "-o", tmp_path / "b.mp4", "--max-memory", "64M")[0] == 0
    assert seen == [1, 1, 1]
    rc, _, err = call(*args, "--max-memory", "lots")
    assert rc == cli.EXIT_USAGE and "not a memory size" in err


# ----------------------------------------------------------------------------- video timing
VFR_TIMES = [0.0, 0.04, 0.08, 0.30, 0.34, 0.60, 0.64, 0.68]


def frame_times(path: Path):
    import av
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        start = s.start_time or 0
        return [float((f.pts - start) * f.time_base) for f in c.decode(s)]


def mean_colours(path: Path):
    return [f.reshape(-1, 3).mean(0) for f in video_facts(path)["pixels"]]


def closest(colour, references):
    return int(np.argmin([np.abs(colour - r).sum() for r in references]))


@pytest.fixture(scope="module")
def vfr_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    make_video(path, gradient_frames(len(VFR_TIMES)), fps=25, audio=True, times=VFR_TIMES)
    assert frame_times(path) == pytest.approx(VFR_TIMES, abs=1e-3)
    return path


def test_variable_frame_rate_keeps_each_frame_time(tmp_path, models, vfr_video):
    dest = tmp_path / "out.mp4"
    rc, out, err = call("restore", vfr_video, "-o", dest, "-s", "1", "--smooth", "0", *NO_FACES,
                        "--models", models, *DETECTOR_ARGS)
    assert rc == 0, err
    assert frame_times(dest) == pytest.approx(VFR_TIMES, abs=2e-3)
    assert "variable frame rate kept: 40 to 260 ms a frame" in out
    refs = [f.reshape(-1, 3).mean(0) for f in gradient_frames(len(VFR_TIMES))]
    assert [closest(c, refs) for c in mean_colours(dest)] == list(range(len(VFR_TIMES)))
    audio_in, audio_out = video_facts(vfr_video)["audio"], video_facts(dest)["audio"]
    assert audio_out["bytes"] == audio_in["bytes"]      # sound copied as is, in step with the frames


def test_fixed_output_rate_picks_frames_by_timestamp(tmp_path, models, vfr_video):
    dest = tmp_path / "out25.mp4"
    rc, out, err = call("restore", vfr_video, "-o", dest, "-s", "1", "--fps", "25", "--smooth", "0", *NO_FACES,
                        "--models", models, *DETECTOR_ARGS)
    assert rc == 0, err
    # The frame on screen at k / 25 s: the last one shown at or before it (the last lasts 40 ms).
    want = [max(i for i, t in enumerate(VFR_TIMES) if t <= k / 25 + 1e-9) for k in range(18)]
    refs = [f.reshape(-1, 3).mean(0) for f in gradient_frames(len(VFR_TIMES))]
    assert [closest(c, refs) for c in mean_colours(dest)] == want
    assert video_facts(dest)["fps"] == 25


def rotate_tag(path: Path, degrees_clockwise: int = 90) -> None:
    """Write a display rotation into the video track's tkhd matrix, as a phone does."""
    data = bytearray(path.read_bytes())
    identity = struct.pack(">9i", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    turn = {90: (0, 0x10000, 0, -0x10000, 0, 0), 270: (0, -0x10000, 0, 0x10000, 0, 0)}[degrees_clockwise]
    at = data.index(identity, data.index(b"tkhd"))
    data[at:at + 36] = struct.pack(">9i", *turn, 0, 0, 0x40000000)
    path.write_bytes(bytes(data))


def test_rotation_metadata_is_applied(tmp_path, models):
    from codeformer_core.io.video import VideoReader
    src = tmp_path / "phone.mp4"
    frames = gradient_frames(3)
    make_video(src, frames, fps=10, audio=False)
    rotate_tag(src, 90)
    with VideoReader(src) as r:
        assert r.info.rotation == 90 and (r.info.width, r.info.height) == (48, 64)
    dest = tmp_path / "upright.mp4"
    rc, out, err = call("restore", src, "-o", dest, "-s", "1", "--smooth", "0", *NO_FACES, "--models", models,
                        *DETECTOR_ARGS)
    assert rc == 0, err
    assert "rotation metadata 90\u00b0 applied" in out
    got = video_facts(dest)
    assert (got["width"], got["height"]) == (48, 64)
    upright = np.rot90(frames[1], k=-1).astype(int)      # turned clockwise, as a player shows it
    assert np.abs(got["pixels"][1].astype(int) - upright).mean() < 6


def test_truncated_video_is_processed_as_far_as_it_decodes(tmp_path, models):
    src = tmp_path / "cut.mp4"
    make_video(src, gradient_frames(30), fps=10, audio=False, options={"movflags": "faststart"})
    data = src.read_bytes()
    src.write_bytes(data[:int(len(data) * 0.6)])          # index first, then half the pictures
    dest = tmp_path / "cut_out.mp4"
    rc, out, err = call("restore", src, "-o", dest, "-s", "1", "--smooth", "0", *NO_FACES, "--models", models,
                        *DETECTOR_ARGS)
    assert rc == 0, err
    written = video_facts(dest)["frames"]
    assert 0 < written < 30
    assert f"cut.mp4: only {written} of 30 frames decoded" in err and "the file looks truncated" in err
    assert f"the output has the {written} frames that decoded" in err


# ----------------------------------------------------------------------------- weights verify
def verify(path):
    o = io.StringIO()
    with redirect_stdout(o):
        rc = cli.main(["weights", "verify", str(path)])
    return rc, o.getvalue().strip()


def load_error(load, path) -> str:
    from codeformer_core.errors import CheckpointError
    with pytest.raises(CheckpointError) as info:
        load(path)
    return str(info.value).splitlines()[0]


def test_verify_says_what_loading_says(tmp_path, models):
    from codeformer_core.models.checkpoint import read_state_dict
    from codeformer_core.models.loader import load_model
    from codeformer_core.models.loader import load_retinaface
    import os
    cf = read_state_dict(models / "facerestore_models" / "codeformer.pth")
    rc, line = verify(models / "facerestore_models" / "codeformer.pth")   # synthetic: not the published file
    assert rc == cli.EXIT_ERROR and line.startswith("FAIL ") and "sha256" in line
    mine = tmp_path / "my_codeformer.pth"                                 # no registry entry: loaded to check
    os.link(models / "facerestore_models" / "codeformer.pth", mine)
    rc, line = verify(mine)
    assert rc == 0 and line.startswith("OK ") and "loads as CodeFormer (restoration)" in line
    missing = tmp_path / "missing_key.pth"
    torch.save({k: v for k, v in cf.items() if k != "position_emb"}, missing)
    rc, line = verify(missing)
    assert rc == cli.EXIT_ERROR and line == "FAIL " + load_error(load_model, missing)
    assert "is a CodeFormer checkpoint that matches no published file" in line and "position_emb" in line
    del cf
    det = read_state_dict(models / "facedetection" / "detection_mobilenet0.25_Final.pth")
    shape = tmp_path / "detection_mobilenet0.25_Final.pth"            # a registry name: checked as a detector
    key = next(k for k, v in det.items() if v.dim() == 4)
    torch.save({**det, key: torch.zeros(1, 1, 1, 1)}, shape)
    rc, line = verify(shape)
    assert rc == cli.EXIT_ERROR and line == "FAIL " + load_error(load_retinaface, shape) and "wrong shape" in line
    nan = tmp_path / "nan_detector.pth"
    bad = det[key].clone()
    bad.view(-1)[0] = float("nan")
    torch.save({**det, key: bad}, nan)
    rc, line = verify(nan)
    assert rc == cli.EXIT_ERROR and line == "FAIL " + load_error(load_retinaface, nan) and "NaN" in line
    other = tmp_path / "other.pth"
    torch.save({"model.diffusion_model.x.weight": torch.zeros(2)}, other)
    rc, line = verify(other)
    assert rc == cli.EXIT_ERROR and "looks like a Stable Diffusion / LDM checkpoint" in line
    empty = tmp_path / "codeformer.pth"
    empty.write_bytes(b"")
    rc, line = verify(empty)
    assert rc == cli.EXIT_ERROR and line == "FAIL " + load_error(load_model, empty)
