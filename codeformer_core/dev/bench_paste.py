"""Benchmark: batched align + paste-back vs a per-face OpenCV loop doing the same work.

    python -m codeformer_core.dev.bench_paste [--device cpu|cuda] [--repeats N] [--frames N]
                                              [--size PX] [--baseline PATH]

The case: ``--frames`` random frames of ``--size`` x ``--size`` pixels with two faces each (the
FFHQ template at half scale, left and right of the centre). Both sides do the work of the
reference face helper (docs/faces.md) with the crop itself as the "restored" face:

* the OpenCV baseline (``cv2_per_face`` below), face by face: LMEDS similarity fit, 512x512
  ``warpAffine`` crop with the grey border, then back: ``warpAffine`` of the face and of a ones
  mask with the inverse affine over the whole frame, erosion, ``w_edge`` from the mask area,
  second erosion, Gaussian feather, float blend;
* ours: landmarks -> batched similarity fit -> one batched crop warp -> batched paste with the
  same feathered square mask (``align_faces`` + ``paste_faces``). The float conversion of the
  uint8 frames is done once outside the timing (frames arrive as float tensors in ComfyUI).

``--baseline PATH`` also runs an external baseline script (executed by path; it must leave ``dt``
in seconds, and may leave ``frames`` (list of HxWx3 uint8) and ``lms`` (list of 5x2 landmarks),
which then replace the built-in case for every side). Each side is run ``--repeats`` times,
interleaved, and the best time is reported, because shared CPUs make single runs noisy.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import runpy
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..faces.align import BORDER_RGB, FFHQ_TEMPLATE_512, align_faces
from ..faces.paste import paste_faces


def make_case(frames: int = 16, size: int = 1024, seed: int = 0) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Random uint8 RGB frames and the landmarks of two faces (the same in every frame)."""
    rng = np.random.default_rng(seed)
    imgs = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(frames)]
    tmpl = FFHQ_TEMPLATE_512.numpy().astype(np.float32)
    k = size / 1024.0  # faces at (300, 500) and (700, 500) of a 1024 frame, 256 px wide
    lms = [(tmpl - 256.0) * (0.5 * k) + np.array([cx * k, 500.0 * k], np.float32) for cx in (300.0, 700.0)]
    return imgs, lms


def cv2_align_face(img: np.ndarray, lm: np.ndarray, crop: int = 512) -> Tuple[np.ndarray, np.ndarray]:
    """One face the reference helper's way: LMEDS similarity fit and a ``crop`` px warpAffine with the grey
    border (the frame treated as BGR, like cv2). Returns (affine, crop)."""
    import cv2
    tmpl = FFHQ_TEMPLATE_512.numpy().astype(np.float32) * (crop / 512.0)
    border_bgr = tuple(int(v) for v in BORDER_RGB[::-1])
    fit = cv2.estimateAffinePartial2D(np.asarray(lm, np.float32), tmpl, method=cv2.LMEDS)[0]
    return fit, cv2.warpAffine(img, fit, (crop, crop), borderMode=cv2.BORDER_CONSTANT, borderValue=border_bgr)


