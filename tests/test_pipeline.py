"""restore_images and the per-task steps: plumbing, inpaint/colorize semantics, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from codeformer_core.faces.align import align_faces
from codeformer_core.faces.detect import DetectOptions, load_detector
from codeformer_core.faces.paste import PasteOptions
from codeformer_core.errors import CodeFormerError, InputError, SettingsError, WrongVariantError
from codeformer_core.pipeline import (PasteSettings, RunOptions, colorize_faces, crop_hole_masks, gray_model_input,
                                      inpaint_faces, restore_faces, restore_images, run_network, to_frames)
from codeformer_core.dev.synthetic import synth_state_dict

FACE = Path(__file__).parent / "data" / "face_golden"


@pytest.fixture(scope="module")
def faces(astronaut_frame):
    lm = torch.from_numpy(np.load(FACE / "retinaface_align_paste.npz")["landmarks"]).float()
    return align_faces(astronaut_frame, lm[None], torch.tensor([0]))


@pytest.fixture(scope="module")
def detector():
    man = json.loads((FACE / "retinaface_manifest_mobile0.25.json").read_text())
    return load_detector(synth_state_dict(man, face=True))


class IdentityNet(torch.nn.Module):
    """Stands in for the network where only the plumbing around it is tested."""

    def __init__(self, variant="restoration", max_batch=None):
        super().__init__()
        self.variant, self.max_batch, self.calls = variant, max_batch, []
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x, w=None, adain=None):
        self.calls.append(x.shape[0])
        if self.max_batch and x.shape[0] > self.max_batch:
            raise torch.OutOfMemoryError("simulated")
        return x


def test_to_frames_accepts_gray_alpha_16bit_and_refuses_nan():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    f = to_frames(gray)
    assert f.shape == (1, 3, 3, 4) and torch.equal(f[0, 0], f[0, 2])
    assert torch.allclose(f[0, 1], torch.from_numpy(gray).float() / 255)
    rgba = torch.rand(2, 5, 6, 4)
    assert torch.equal(to_frames(rgba), rgba[..., :3].permute(0, 3, 1, 2))
    deep = np.full((4, 4, 3), 65535, np.uint16)
    assert torch.equal(to_frames(deep), torch.ones(1, 3, 4, 4))
    bad = torch.rand(1, 4, 4, 3)
    bad[0, 1, 1, 1] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        to_frames(bad)
    with pytest.raises(InputError, match="channels"):
        to_frames(torch.rand(1, 4, 4, 5))
    with pytest.raises(ValueError, match="channels"):    # still a ValueError for older callers
        to_frames(torch.rand(1, 4, 4, 5))


def test_user_fixable_problems_are_codeformer_errors(faces):
    """What the user can fix is a CodeFormerError (the CLI reports it as one line, not as a crash);
    the ValueError base keeps old ``except ValueError`` callers working."""
    with pytest.raises(SettingsError, match="a face detector is needed") as ei:
        restore_images(torch.rand(1, 8, 8, 3), IdentityNet())
    assert isinstance(ei.value, CodeFormerError) and isinstance(ei.value, ValueError)
    with pytest.raises(InputError, match="2 masks for 1 images"):
        crop_hole_masks(faces, torch.zeros(2, 512, 512))
    with pytest.raises(InputError, match=r"expected images \[B,H,W,C\]"):
        to_frames(torch.rand(2, 1, 4, 4, 3))


def test_wrong_variant_carries_have_and_want(faces, synthetic_model):
    """The core says what it has and needs; the hint (which node, which command) is the front end's."""
    with pytest.raises(WrongVariantError, match="needs the restoration model.*inpainting variant") as ei:
        restore_faces(synthetic_model("inpainting"), faces)
    assert (ei.value.have, ei.value.want) == ("inpainting", "restoration")
    assert "CodeFormer" not in str(ei.value) and "codeformer " not in str(ei.value)  # no UI names
    with pytest.raises(WrongVariantError, match="needs the colorization model") as ei:
        colorize_faces(synthetic_model("restoration"), faces)
    assert (ei.value.have, ei.value.want) == ("restoration", "colorization")
    with pytest.raises(WrongVariantError) as ei:
        restore_images(torch.rand(1, 8, 8, 3), synthetic_model("inpainting"), task="colorize", has_aligned=True)
    assert (ei.value.have, ei.value.want) == ("inpainting", "colorization")


def test_out_of_memory_halves_the_batch(faces):
    net = IdentityNet(max_batch=1)
    crops = torch.cat([faces.crops, faces.crops.flip(-1), faces.crops * 0.5])
    out = run_network(net, crops, batch_size=4)
    assert net.calls == [3, 2, 1, 1, 1]
    assert torch.allclose(out, crops, atol=1e-6)


