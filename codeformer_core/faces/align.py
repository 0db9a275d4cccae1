"""Batched face alignment: 5-point similarity fit and one grid_sample for all crops.

Follows the reference face helper (facexlib 0.3.0, used by CodeFormer's scripts; see
docs/faces.md): the FFHQ 5-point template, a rotation + uniform-scale + translation fit from the
landmarks to the template (what OpenCV's ``estimateAffinePartial2D(..., LMEDS)`` computes), and
a bilinear warp with OpenCV's pixel-centre convention and a constant grey border.
Frames are float [B,3,H,W] RGB 0..1 on any device; geometry is float32. The affine helpers
(``geometry.py``) run on the CPU in float64; only the float32 sampling grids go to the device.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .batch import FaceBatch
from .geometry import (apply_affine, compose_affine, face_windows, invert_affine, invert_affine64,
                       pixel_to_normalized, row_chunks, translation, window_grid)
from ..templates import FFHQ_TEMPLATE_512

__all__ = [
    "FFHQ_TEMPLATE_512", "BORDER_RGB", "template_for", "estimate_similarity", "invert_affine",
    "warp_faces", "align_faces", "detect_gray_frames",
]


# The reference fills pixels outside the frame with BGR (135, 133, 132), i.e. RGB (132, 133, 135).
BORDER_RGB = (132, 133, 135)

# Robust-scale constants (Rousseeuw & Leroy least-median-of-squares): sigma estimate
# 1.4826 * (1 + 5 / (n - p)) * sqrt(median squared residual), inliers within 2.5 sigma.
_LMEDS_CONSISTENCY = 1.4826
_LMEDS_CUTOFF = 2.5


def template_for(size: int = 512, dtype=torch.float32, device=None) -> torch.Tensor:
    """The 5-point template for a ``size`` x ``size`` crop (the 512 one scaled by size/512)."""
    return (FFHQ_TEMPLATE_512 * (float(size) / 512.0)).to(dtype=dtype, device=device)


def _ls_similarity(src: torch.Tensor, dst: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted least-squares similarity src -> dst ([N,P,2] float64, weights [N,P]).

    In 2-D the similarity [[a,-b],[b,a]] + t is linear in (a, b, t), so the least-squares
    solution is closed form and can never reflect: it is Umeyama's fit without reflection.
    """
    wsum = w.sum(1, keepdim=True).clamp_min(1e-12)                     # [N,1]
    ms = (w[..., None] * src).sum(1) / wsum                             # [N,2]
    md = (w[..., None] * dst).sum(1) / wsum
    s = src - ms[:, None]
    d = dst - md[:, None]
    den = (w * (s ** 2).sum(-1)).sum(1).clamp_min(1e-12)
    a = (w * (s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1])).sum(1) / den
    b = (w * (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0])).sum(1) / den
    tx = md[:, 0] - (a * ms[:, 0] - b * ms[:, 1])
    ty = md[:, 1] - (b * ms[:, 0] + a * ms[:, 1])
    return torch.stack([torch.stack([a, -b, tx], -1), torch.stack([b, a, ty], -1)], 1)