def cv2_paste_face(result: np.ndarray, face: np.ndarray, fit: np.ndarray,
                   parse_mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Paste one face back into ``result`` (float32 HxWx3) the reference helper's way: inverse warp of
    the face and of a ones mask over the whole frame, erosion, edge from the mask area, second erosion,
    Gaussian feather, float blend; ``parse_mask`` (crop-sized, 0..1) replaces the square mask where it
    is smaller, as the helper does with a face parser."""
    import cv2
    h, w = result.shape[:2]
    back = cv2.invertAffineTransform(fit)
    face_back = cv2.warpAffine(face, back, (w, h))
    cover = cv2.erode(cv2.warpAffine(np.ones(face.shape[:2], np.float32), back, (w, h)), np.ones((2, 2), np.uint8))
    edge = int(np.sqrt(cover.sum())) // 20
    inner = cv2.erode(cover, np.ones((2 * edge, 2 * edge), np.uint8))
    soft = cv2.GaussianBlur(inner, (2 * edge + 1, 2 * edge + 1), 0)[:, :, None]
    if parse_mask is not None:
        parse_back = cv2.warpAffine(parse_mask.astype(np.float32), back, (w, h), flags=cv2.INTER_CUBIC)[:, :, None]
        soft = np.where(parse_back < soft, parse_back, soft)
    return soft * (cover[:, :, None] * face_back) + (1.0 - soft) * result


def cv2_per_face(frames: Sequence[np.ndarray], lms: Sequence[np.ndarray], crop: int = 512) -> float:
    """The per-face OpenCV align + paste loop over every frame; returns seconds."""
    t0 = time.perf_counter()
    for img in frames:
        aligned = [cv2_align_face(img, lm, crop) for lm in lms]
        result = img.astype(np.float32)
        for fit, face in aligned:  # "restored" face = the aligned crop itself
            result = cv2_paste_face(result, face, fit)
    return time.perf_counter() - t0


def run_external(path: str) -> dict:
    """Execute an external baseline script; return its globals (``dt``, maybe ``frames``, ``lms``)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        g = runpy.run_path(path, run_name="external_paste_baseline")
    if "dt" not in g:
        raise SystemExit(f"{path}: the baseline script must set dt (seconds)")
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
    paste_faces(frames, faces, faces.crops)
    _sync(dev)
    return time.perf_counter() - t0


def _row(name: str, times: List[float], faces: int) -> str:
    best = min(times)
    return (f"{name:<24}: {best:.3f} s ({best / faces * 1000:.1f} ms/face)  runs: "
            + ", ".join(f"{t:.3f}" for t in times))


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=1024, help="frame height and width in pixels")
    ap.add_argument("--baseline", metavar="PATH", default=None,
                    help="also run this external baseline script (it must set dt; its frames/lms, if "
                         "any, replace the built-in case)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)

    external = run_external(args.baseline) if args.baseline else None
    frames_np, lms = make_case(args.frames, args.size)
    if external is not None and "frames" in external and "lms" in external:
        frames_np, lms = list(external["frames"]), list(external["lms"])
    stack = np.stack(frames_np)                                  # [B,H,W,3] uint8
    lm = np.stack(lms).astype(np.float32)                        # [F,5,2], the same in every frame
    B, F_ = stack.shape[0], lm.shape[0]
    frames = (torch.from_numpy(stack).to(dev).permute(0, 3, 1, 2).float() / 255.0).contiguous()
    landmarks = torch.from_numpy(lm)[None].expand(B, F_, 5, 2).reshape(-1, 5, 2).to(dev)
    frame_index = torch.arange(B, device=dev).repeat_interleave(F_)

    run_ours(frames, landmarks, frame_index)                     # warm-up (allocator, kernels)
    t_cv2: List[float] = []
    t_ext: List[float] = [float(external["dt"])] if external is not None else []
    t_ours: List[float] = []
    for _ in range(args.repeats):
        t_ours.append(run_ours(frames, landmarks, frame_index))
        t_cv2.append(cv2_per_face(frames_np, lms))
        if external is not None and len(t_ext) < args.repeats:
            t_ext.append(float(run_external(args.baseline)["dt"]))
    n = B * F_
    if external is not None and external["_stdout"]:
        print(f"external baseline says: {external['_stdout']}")
    print(f"device {dev}, torch threads {torch.get_num_threads()}, {B} frames "
          f"{frames.shape[-2]}x{frames.shape[-1]}, {n} faces, best of {args.repeats}")
    print(_row("cv2 per-face baseline", t_cv2, n))
    if external is not None:
        print(_row("external baseline", t_ext, n))
    print(_row("batched torch (ours)", t_ours, n))
    tb, to = min(t_cv2), min(t_ours)
    print(f"{'ratio ours/cv2':<24}: {to / tb:.3f}  (speed-up x{tb / to:.2f})")
    if external is not None:
        te = min(t_ext)
        print(f"{'ratio ours/external':<24}: {to / te:.3f}  (speed-up x{te / to:.2f})")


if __name__ == "__main__":
    main()