def test_default_network_batch_is_one_face_on_cpu(faces):
    from codeformer_core.pipeline import default_network_batch
    assert default_network_batch("cpu") == 1 and default_network_batch(torch.device("cuda", 0)) == 8
    net = IdentityNet()
    crops = torch.cat([faces.crops, faces.crops.flip(-1), faces.crops * 0.5])
    out = run_network(net, crops)                       # no batch size: the device's default
    assert net.calls == [1, 1, 1]
    assert torch.allclose(out, crops, atol=1e-6)
    net = IdentityNet()
    run_network(net, crops, batch_size=2)               # an explicit batch is kept on CPU too
    assert net.calls == [2, 1]


def test_no_face_frames_pass_through(astronaut_frame, detector):
    images = torch.cat([astronaut_frame, astronaut_frame.flip(-1)]).permute(0, 2, 3, 1)
    result = restore_images(images, IdentityNet(), detector, detect=DetectOptions(conf_threshold=0.9999))
    assert result.face_counts == [0, 0]
    assert torch.equal(result.images, images)
    assert result.mask.shape == (2, 512, 512) and float(result.mask.max()) == 0


def test_empty_batch(detector):
    result = restore_images(torch.zeros(0, 64, 64, 3), IdentityNet(), detector)
    assert result.images.shape == (0, 64, 64, 3) and result.face_counts == []


def test_chunked_equals_single_calls_and_upscale(astronaut_frame, detector):
    """8 frames through chunks of 3 equal 8 single calls; upscale 2 doubles the size."""
    frames = torch.cat([astronaut_frame * (0.6 + 0.05 * i) for i in range(8)]).permute(0, 2, 3, 1)
    kw = dict(detect=DetectOptions(conf_threshold=0.6, selection="largest"),
              paste=PasteSettings(PasteOptions(upscale=2.0)))
    batched = restore_images(frames, IdentityNet(), detector, run=RunOptions(frames_per_chunk=3), **kw)
    singles = [restore_images(frames[i:i + 1], IdentityNet(), detector, **kw) for i in range(8)]
    assert batched.images.shape == (8, 1024, 1024, 3)
    assert batched.face_counts == [s.face_counts[0] for s in singles] and sum(batched.face_counts) > 0
    for i, s in enumerate(singles):
        assert (batched.images[i] - s.images[0]).abs().max() < 1e-5
        assert (batched.mask[i] - s.mask[0]).abs().max() < 1e-5


def test_pure_white_hole_detection(faces):
    crops = faces.crops.clone()
    crops[..., 100:120, 200:260] = 1.0
    hole = crop_hole_masks(faces.with_crops(crops), None)
    assert int(hole.sum()) == 20 * 60 and bool(hole[0, 0, 110, 230])


def test_mask_of_the_wrong_size_is_refused(faces):
    with pytest.raises(InputError, match="mask has shape .* but the image is 512x512"):
        crop_hole_masks(faces, torch.zeros(1, 256, 256))


def test_inpaint_keeps_everything_outside_the_hole(faces, synthetic_model):
    frame_mask = torch.zeros(1, 512, 512)
    frame_mask[0, 125:145, 205:245] = 1.0  # over the mouth, in frame pixels
    out = inpaint_faces(synthetic_model("inpainting"), faces, frame_mask)
    hole = crop_hole_masks(faces, frame_mask)
    assert 0.02 < hole.float().mean() < 0.5
    keep = ~hole.expand_as(faces.crops)
    assert torch.equal(out.crops[keep], faces.crops[keep])
    assert (out.crops[~keep] - faces.crops[~keep]).abs().mean() > 1e-3
    assert out.meta["variant"] == "inpainting"


def test_colorize_feeds_gray_and_returns_colour(faces, synthetic_model):
    gray_in = gray_model_input(faces.crops)
    assert torch.equal(gray_in[:, 0], gray_in[:, 1]) and torch.equal(gray_in[:, 1], gray_in[:, 2])
    gray_faces = faces.with_crops(gray_in)
    out = colorize_faces(synthetic_model("colorization"), gray_faces)
    assert out.crops.shape == faces.crops.shape
    assert (out.crops[:, 0] - out.crops[:, 2]).abs().mean() > 1e-3, "colorized face has no colour"
    assert not bool(out.gray.any()), "paste-back would turn the colorized face gray again"


def test_chunk_size_follows_frame_size():
    from codeformer_core.pipeline import auto_frames_per_chunk
    small = auto_frames_per_chunk(256, 256, "cpu")
    huge = auto_frames_per_chunk(8192, 8192, "cpu")
    assert 1 <= huge < small <= 64
    assert auto_frames_per_chunk(1024, 1024, "cpu", upscale=4) <= auto_frames_per_chunk(1024, 1024, "cpu")
