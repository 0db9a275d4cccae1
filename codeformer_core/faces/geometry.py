"""Affine geometry shared by alignment (frame -> crop) and paste-back (crop -> frame).

Affines are [...,2,3] matrices acting on pixel coordinates with pixel centres at integers
(OpenCV's convention). The small per-face geometry runs on the CPU in float64 (exact enough for
4K+ frames and usable on devices without float64); only the float32 sampling grids go to the
frames' device. Both warps work on a per-face *window* of the source or destination, of one
common size so that every face of a batch goes through one ``grid_sample``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

__all__ = ["apply_affine", "compose_affine", "invert_affine", "invert_affine64", "translation",
           "pixel_to_normalized", "face_windows", "window_origin", "window_grid", "row_chunks"]


def apply_affine(aff: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Apply [...,2,3] affines to [...,P,2] points."""
    return pts @ aff[..., :2].transpose(-1, -2) + aff[..., None, :, 2]


def compose_affine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Affine ``a`` after ``b``, both [...,2,3]."""
    lin = a[..., :2] @ b[..., :2]
    t = a[..., :2] @ b[..., 2:] + a[..., 2:]
    return torch.cat([lin, t], -1)


def invert_affine64(affines: torch.Tensor) -> torch.Tensor:
    """Inverse of [...,2,3] affines, float64 on the CPU."""
    a = affines.detach().to(device="cpu", dtype=torch.float64)
    lin = a[..., :2]
    det = lin[..., 0, 0] * lin[..., 1, 1] - lin[..., 0, 1] * lin[..., 1, 0]
    det = torch.where(det.abs() > 1e-300, det, torch.full_like(det, 1e-300))
    inv = torch.stack([torch.stack([lin[..., 1, 1], -lin[..., 0, 1]], -1),
                       torch.stack([-lin[..., 1, 0], lin[..., 0, 0]], -1)], -2) / det[..., None, None]
    t = -(inv @ a[..., 2:3])
    return torch.cat([inv, t], -1)


def invert_affine(affines: torch.Tensor) -> torch.Tensor:
    """Inverse of [N,2,3] affines (computed in float64, returned float32 on their device)."""
    return invert_affine64(affines).to(device=affines.device, dtype=torch.float32)


def translation(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """[N,2,3] float64 (CPU) pure translations by (dx, dy) per face."""
    n = dx.shape[0]
    t = torch.zeros(n, 2, 3, dtype=torch.float64)
    t[:, 0, 0] = 1.0
    t[:, 1, 1] = 1.0
    t[:, 0, 2] = dx.to(device="cpu", dtype=torch.float64)
    t[:, 1, 2] = dy.to(device="cpu", dtype=torch.float64)
    return t


def pixel_to_normalized(size_w: int, size_h: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """[2,3] map from pixel coordinates (centres at integers) to grid_sample's
    align_corners=False normalised coordinates: (2 x + 1) / W - 1."""
    return torch.tensor([[2.0 / size_w, 0.0, 1.0 / size_w - 1.0],
                         [0.0, 2.0 / size_h, 1.0 / size_h - 1.0]], dtype=dtype, device=device)


def window_origin(lo: torch.Tensor, hi: torch.Tensor, limit: int) -> Tuple[torch.Tensor, int]:
    """Common window length and per-face origins so every [lo, hi] (inclusive) fits, clipped.

    The window stays inside [0, limit): a face partly outside the image needs no more than the
    part that exists, and shifting a shorter window inward only adds pixels.
    """
    lo_c = lo.clamp(0, limit - 1)
    hi_c = hi.clamp(0, limit - 1)
    length = int((hi_c - lo_c + 1).clamp_min(1).max().item()) if lo.numel() else 1
    length = min(max(length, 1), limit)
    origin = torch.minimum(lo_c, torch.full_like(lo_c, limit - length))
    return origin, length


def face_windows(points: torch.Tensor, height: int, width: int,
                 margin: int) -> Tuple[torch.Tensor, int, torch.Tensor, int]:
    """(y0 [N], h, x0 [N], w): one window size that holds every face's ``points`` [N,P,2]
    (float64 image coordinates) plus ``margin`` pixels, inside a ``height`` x ``width`` image."""
    lo = points.amin(1).floor().clamp(-1e9, 1e9).long() - margin
    hi = points.amax(1).ceil().clamp(-1e9, 1e9).long() + margin
    y0, h = window_origin(lo[:, 1], hi[:, 1], height)
    x0, w = window_origin(lo[:, 0], hi[:, 0], width)
    return y0, h, x0, w


def window_grid(c: torch.Tensor, h: int, w: int, device, rows: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """grid [N,h,w,2] float32 on ``device`` with grid[n,y,x] = c[n] @ (x, y, 1).

    c [N,2,3] float64 (CPU). Built from small per-row / per-column vectors (float64, then
    float32) and one broadcast add per coordinate on the device: cheaper than F.affine_grid
    and accurate, since the big offsets are folded in float64 first. ``rows`` (y0, y1): only
    those rows of the grid (each the same values as in the whole grid).
    """
    n = c.shape[0]
    c = c.to(device="cpu", dtype=torch.float64)
    xs = torch.arange(w, dtype=torch.float64)
    ys = torch.arange(h, dtype=torch.float64) if rows is None else torch.arange(rows[0], rows[1], dtype=torch.float64)
    grid = torch.empty(n, ys.numel(), w, 2, device=device, dtype=torch.float32)
    for k in range(2):
        ax = (c[:, k, 0, None] * xs + c[:, k, 2, None]).to(device=device, dtype=torch.float32)
        by = (c[:, k, 1, None] * ys).to(device=device, dtype=torch.float32)
        torch.add(ax[:, None, :], by[:, :, None], out=grid[..., k])
    return grid


# PyTorch runs CPU ops on fewer elements than its intra-op grain size (32768) inline, without
# waking the thread pool. Per-face window copies are split into such pieces: on a busy,
# oversubscribed CPU every pool wake-up can cost a scheduler time slice (milliseconds).
CPU_GRAIN = 32767


def row_chunks(h: int, row_elems: int, device) -> List[Tuple[int, int]]:
    """Row ranges covering 0..h; on CPU each holds fewer than the grain size of elements."""
    if torch.device(device).type != "cpu":
        return [(0, h)]
    step = max(1, CPU_GRAIN // max(1, row_elems))
    return [(r, min(h, r + step)) for r in range(0, h, step)]
