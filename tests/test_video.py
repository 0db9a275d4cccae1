"""Video through the command line: frames, size, rate and audio kept, streaming in chunks,
no output left behind on failure. Tiny videos (a few 64x48 frames) keep this cheap; one
test runs the network on two aligned-face frames batched together."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from helpers import (run_cli, DETECTOR_ARGS, NO_FACES, aligned_face, make_video,
                          video_facts)
from codeformer_core import cli
from codeformer_core.io.video import VideoReader, retime_counts

pytest.importorskip("av")


pytestmark = pytest.mark.usefixtures("cached_model_loading")


call = run_cli


def gradient_frames(n: int, w: int = 64, h: int = 48):
    """Frames that differ from each other (so a shuffled or dropped frame would show)."""
    y, x = np.mgrid[0:h, 0:w]
    return [np.dstack([(x * 4 + 30 * i) % 256, (y * 5) % 256, np.full_like(x, 40 * i)]).astype(np.uint8)
            for i in range(n)]


@pytest.fixture(scope="module")
def audio_video(tmp_path_factory):
    d = tmp_path_factory.mktemp("vid")
    src = d / "clip.mp4"
    make_video(src, gradient_frames(4), fps=12, audio=True)
    return src


@pytest.fixture(scope="module")
def audio_run(audio_video, models_dir):
    dest = audio_video.with_name("clip_out.mp4")
    rc, out, err = call("restore", audio_video, "-o", dest, "-s", "1", *NO_FACES, "--frames-per-chunk", "3",
                        "--models", models_dir, *DETECTOR_ARGS)
    return rc, dest, out, err


def test_video_with_audio_keeps_frames_size_fps_audio(audio_run, audio_video):
    rc, dest, out, err = audio_run
    assert rc == 0, err
    src, got = video_facts(audio_video), video_facts(dest)
    assert got["frames"] == src["frames"] == 4
    assert (got["width"], got["height"]) == (64, 48)
    assert got["fps"] == Fraction(12)
    assert got["audio"]["codec"] == "aac" and got["audio"]["rate"] == 16000
    # remuxed, not re-encoded: the same packets
    assert got["audio"]["packets"] == src["audio"]["packets"]
    assert got["audio"]["bytes"] == src["audio"]["bytes"]
    # no faces found: frames pass through (only the encoder's loss)
    for a, b in zip(src["pixels"], got["pixels"]):
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 3


def test_video_summary_line(audio_run):
    _, _, out, _ = audio_run
    line = next(row for row in out.splitlines() if row.startswith("clip.mp4 -> "))
    assert "4 frames" in line and "0 faces" in line and "4 frames with no face" in line
    assert "audio copied" in line and "faces/s" in line
    assert "codeformer restore: 1 file done; 0 faces found, 4 of 4 frames with no face" in out


def test_video_without_audio_upscaled_and_retimed(tmp_path, models_dir):
    src = tmp_path / "silent.mkv"
    make_video(src, gradient_frames(3), fps=10, audio=False)
    rc, out, err = call("restore", src, "-s", "2", "--fps", "20", *NO_FACES, "--models", models_dir, *DETECTOR_ARGS)
    assert rc == 0, err
    got = video_facts(tmp_path / "silent_restored.mkv")
    assert got["audio"] is None
    assert (got["width"], got["height"]) == (128, 96)
    assert got["fps"] == Fraction(20) and got["frames"] == 6   # duration kept: each frame twice
    assert "no audio" in out


def test_aligned_faces_batched_across_frames(tmp_path, models_dir):
    """Two aligned-face frames restored in one network batch; faces counted per frame."""
    face = aligned_face(64)
    src = tmp_path / "faces.mp4"
    make_video(src, [face, face[:, ::-1]], fps=5, audio=True)
    rc, out, err = call("restore", src, "--has-aligned", "--frames-per-chunk", "2", "--batch-size", "2",
                        "--models", models_dir, *DETECTOR_ARGS)
    assert rc == 0, err
    got = video_facts(tmp_path / "faces_restored.mp4")
    assert got["frames"] == 2 and (got["width"], got["height"]) == (64, 64) and got["audio"] is not None
    assert "2 faces, 0 frames with no face" in out


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_video_clear_error_no_output(tmp_path, models_dir, audio_video, damage):
    bad = tmp_path / "bad.mp4"
    data = audio_video.read_bytes()
    bad.write_bytes(b"\x00not a video at all" * 50 if damage == "garbage" else data[: len(data) // 3])
    rc, out, err = call("restore", bad, *NO_FACES, "--models", models_dir, *DETECTOR_ARGS)
    assert rc == cli.EXIT_ERROR
    errors = [row for row in err.splitlines() if "error" in row]
    assert len(errors) == 1 and "bad.mp4" in errors[0] and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4"]


def test_failure_mid_video_leaves_nothing(tmp_path, models_dir, monkeypatch):
    """An error after some frames were encoded removes the temp file; no output appears."""
    from codeformer_core import pipeline
    src = tmp_path / "v.mp4"
    make_video(src, gradient_frames(4), fps=12, audio=True)
    real, calls = pipeline.restore_images, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "restore_images", flaky)
    rc, _, err = call("restore", src, "--frames-per-chunk", "2", *NO_FACES, "--models", models_dir, *DETECTOR_ARGS)
    assert rc == cli.EXIT_ERROR and "boom" in err and len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def test_reader_streams_in_chunks(audio_video):
    with VideoReader(audio_video) as r:
        sizes = [len(c) for c in r.chunks(3)]
        assert r.info.has_audio and r.info.fps == 12 and r.info.frames == 4
    assert sizes == [3, 1]


def test_retime_counts_keep_duration():
    assert retime_counts(0, 4, Fraction(10), Fraction(20)) == [2, 2, 2, 2]
    assert sum(retime_counts(0, 30, Fraction(30), Fraction(24))) == 24
    assert retime_counts(0, 4, Fraction(30), Fraction(15)) == [1, 0, 1, 0]
    # chunked calls agree with one call
    whole = retime_counts(0, 10, Fraction(25), Fraction(24))
    assert retime_counts(0, 4, Fraction(25), Fraction(24)) + retime_counts(4, 6, Fraction(25), Fraction(24)) == whole
