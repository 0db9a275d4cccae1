"""Hostile shapes and memory (issue 14): bounded detector input, out-of-memory turned into one
line, the chunk loop's budget. Small inputs made here; the detector finds no face in them or
runs the cheap MobileNet, so nothing here runs CodeFormer."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from codeformer_core.chunks import (DEFAULT_MEMORY_BUDGET, chunk_size_for, is_out_of_memory, parse_memory,
                                    run_in_chunks)
from codeformer_core.dev.synthetic import synth_state_dict
from codeformer_core.errors import CodeFormerError, NotEnoughMemoryError
from codeformer_core.faces.detect import MAX_NETWORK_PIXELS, MAX_NETWORK_SIDE, load_detector, network_size
from codeformer_core.faces.paste import PasteOptions

FACE_DATA = Path(__file__).parent / "data" / "face_golden"
CPU_REFUSAL = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
               "you tried to allocate 3276800000 bytes. Error code 12 (Cannot allocate memory)")


@pytest.fixture(scope="module")
def mobile():
    manifest = json.loads((FACE_DATA / "retinaface_manifest_mobile0.25.json").read_text())
    return load_detector(synth_state_dict(manifest, face=True))


# ----------------------------------------------------------------------------- detector input size
def test_ordinary_frames_keep_the_short_side_rule():
    assert network_size(1080, 1920, 640) == (640, 1138)      # 1920 * 640 / 1080 = 1137.8
    assert network_size(480, 640, 640) == (640, 853)         # 640 * 640 / 480 = 853.3
    assert network_size(2000, 500, 640) == (2560, 640)       # 4:1 portrait
    assert network_size(512, 512, None) == (512, 512)
    assert network_size(100, 120, 200) == (200, 240)         # enlarging


@pytest.mark.parametrize("h, w, resolution, want", [
    (64, 8000, 640, (32, 4096)),       # would be 640 x 80000; long side bound: factor 4096 / 8000
    (8000, 64, 640, (4096, 32)),
    (4000, 6000, 0, (1672, 2508)),     # original size asked: area bound, factor sqrt(2048^2 / 24e6)
])
def test_extreme_frames_are_scaled_within_bounds(h, w, resolution, want):
    got = network_size(h, w, resolution)
    assert got == want
    assert max(got) <= MAX_NETWORK_SIDE and got[0] * got[1] <= MAX_NETWORK_PIXELS


@pytest.mark.parametrize("h, w", [(64, 8000), (8000, 64)])
def test_extreme_aspect_detection_runs_small(mobile, h, w):
    seen = []
    hook = mobile.net.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    try:
        frames = torch.linspace(0, 1, h * w).reshape(1, 1, h, w).expand(2, 3, h, w).contiguous()
        dets = mobile.detect(frames, resolution=640, chunk_size=8)
    finally:
        hook.remove()
    assert dets.num_frames == 2 and dets.frame_size == (h, w)
    assert seen and all(s[2] * s[3] <= MAX_NETWORK_PIXELS and max(s[2:]) <= MAX_NETWORK_SIDE for s in seen)
    assert sum(s[0] for s in seen) == 2


def test_detection_batches_hold_at_most_the_pixel_bound(mobile, monkeypatch):
    from codeformer_core.faces import detect
    monkeypatch.setattr(detect, "MAX_NETWORK_PIXELS", 3 * 64 * 64)
    seen = []
    hook = mobile.net.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    try:
        mobile.detect(torch.rand(7, 3, 64, 64), resolution=None, chunk_size=8)
    finally:
        hook.remove()
    assert [s[0] for s in seen] == [3, 3, 1]


# ----------------------------------------------------------------------------- out of memory
def test_out_of_memory_kinds():
    assert is_out_of_memory(RuntimeError(CPU_REFUSAL))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only allocators' errors count


def test_chunk_loop_halves_then_names_the_item():
    calls = []

    def step(start, stop):
        calls.append((start, stop))
        if stop - start > 1 or start == 2:
            raise RuntimeError(CPU_REFUSAL)
        return start

    with pytest.raises(NotEnoughMemoryError) as info:
        run_in_chunks(5, 4, step, describe=lambda i: f"frame {i + 1} (8000x64)")
    e = info.value
    assert isinstance(e, CodeFormerError) and e.item == 2
    assert str(e) == "not enough memory for frame 3 (8000x64), even on its own"
    assert "\n" not in str(e) and "DefaultCPUAllocator" not in str(e)
    assert calls == [(0, 4), (0, 2), (0, 1), (1, 2), (2, 3)]


def test_nested_loops_retry_outer_chunks_first():
    """An inner loop (network batch) out of memory at one item makes the outer (frames) halve."""
    outer_sizes = []

    def inner_fails_with_many_frames(start, stop):
        outer_sizes.append(stop - start)
        run_in_chunks(1, 1, lambda a, b: (_ for _ in ()).throw(MemoryError()) if stop - start > 1 else a)
        return stop - start

    assert run_in_chunks(4, 4, inner_fails_with_many_frames) == [1, 1, 1, 1]
    assert outer_sizes[:3] == [4, 2, 1]


REAL_REFUSAL = r"""
import json, resource, sys
import torch
from codeformer_core.chunks import run_in_chunks
from codeformer_core.errors import NotEnoughMemoryError
MiB = 2 ** 20
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
# address space for what is mapped now plus 768 MiB: a 512 MiB item fits, two do not
resource.setrlimit(resource.RLIMIT_AS, (vm + 768 * MiB, resource.RLIM_INFINITY))
sizes, errors = [], []
def step(start, stop, item=512 * MiB):
    sizes.append(stop - start)
    try:
        t = torch.empty((stop - start) * item, dtype=torch.uint8)
    except BaseException as e:
        errors.append(type(e).__name__ + ": " + str(e)[:300])
        raise
    t.fill_(1)  # touched: the memory is really there
    return int(t.numel())