def estimate_similarity(landmarks: torch.Tensor, template: Optional[torch.Tensor] = None,
                        robust: bool = True) -> torch.Tensor:
    """Similarity (rotation, uniform scale, translation) mapping landmarks -> template.

    landmarks [N,P,2] (P >= 2, usually 5), template [P,2] or [N,P,2] (default: 512 FFHQ).
    Returns [N,2,3] float32, frame pixels -> crop pixels.

    ``robust=True`` mimics what OpenCV's LMEDS does for the reference, batched and exact:
    every 2-point similarity (10 pairs for 5 points) is fitted in closed form, the pair with
    the least median squared residual wins, points farther than 2.5 robust sigmas from it are
    dropped, and the least-squares fit is redone on the remaining points. With 5 consistent
    landmarks nothing is dropped and the result is the plain least-squares (Umeyama) fit; a
    landmark off by about an eye distance is rejected, as OpenCV's LMEDS does.
    """
    out_dev = landmarks.device
    lm = landmarks.detach().to(device="cpu", dtype=torch.float64)
    if lm.dim() == 2:
        lm = lm[None]
    n, p = lm.shape[0], lm.shape[1]
    tmpl = FFHQ_TEMPLATE_512 if template is None else template
    tmpl = tmpl.detach().to(device=lm.device, dtype=torch.float64)
    if tmpl.dim() == 2:
        tmpl = tmpl[None].expand(n, p, 2)
    if n == 0:
        return torch.zeros(0, 2, 3, dtype=torch.float32, device=out_dev)
    w = torch.ones(n, p, dtype=torch.float64, device=lm.device)
    if robust and p >= 4:
        ii, jj = torch.triu_indices(p, p, 1, device=lm.device)          # all point pairs
        # Closed-form 2-point similarity: complex ratio z = (dst_j - dst_i) / (src_j - src_i).
        ds = torch.complex(lm[:, jj, 0] - lm[:, ii, 0], lm[:, jj, 1] - lm[:, ii, 1])
        dd = torch.complex(tmpl[:, jj, 0] - tmpl[:, ii, 0], tmpl[:, jj, 1] - tmpl[:, ii, 1])
        z = dd / torch.where(ds.abs() > 1e-12, ds, torch.ones_like(ds))  # [N,K]
        si = torch.complex(lm[:, ii, 0], lm[:, ii, 1])
        di = torch.complex(tmpl[:, ii, 0], tmpl[:, ii, 1])
        t = di - z * si
        src_c = torch.complex(lm[..., 0], lm[..., 1])                     # [N,P]
        dst_c = torch.complex(tmpl[..., 0], tmpl[..., 1])
        res2 = (z[..., None] * src_c[:, None] + t[..., None] - dst_c[:, None]).abs() ** 2
        res2 = torch.where((ds.abs() > 1e-12)[..., None], res2, torch.full_like(res2, math.inf))
        med = res2.sort(-1).values[..., p // 2]                           # [N,K]
        best = med.argmin(1)
        med_best = med.gather(1, best[:, None])[:, 0]
        r2_best = res2.gather(1, best[:, None, None].expand(n, 1, p))[:, 0]
        sigma = _LMEDS_CONSISTENCY * (1.0 + 5.0 / (p - 2)) * med_best.sqrt()
        # Floor the scale so float noise on a perfect fit never drops points.
        span = (tmpl - tmpl.mean(1, keepdim=True)).norm(dim=-1).amax(1)
        sigma = torch.maximum(sigma, 1e-6 * span)
        keep = r2_best <= (_LMEDS_CUTOFF * sigma)[:, None] ** 2
        ok = torch.isfinite(med_best) & (keep.sum(1) >= 2)
        w = torch.where(ok[:, None], keep.to(torch.float64), w)
    return _ls_similarity(lm, tmpl, w).to(device=out_dev, dtype=torch.float32)


def warp_faces(frames: torch.Tensor, affines: torch.Tensor, frame_index: torch.Tensor,
               size: int = 512, border_rgb: Sequence[float] = BORDER_RGB) -> torch.Tensor:
    """Aligned crops [N,3,size,size] float32 from frames [B,3,H,W] (0..1) and frame->crop affines.

    One bilinear grid_sample for all faces, OpenCV warpAffine semantics: crop pixel (u, v) samples
    the frame at inverse(affine) @ (u, v, 1) with pixel centres at integer coordinates
    (align_corners=False). Only each face's source window is gathered (a common size so it stays
    one batched op), not whole frames. OpenCV gives every bilinear tap outside the frame the
    constant ``border_rgb`` (0..255); since the tap weights sum to 1, sampling (window - border)
    with zero padding and adding the border back is exactly that (only for faces that reach
    past the frame edge).
    """
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [B,3,H,W], got {tuple(frames.shape)}")
    if not frames.is_floating_point():
        raise TypeError("frames must be float (0..1), got " + str(frames.dtype))
    dev = frames.device
    n = int(affines.shape[0])
    H, W = int(frames.shape[-2]), int(frames.shape[-1])
    if n == 0:
        return torch.zeros(0, 3, size, size, dtype=torch.float32, device=dev)
    fidx = frame_index.to(device=dev, dtype=torch.long)
    inv = invert_affine64(affines)                                        # crop -> frame, CPU
    # Source window: bounding box of the sampled positions (crop pixel centres 0..size-1) +-1 tap.
    corners = torch.tensor([[0.0, 0.0], [size - 1.0, 0.0], [0.0, size - 1.0],
                            [size - 1.0, size - 1.0]], dtype=torch.float64)
    pts = apply_affine(inv, corners[None])                                 # [N,4,2]
    pmin, pmax = pts.amin(1), pts.amax(1)
    y0, h, x0, w = face_windows(pts, H, W, margin=1)
    # A tap leaves the frame only if a sample position is outside [0, W-1] x [0, H-1].
    outside = (pmin[:, 0] < 0) | (pmin[:, 1] < 0) | (pmax[:, 0] > W - 1) | (pmax[:, 1] > H - 1)
    roi = torch.empty(n, 3, h, w, dtype=torch.float32, device=dev)
    for i, (b, y, x) in enumerate(zip(fidx.tolist(), y0.tolist(), x0.tolist())):
        for r0, r1 in row_chunks(h, 3 * w, dev):
            roi[i, :, r0:r1].copy_(frames[b, :, y + r0:y + r1, x:x + w])
    border = None
    if bool(outside.any()):
        bval = torch.tensor([float(v) / 255.0 for v in border_rgb], device=dev, dtype=torch.float32)
        border = bval.view(1, 3, 1, 1) * outside.to(device=dev, dtype=torch.float32).view(n, 1, 1, 1)
        roi = roi - border
    # window pixels -> normalised window coordinates, after crop -> frame -> window pixels
    c = compose_affine(pixel_to_normalized(w, h), compose_affine(translation(-x0, -y0), inv))
    grid = window_grid(c, size, size, dev)
    crops = F.grid_sample(roi, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if border is not None:
        crops += border
    return crops


def _max_channel_gap(frames: torch.Tensor) -> torch.Tensor:
    """[B] largest |G - R| or |B - G| over all pixels."""
    lo, hi = torch.aminmax(torch.diff(frames, dim=1).flatten(1), dim=1)
    return torch.maximum(-lo, hi)


def detect_gray_frames(frames: torch.Tensor, tol: float = 2.0 / 255.0) -> torch.Tensor:
    """[B] bool: every pixel has R, G, B within ``tol`` of each other (a grey photo).

    A small tolerance keeps grey JPEGs (chroma rounding noise) grey; sepia or tinted photos are
    not grey and keep their colour. Exact, but cheap for colour frames: a 1/64 subsample
    settles them; only frames that look grey there get the full check.
    """
    b = frames.shape[0]
    if b == 0:
        return torch.zeros(0, dtype=torch.bool, device=frames.device)
    f = frames.detach()
    gray = _max_channel_gap(f[:, :, ::8, ::8]) <= tol
    cand = torch.nonzero(gray).flatten().tolist()
    for i in cand:  # one frame at a time: no batch-sized temporary
        gray[i] = bool(_max_channel_gap(f[i:i + 1])[0] <= tol)
    return gray


def align_faces(frames: torch.Tensor, landmarks: torch.Tensor, frame_index: torch.Tensor,
                boxes: Optional[torch.Tensor] = None, scores: Optional[torch.Tensor] = None,
                size: int = 512, gray: Union[None, bool, torch.Tensor] = None,
                robust: bool = True, template: Optional[torch.Tensor] = None) -> FaceBatch:
    """Fit, warp and package all faces of a frame batch as a FaceBatch.

    landmarks [N,5,2] frame pixels (eyes image-left/right, nose, mouth corners); frame_index [N].
    ``boxes`` default to the frame-space footprint of each crop square (no detector box known);
    ``scores`` default to 1. ``gray``: None detects grey frames (detect_gray_frames), a bool
    applies to every face, a [N] tensor is per face. ``template``: the five points [5,2] in crop
    pixels the landmarks are fitted to (None: the FFHQ template scaled to ``size``, ``template_for``;
    a face model aligned otherwise says its own, e.g. GPEN-BFR-256's ArcFace one).
    """
    dev = frames.device
    B, _, H, W = frames.shape
    lm = landmarks.detach().to(device=dev, dtype=torch.float32).reshape(-1, 5, 2)
    n = lm.shape[0]
    frame_index = torch.as_tensor(frame_index, device=dev).to(torch.long).reshape(n)
    if n and (int(frame_index.min()) < 0 or int(frame_index.max()) >= B):
        raise ValueError("frame_index out of range")
    tmpl = template_for(size, torch.float64) if template is None else template.detach().to("cpu", torch.float64)
    if tuple(tmpl.shape) != (5, 2):
        raise ValueError(f"template must be [5,2] crop pixels, got {tuple(tmpl.shape)}")
    affines = estimate_similarity(lm, tmpl, robust=robust)
    inverse = invert_affine(affines)
    crops = warp_faces(frames, affines, frame_index, size=size)
    if boxes is None:
        sq = torch.tensor([[0.0, 0.0], [size, 0.0], [0.0, size], [size, size]],
                          dtype=torch.float32, device=dev) - 0.5
        pts = apply_affine(inverse, sq[None])
        boxes = torch.cat([pts.amin(1), pts.amax(1)], -1)
    boxes = boxes.detach().to(device=dev, dtype=torch.float32).reshape(n, 4)
    scores = (torch.ones(n, device=dev) if scores is None
              else scores.detach().to(device=dev, dtype=torch.float32).reshape(n))
    if gray is None:
        g = detect_gray_frames(frames)[frame_index] if n else torch.zeros(0, dtype=torch.bool, device=dev)
    elif isinstance(gray, bool):
        g = torch.full((n,), gray, dtype=torch.bool, device=dev)
    else:
        g = torch.as_tensor(gray, device=dev).to(torch.bool).reshape(n)
    return FaceBatch(crops=crops, affines=affines, inverse_affines=inverse,
                     frame_index=frame_index, boxes=boxes, scores=scores, landmarks=lm,
                     frame_size=(int(H), int(W)), num_frames=int(B), gray=g)
