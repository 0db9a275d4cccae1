"""Temporal codes where users reach them (issue 19): restore_images (temporal 0 is today's output bit
for bit; temporal > 0 without tracks is refused), the Restore Faces node on an IMAGE batch whose faces
Detect Faces tracked (codes checked against the model's logits and faces.temporal computed here), and
the command line's --temporal on a tiny video.

CodeFormer forwards cost tens of seconds on the shared CPU: three frames of one face, forwards shared
through module-scoped fixtures.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import DETECTOR_ARGS, astronaut, make_video, run_cli, run_node
from codeformer_core import pipeline
from codeformer_core.errors import SettingsError
from codeformer_core.faces.temporal import temporal_codes
from codeformer_core.models.codeformer import EncodedFaces

DETECT = dict(threshold=0.7, selection="largest", sort_by="area", index=0, max_faces=0, resolution=640)


def noisy_clip(image: torch.Tensor, n: int, noise: float = 0.01, seed: int = 0) -> torch.Tensor:
    """``n`` copies of a [1,H,W,3] image with small independent noise (a still face filmed)."""
    g = torch.Generator().manual_seed(seed)
    return (image.expand(n, -1, -1, -1) + noise * torch.randn(n, *image.shape[1:], generator=g)).clamp(0, 1)


# -- restore_images -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def found_one(astronaut_image, comfyui):
    """One frame's face, found by the first pass (detect_clip: tracked) with synthetic RetinaFace-R50."""
    (bundle,) = run_node(comfyui.N["CodeFormerFaceDetectorLoader"], detector_model="detection_Resnet50_Final.pth",
                         parsing_model="none")
    found = pipeline.detect_clip([astronaut_image], bundle.detector, 2.0, conf_threshold=0.7, selection="largest")
    assert len(found) == 1 and found.track is not None
    return found


def test_temporal_zero_is_todays_output_bit_for_bit(synthetic_model, astronaut_image, found_one):
    model = synthetic_model("restoration")
    today = pipeline.restore_images(astronaut_image, model, None, detections=found_one)
    off = pipeline.restore_images(astronaut_image, model, None, detections=found_one, temporal=0.0)
    assert today.total_faces == off.total_faces == 1
    assert torch.equal(today.images, off.images) and torch.equal(today.mask, off.mask)


def test_temporal_needs_tracks(synthetic_model, astronaut_image, found_one):
    untracked = replace(found_one, track=None)
    with pytest.raises(SettingsError, match="track"):
        pipeline.restore_images(astronaut_image, synthetic_model("restoration"), None, detections=untracked,
                                temporal=2.0)


def test_clip_codes_are_the_codes_of_the_models_logits_whatever_the_batches(synthetic_model, astronaut_image,
                                                                            found_one):
    """The logits pass (clip_codes) in chunks of one frame and network batches of one face, which
    splits each frame's two faces (tracks 0 and 1) between batches, gives the codes computed here
    from the model's logits for the whole clip at once (faces.temporal.temporal_codes)."""
    model = synthetic_model("restoration")
    clip = noisy_clip(astronaut_image, 2, noise=0.02, seed=1)
    row = found_one.select(torch.tensor([0, 0, 0, 0]))
    dets = replace(row, frame_index=torch.tensor([0, 0, 1, 1]), num_frames=2, track=torch.tensor([0, 1, 0, 1]),
                   interpolated=torch.zeros(4, dtype=torch.bool))
    got = pipeline.clip_codes([clip[:1], clip[1:]], model, dets, 2.0, batch_size=1)
    crops = pipeline.detect_faces(pipeline.to_frames(clip), None, detections=dets).crops
    logits = torch.cat([model.encode_faces(crops[i:i + 1] * 2 - 1, w=0.0).logits for i in (0, 2)])
    want = temporal_codes(logits[[0, 0, 1, 1]], dets.frame_index, dets.track, 2.0)
    assert torch.equal(got.lookup(dets.frame_index, dets.track), want)
    assert torch.equal(got.take_frames([1]).lookup(torch.tensor([0, 0]), torch.tensor([0, 1])), want[2:])


