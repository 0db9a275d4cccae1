"""Benchmark: batched align + paste-back vs the per-face OpenCV baseline, same process.

    python -m codeformer_core.bench_paste [--device cpu|cuda] [--baseline PATH] [--repeats N]

The baseline script (FACE_NETS-style cv2 loop, 16 frames of 1024x1024, 2 faces each) is run by
path, not copied; its frames and landmarks are reused so both sides do the same work. Ours:
landmarks -> similarity fit -> one batched crop warp -> "restore" (the crop itself, as the
baseline) -> batched paste with the reference's feathered square mask. The float conversion of
the uint8 frames is done once outside the timing (frames arrive as float tensors in ComfyUI).
Each side is run ``--repeats`` times, interleaved, and the best time is reported, because
shared CPUs make single runs noisy.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import runpy
import time

import numpy as np
import torch

from ..faces.align import align_faces
from ..faces.paste import paste_faces

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_DEFAULT_BASELINE = os.path.normpath(os.path.join(_REPO, "..", "shared", "bench",
                                                  "cv2_paste_baseline.py"))


def run_baseline(path: str) -> dict:
    """Execute the baseline script; return its globals (dt, n, frames, lms, ...)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        g = runpy.run_path(path, run_name="cv2_paste_baseline")
    g["_stdout"] = buf.getvalue().strip()
    return g


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_ours(frames: torch.Tensor, landmarks: torch.Tensor, frame_index: torch.Tensor) -> float:
    """One timed align + identity-restore + paste pass; returns seconds."""
    dev = frames.device
    _sync(dev)
    t0 = time.perf_counter()
    faces = align_faces(frames, landmarks, frame_index)      # defaults (grey check included)
    out, mask = paste_faces(frames, faces, faces.crops)
    _sync(dev)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=_DEFAULT_BASELINE,
                    help="path of cv2_paste_baseline.py (default: ../shared/bench/ from the repo root)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)

    base = run_baseline(args.baseline)
    frames_np = np.stack(base["frames"])                         # [B,H,W,3] uint8 (random)
    lms = np.stack(base["lms"]).astype(np.float32)               # [F,5,2] same for every frame
    B, F_ = frames_np.shape[0], lms.shape[0]
    frames = (torch.from_numpy(frames_np).to(dev).permute(0, 3, 1, 2).float() / 255.0).contiguous()
    landmarks = torch.from_numpy(lms)[None].expand(B, F_, 5, 2).reshape(-1, 5, 2).to(dev)
    frame_index = torch.arange(B, device=dev).repeat_interleave(F_)

    run_ours(frames, landmarks, frame_index)                     # warm-up (allocator, kernels)
    t_base = [float(base["dt"])]
    t_ours = []
    for _ in range(args.repeats):
        t_ours.append(run_ours(frames, landmarks, frame_index))
        if len(t_base) < args.repeats:
            t_base.append(float(run_baseline(args.baseline)["dt"]))
    tb, to = min(t_base), min(t_ours)
    n = B * F_
    print(f"baseline says: {base['_stdout']}")
    print(f"device {dev}, torch threads {torch.get_num_threads()}, {B} frames "
          f"{frames.shape[-2]}x{frames.shape[-1]}, {n} faces, best of {args.repeats}")
    print(f"cv2 per-face baseline : {tb:.3f} s ({tb / n * 1000:.1f} ms/face)  runs: "
          + ", ".join(f"{t:.3f}" for t in t_base))
    print(f"batched torch (ours)  : {to:.3f} s ({to / n * 1000:.1f} ms/face)  runs: "
          + ", ".join(f"{t:.3f}" for t in t_ours))
    print(f"ratio ours/baseline   : {to / tb:.3f}  (speed-up x{tb / to:.2f})")


if __name__ == "__main__":
    main()
