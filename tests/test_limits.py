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