out = run_in_chunks(4, 4, step)
try:
    run_in_chunks(1, 1, lambda a, b: step(a, b, item=2048 * MiB), describe=lambda i: "the huge item")
    alone = "no error"
except NotEnoughMemoryError as e:
    alone = str(e)
print(json.dumps({"sizes": sizes, "out": out, "errors": errors, "alone": alone}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc (RLIMIT_AS)")
def test_chunk_loop_halves_on_a_real_cpu_allocation_failure():
    """Not a hand-written message: a subprocess with a capped address space, where a chunk's
    allocation really fails in PyTorch's CPU allocator; the loop halves until one item fits."""
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-c", REAL_REFUSAL], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["sizes"] == [4, 2, 1, 1, 1, 1] + [1], r  # halved to one item and kept; then the huge item
    assert r["out"] == [512 * 2 ** 20] * 4
    assert len(r["errors"]) == 3 and all("can't allocate memory" in e for e in r["errors"]), r["errors"]
    assert r["alone"] == "not enough memory for the huge item, even on its own"


# ----------------------------------------------------------------------------- memory budget
def test_parse_memory():
    assert parse_memory("3G") == 3 * 2 ** 30
    assert parse_memory("1.5g") == int(1.5 * 2 ** 30)
    assert parse_memory("800M") == 800 * 2 ** 20
    assert parse_memory("2GiB") == parse_memory("2GB") == 2 * 2 ** 30
    assert parse_memory(str(2 ** 30)) == 2 ** 30
    for bad in ("lots", "3X", "-1G", "10M"):
        with pytest.raises(ValueError):
            parse_memory(bad)


def test_chunk_size_for_budget():
    assert chunk_size_for(100 * 2 ** 20, 1 * 2 ** 30) == 10
    assert chunk_size_for(3 * 2 ** 30, 1 * 2 ** 30) == 1          # one item over the budget: still one
    assert chunk_size_for(1, 2 ** 30, most=8) == 8
    assert chunk_size_for(DEFAULT_MEMORY_BUDGET // 4) == 4         # default budget, whatever is free
    assert math.isclose(DEFAULT_MEMORY_BUDGET, 2 * 2 ** 30)


# ----------------------------------------------------------------------------- banded output
class InvertNet(torch.nn.Module):
    """Stands in for CodeFormer: the restored face is the inverted crop, so pasted faces show."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.variant, self.calls = "restoration", []
        self.anchor = torch.nn.Parameter(torch.zeros(1, dtype=dtype), requires_grad=False)

    def forward(self, x, w=None, adain=None):
        self.calls.append(int(x.shape[0]))
        return -x


@pytest.fixture(scope="module")
def scene():
    """Two 96x128 frames, two overlapping faces in frame 0 and one in frame 1 (known landmarks,
    so no detector runs)."""
    import numpy as np
    from PIL import Image
    from codeformer_core.faces.detect import Detections
    rgb = np.asarray(Image.open(FACE_DATA / "astronaut_rgb.png").resize((128, 96), Image.BILINEAR))
    frame = torch.from_numpy(rgb.copy()).float() / 255
    frames = torch.stack([frame, frame.flip(1)])                                   # [2,96,128,3]
    lm = torch.from_numpy(np.load(FACE_DATA / "retinaface_align_paste.npz")["landmarks"]).float()
    lm = lm * torch.tensor([128 / 512, 96 / 512])
    points = torch.stack([lm, lm + torch.tensor([9.0, 6.0]), lm])
    lo, hi = points.amin(1), points.amax(1)
    boxes = torch.cat([lo - 10, hi + 10], 1)
    dets = Detections(boxes, torch.tensor([0.99, 0.95, 0.98]), points, torch.tensor([0, 0, 1]), 2, (96, 128))
    return frames, dets


@pytest.mark.parametrize("upscale", [1.0, 2.0, 1.5, 2.37])
def test_banded_paste_equals_whole(scene, upscale):
    from codeformer_core.faces.align import align_faces
    from codeformer_core.faces.paste import paste_bands, paste_faces
    from codeformer_core.pipeline import to_frames
    frames, dets = scene
    x = to_frames(frames)
    faces = align_faces(x, dets.landmarks, dets.frame_index, boxes=dets.boxes, scores=dets.scores, size=128)
    restored = 1 - faces.crops
    whole, whole_mask = paste_faces(x, faces, restored, upscale=upscale)
    for band_rows in (1, 7):
        bands = list(paste_bands(x, faces, restored, upscale=upscale, band_rows=band_rows))
        assert len(bands) > 5 and [b[0] for b in bands] == sorted(b[0] for b in bands)
        assert torch.equal(torch.cat([b[1] for b in bands], 2), whole)
        assert torch.equal(torch.cat([b[2] for b in bands], 2), whole_mask)
    assert whole_mask.amax() > 0.9   # faces were pasted


def test_upscaler_bands_come_from_the_same_tiles():
    import torch.nn.functional as F
    from codeformer_core.faces.paste import paste_bands
    from codeformer_core.faces.batch import FaceBatch
    from codeformer_core.io.upscale import tiled

    def run(t):  # context-dependent, like a network: each output pixel sees its neighbours
        return F.interpolate(t, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)

    frames = torch.rand(1, 3, 50, 37)
    whole = tiled(run, frames, 2, 16, tile_pad=3)
    bands = [tiled(run, frames, 2, 16, tile_pad=3, rows=(y, min(50, y + 16))) for y in range(0, 50, 16)]
    assert torch.equal(torch.cat(bands, 2), whole)
    with pytest.raises(ValueError, match="tile boundaries"):
        tiled(run, frames, 2, 16, rows=(5, 21))

    def upscaler(f):
        return tiled(run, f, 2, 16, tile_pad=3)
    upscaler.scale, upscaler.row_step = 2, 16
    upscaler.rows = lambda f, y0, y1: tiled(run, f, 2, 16, tile_pad=3, rows=(y0, y1))
    no_faces = FaceBatch.empty(1, (50, 37), 512, frames.device)
    out = list(paste_bands(frames, no_faces, upscale=2, background_upscaler=upscaler, band_rows=20))
    assert [b[0] for b in out] == [0, 32, 64, 96]                  # bands of 32 output rows (one tile row)
    assert torch.equal(torch.cat([b[1] for b in out], 2), whole)


def test_restore_images_in_tiny_bands_equals_one_band(scene):
    from codeformer_core.pipeline import PasteSettings, RunOptions, restore_images
    frames, dets = scene
    kw = dict(paste=PasteSettings(PasteOptions(upscale=2.0)), detections=dets)
    big = RunOptions(batch_size=8, frames_per_chunk=1, memory_budget=2 ** 34)   # chunks alike: bands differ
    small = RunOptions(batch_size=8, frames_per_chunk=1, memory_budget=200_000)
    one = restore_images(frames, InvertNet(), None, run=big, **kw)
    bands = []

    def sink(first, row0, rgb, mask):
        bands.append((first, row0, rgb.shape[0], rgb.shape[1]))
        got[first:first + rgb.shape[0], row0:row0 + rgb.shape[1]] = (rgb * 255 + 0.5).to(torch.uint8)

    got = torch.zeros(2, 192, 256, 3, dtype=torch.uint8)
    tiny = restore_images(frames, InvertNet(), None, run=small, sink=sink, **kw)
    assert tiny.images is None and tiny.face_counts == one.face_counts == [2, 1]
    assert len(bands) > 20 and {b[2] for b in bands} == {1}   # a few rows per band
    # Within a small budget the faces' layers are made one face at a time (their own windows):
    # the same pixels up to float rounding.
    assert (got.int() - (one.images * 255 + 0.5).to(torch.uint8).int()).abs().max() <= 1
    collected = restore_images(frames, InvertNet(), None, run=small, **kw)
    assert torch.allclose(collected.images, one.images, atol=1e-6, rtol=0)
    assert torch.allclose(collected.mask, one.mask, atol=1e-6, rtol=0)
    assert (collected.mask > 0.5).sum() > 1000


def test_integer_pixels_paste_as_their_float_frames(scene):
    """A photo read as uint8 is pasted from its pixels, band by band, without a float copy of
    the whole frame: the same output as from the float frames."""
    from codeformer_core.faces.align import align_faces
    from codeformer_core.faces.paste import paste_bands, paste_faces
    from codeformer_core.pipeline import rgb_planes, to_frames
    frames, dets = scene
    u8 = (frames * 255).round().to(torch.uint8)          # [2,96,128,3], as a file is read
    x = to_frames(u8)
    faces = align_faces(x, dets.landmarks, dets.frame_index, boxes=dets.boxes, scores=dets.scores, size=128)
    for upscale in (1.0, 2.0, 1.5):
        want, want_mask = paste_faces(x, faces, 1 - faces.crops, upscale=upscale)
        bands = list(paste_bands(rgb_planes(u8), faces, 1 - faces.crops, upscale=upscale, band_rows=9))
        assert torch.equal(torch.cat([b[1] for b in bands], 2), want)
        assert torch.equal(torch.cat([b[2] for b in bands], 2), want_mask)


def test_network_batch_within_the_budget(scene):
    from codeformer_core.pipeline import FORWARD_BYTES_PER_FACE, RunOptions, faces_per_batch, restore_images
    frames, dets = scene
    net = InvertNet()
    restore_images(frames, net, None, detections=dets,
                   run=RunOptions(batch_size=8, frames_per_chunk=2, memory_budget=2 ** 31))
    assert net.calls == [1, 1, 1]          # a float32 forward (~640 MB) in half of 2 GiB: one face at a time
    net = InvertNet()
    restore_images(frames, net, None, detections=dets,
                   run=RunOptions(batch_size=2, frames_per_chunk=2, memory_budget=2 ** 34))
    assert net.calls == [2, 1]             # the asked batch is the most
    assert faces_per_batch(InvertNet(), 8 * FORWARD_BYTES_PER_FACE) == 4
    assert faces_per_batch(InvertNet(torch.float16), 8 * FORWARD_BYTES_PER_FACE) == 8


def test_frame_chunks_from_the_budget_not_free_memory(monkeypatch):
    from codeformer_core import pipeline
    # A 1080p frame: 4 float copies of 1920x1080x3 = 99.5 MB in half of 1 GiB -> 5 frames.
    assert pipeline.auto_frames_per_chunk(1080, 1920, "cpu", budget=2 ** 30, output_whole=False) == 5
    # Pasted whole at 2x, the output's copies count too: over the budget, still one frame.
    assert pipeline.auto_frames_per_chunk(1080, 1920, "cpu", upscale=2, budget=2 ** 30) == 1
    assert pipeline.auto_frames_per_chunk(64, 64, "cpu", budget=2 ** 30) == 64
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (1, 1))   # nothing free: not looked at
    assert pipeline.auto_frames_per_chunk(1080, 1920, "cuda", budget=2 ** 30, output_whole=False) == 5