# -- the nodes -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def node_run(comfyui, astronaut_image):
    """Detect Faces (smoothing 2: tracked) on three noisy copies of one face, then Restore Faces with
    temporal 2."""
    N = comfyui.N
    model, _ = run_node(N["CodeFormerModelLoader"], model_name="codeformer.pth", dtype="fp32")
    (bundle,) = run_node(N["CodeFormerFaceDetectorLoader"], detector_model="detection_Resnet50_Final.pth",
                         parsing_model="none")
    clip = noisy_clip(astronaut_image, 3)
    faces = run_node(N["CodeFormerDetectFaces"], image=clip, face_detector=bundle, smoothing=2.0, **DETECT)[0]
    restored = run_node(N["CodeFormerRestoreFaces"], model=model, faces=faces, w=0.5, temporal=2.0)[0]
    return model, faces, restored


def test_detect_faces_carries_track_ids(node_run):
    _, faces, _ = node_run
    assert len(faces) == 3 and faces.frame_index.tolist() == [0, 1, 2]
    assert faces.track is not None and len(set(faces.track.tolist())) == 1


def test_restore_node_decodes_the_codes_chosen_along_the_track(node_run):
    """The node's crops are the decoder's output for the temporal codes of the model's own logits
    (computed here: encode_faces face by face, faces.temporal.temporal_codes). float32 weights: a
    reduced-precision encoder's logits depend on the batch, and a close token could then differ."""
    model, faces, restored = node_run
    model = model.to("cpu")
    enc = EncodedFaces.cat([model.encode_faces(faces.crops[i:i + 1] * 2 - 1, w=0.5) for i in range(len(faces))])
    want = temporal_codes(enc.logits, faces.frame_index, faces.track, sigma=2.0)
    own = enc.logits.argmax(-1)
    changes = lambda c: float((c[1:] != c[:-1]).float().mean())  # noqa: E731
    assert changes(want) < 0.02 < changes(own), (changes(want), changes(own))   # the flips are gone
    expected = torch.cat([(model.decode_faces(enc.take([i]), want[i:i + 1]).clamp(-1, 1) + 1) / 2
                          for i in range(len(faces))])
    assert (restored.crops - expected).abs().max() < 1e-3
    # and not the frame-by-frame choice
    per_frame = (model.decode_faces(enc.take([1]), own[1:2]).clamp(-1, 1) + 1) / 2
    if not torch.equal(own[1], want[1]):
        assert (restored.crops[1] - per_frame[0]).abs().max() > 1e-2


def test_restore_node_refuses_temporal_without_tracks(comfyui, node_run):
    model, faces, _ = node_run
    with pytest.raises(Exception, match="smoothing") as err:   # the pack's own copy of the core's error class
        run_node(comfyui.N["CodeFormerRestoreFaces"], model=model, faces=replace(faces, track=None), w=0.5,
                 temporal=2.0)
    assert type(err.value).__name__ == "SettingsError"


# -- the command line ----------------------------------------------------------------------------
@pytest.mark.usefixtures("cached_model_loading")
def test_cli_temporal_on_a_tiny_video(tmp_path, models_dir):
    pytest.importorskip("av")
    rng = np.random.default_rng(0)
    base = astronaut((256, 256)).astype(np.int16)
    frames = [np.clip(base + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8) for _ in range(3)]
    src, dest = tmp_path / "clip.mp4", tmp_path / "clip_out.mp4"
    make_video(src, frames, fps=12, audio=False)
    args = [a for a in DETECTOR_ARGS if a != "-q"]
    rc, out, err = run_cli("restore", src, "-o", dest, "-s", "1", "--only-center-face", "--detection-threshold",
                           "0.3", "--temporal", "2", "--models", models_dir, *args)
    assert rc == 0, err
    assert dest.exists()
    assert "temporal codes over 2 frames" in out, out
    assert "missed faces filled in" in out, out


def test_cli_temporal_refused_with_online_smoothing(tmp_path):
    rc, _, err = run_cli("restore", tmp_path / "x.mp4", "--temporal", "2", "--smooth-online", "0.5")
    assert rc != 0 and "--temporal" in err
