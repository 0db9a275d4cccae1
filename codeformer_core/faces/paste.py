"""Batched paste-back of restored face crops into (optionally upscaled) frames.

Follows the reference face helper's paste-back (facexlib 0.3.0; the rules, including OpenCV's
kernel and border details, are written out in docs/faces.md). Everything runs as a few batched
tensor ops on the frames' device:

* each face is inverse-warped only over its own window of the output (a common window size for
  all faces, so one grid_sample covers every face of the batch), never over the whole frame;
* the warped "ones" mask is computed in closed form (bilinear coverage), erosions are separable
  sliding minima (log-doubling of shifted slices), the Gaussian feather is a separable grouped
  convolution with per-face kernels and reflect-101 borders at the image edges;
* only the final blend touches the output frames, in place, face by face.

Overlapping faces of one frame are composited as the reference does: in detection-score order
(highest first), each later face drawn over the earlier ones, whatever order ``faces`` is sorted in
for output and selection (``order="given"`` composites in the batch's order instead).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .batch import FaceBatch
from .geometry import (apply_affine, compose_affine, face_windows, invert_affine64, pixel_to_normalized,
                       row_chunks, translation, window_grid)

__all__ = ["paste_faces", "paste_bands", "paste_affines", "paste_order", "PASTE_ORDERS", "parse_labels_to_masks",
           "resize_lanczos4", "resize_frames", "resize_row_step", "resize_input_rows", "to_unit",
           "PIXEL_SCALES", "PARSE_LABEL_WEIGHTS", "gaussian_kernel_1d",
           "to_luminance"]

# facexlib's per-label weights for ParseNet's 19 classes: 1-13 and 15 are pasted (0 = dropped:
# background, neck, cloth, hair, hat in the CelebAMask-HQ order).
PARSE_LABEL_WEIGHTS = (0, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 0, 255,
                       0, 0, 0)

# cv2.GaussianBlur with sigma 0 derives sigma from ksize, except for ksize <= 9, where it uses
# these fixed kernels (OpenCV 4.x and 5.0); small faces get such feathers.
_FIXED_GAUSS = {
    1: (1.0,),
    3: (1.0, 2.0, 1.0),
    5: (1.0, 4.0, 6.0, 4.0, 1.0),
    7: (1.0, 3.5, 7.0, 9.0, 7.0, 3.5, 1.0),
    9: (2.0, 6.5, 15.0, 25.5, 30.0, 25.5, 15.0, 6.5, 2.0),
}

_LUMA = (0.299, 0.587, 0.114)  # BT.601, sums to 1 so a grey face stays exactly grey


# ----------------------------------------------------------------------------- small helpers

def gaussian_kernel_1d(ksize: int, sigma: Optional[float] = None) -> torch.Tensor:
    """OpenCV's 1-D Gaussian (float64): fixed kernels for ksize <= 9 when sigma is derived."""
    if ksize % 2 != 1 or ksize < 1:
        raise ValueError(f"ksize must be odd and positive, got {ksize}")
    if (sigma is None or sigma <= 0) and ksize in _FIXED_GAUSS:
        k = torch.tensor(_FIXED_GAUSS[ksize], dtype=torch.float64)
        return k / k.sum()
    if sigma is None or sigma <= 0:
        sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    k = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return k / k.sum()


def _reflect101_index(n: int, lo: int, hi: int, device) -> torch.Tensor:
    """Source indices for padding a length-n axis by (lo, hi) with OpenCV's reflect-101 border.

    Works for any pad width (repeated reflection), unlike F.pad's "reflect".
    """
    i = torch.arange(-lo, n + hi, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * n - 2
    j = torch.remainder(i, period)
    return torch.where(j >= n, period - j, j)


def _sep_blur(x: torch.Tensor, kernels: torch.Tensor,
              reflect_sides: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Separable blur of x [N,1,H,W] with per-face odd kernels [N,K] (centred).

    Borders are OpenCV's reflect-101. ``reflect_sides`` [N,4] bool (top, bottom, left, right)
    marks which window sides are real image edges; the other sides are padded with the window's
    own edge pixel, which must be 0 there (a paste window holds the whole mask with a margin, so
    the image beyond it is 0 too, as zero padding would give). Both axes are padded by one
    gather (padding rows commutes with filtering along rows), then two grouped convolutions.
    """
    n, _, h, w = x.shape
    K = kernels.shape[1]
    if K == 1:
        return x * kernels.view(n, 1, 1, 1).to(x.dtype)
    p = K // 2
    wk = kernels.to(x.dtype)
    dev = x.device
    ri = _reflect101_index(h, p, p, dev)[None].repeat(n, 1)               # [N,h+2p]
    ci = _reflect101_index(w, p, p, dev)[None].repeat(n, 1)
    if reflect_sides is not None:
        rs = reflect_sides.to(dev)
        ri[:, :p] *= rs[:, 0:1].long()                                     # edge row 0 (zero)
        ri[:, h + p:] = torch.where(rs[:, 1:2], ri[:, h + p:], torch.full_like(ri[:, h + p:], h - 1))
        ci[:, :p] *= rs[:, 2:3].long()
        ci[:, w + p:] = torch.where(rs[:, 3:4], ci[:, w + p:], torch.full_like(ci[:, w + p:], w - 1))
    b = torch.arange(n, device=dev)[:, None, None]
    xi = x[:, 0][b, ri[:, :, None], ci[:, None, :]]                         # [N,h+2p,w+2p]
    y = F.conv2d(xi[None], wk.view(n, 1, 1, K), groups=n)                   # [1,N,h+2p,w]
    y = F.conv2d(y, wk.view(n, 1, K, 1), groups=n)                          # [1,N,h,w]
    return y.reshape(n, 1, h, w)


def _sliding_min(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Minimum over k consecutive entries along dim (output shorter by k - 1).

    Windows of length p double by min(e[i], e[i + p]); two overlapping power-of-two windows
    then cover any k: log2(k) + 1 elementwise minima instead of a k-wide pool. The steps take
    turns writing into two buffers (a face window's plane each), not a new tensor per step.
    """
    buffers, turn = None, 0
    e, p = x, 1

    def minimum(shift: int, L: int) -> torch.Tensor:
        nonlocal buffers, turn
        if buffers is None:
            buffers = (torch.empty_like(x, memory_format=torch.contiguous_format),
                       torch.empty_like(x, memory_format=torch.contiguous_format))
        out = buffers[turn].narrow(dim, 0, L)
        turn ^= 1
        return torch.minimum(e.narrow(dim, 0, L), e.narrow(dim, shift, L), out=out)

    while 2 * p <= k:
        e = minimum(p, e.shape[dim] - p)
        p *= 2
    if p < k:
        e = minimum(k - p, e.shape[dim] - (k - p))
    return e


def _erode_k(x: torch.Tensor, k: int) -> torch.Tensor:
    a, b = k // 2, k - 1 - k // 2
    x = F.pad(x, (a, b, a, b), value=float("inf"))
    return _sliding_min(_sliding_min(x, k, 3), k, 2)


def _erode(x: torch.Tensor, k: Union[int, torch.Tensor]) -> torch.Tensor:
    """Grey erosion of x [N,1,H,W] by an all-ones k x k square, OpenCV anchor (k//2, k//2).

    The window of output y covers rows y - k//2 .. y + k - 1 - k//2 (one more row above than
    below for even k), same for columns; pixels outside the array are ignored (+inf border),
    which is exact for paste windows: they end either at the image edge or in zeros.
    ``k`` may differ per face (faces sharing a size are eroded together).
    """
    n = x.shape[0]
    if isinstance(k, int):
        return x if k <= 1 else _erode_k(x, k)
    kl = torch.as_tensor(k).reshape(-1).expand(n).tolist()
    uniq = sorted(set(kl))
    if len(uniq) == 1:
        return x if uniq[0] <= 1 else _erode_k(x, uniq[0])
    out = torch.empty_like(x)
    for kv in uniq:
        sel = torch.tensor([i for i, kk in enumerate(kl) if kk == kv], device=x.device)
        out[sel] = x[sel] if kv <= 1 else _erode_k(x[sel], kv)
    return out


def to_luminance(rgb: torch.Tensor) -> torch.Tensor:
    """[N,3,H,W] -> same shape with R = G = B = BT.601 luma (a grey photo stays grey)."""
    c = torch.tensor(_LUMA, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb * c).sum(1, keepdim=True).expand_as(rgb).contiguous()


# ----------------------------------------------------------------------------- resizing

def _lanczos4_weights(fx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """OpenCV INTER_LANCZOS4 taps for source positions fx: first tap index floor(fx) - 3 and
    8 weights sinc(d) sinc(d / 4) (d = distance to the tap), normalised to sum 1."""
    sx = torch.floor(fx)
    t = fx - sx
    taps = torch.arange(-3, 5, dtype=torch.float64, device=fx.device)
    dist = t[:, None] - taps[None, :]
    wgt = torch.sinc(dist) * torch.sinc(dist / 4.0)
    return sx.long() - 3, wgt / wgt.sum(1, keepdim=True)


def _lanczos4_axis(x: torch.Tensor, dim: int, out_n: int, rows: Optional[Tuple[int, int]] = None,
                   in_n: Optional[int] = None, in_offset: int = 0) -> torch.Tensor:
    """Lanczos-4 along one axis of a 4-D tensor, like cv2.resize: output d samples the input
    at (d + 0.5) * in/out - 0.5, borders replicated.

    When in/out reduces to Q/P with a small P (2x, 1.5x, ...), output P*j + r always uses the
    same 8 weights on inputs Q*j + const: 8 scalar multiply-adds of strided slices per phase r,
    interleaved at the end. Other ratios gather 8 taps per output.

    ``rows`` (dim 2 only): just outputs ``rows[0]:rows[1]``, reading only the input rows they
    need; both ends multiples of ``resize_row_step`` (or ``out_n``), so every output row is
    computed by the same operations as in the whole resize. ``x`` may then hold only input rows
    ``in_offset ..`` (at least ``resize_input_rows``) of an input ``in_n`` rows long.
    """
    in_n = x.shape[dim] if in_n is None else int(in_n)
    o0, o1 = (0, out_n) if rows is None else (int(rows[0]), int(rows[1]))
    if in_n == out_n:
        return x if rows is None else x.narrow(dim, o0 - in_offset, o1 - o0)
    dev = x.device
    g = math.gcd(in_n, out_n)
    P, Q = out_n // g, in_n // g
    if P <= 16:
        if o0 % P or (o1 % P and o1 != out_n):
            raise ValueError(f"rows {o0}:{o1} are not on {P}-row phase boundaries")
        j0, j1 = o0 // P, -(-o1 // P)                 # phase groups j: outputs P*j + r
        d = torch.arange(P, dtype=torch.float64)
        first, wgt = _lanczos4_weights((d + 0.5) * (in_n / out_n) - 0.5)
        a = int(first.min()) + Q * j0                 # first and last input row read
        b = int(first.max()) + 7 + Q * (j1 - 1)
        lo, hi = max(0, -a), max(0, b - (in_n - 1))
        xs = x.narrow(dim, max(0, a) - in_offset, min(in_n - 1, b) + 1 - max(0, a))
        pad = (lo, hi, 0, 0) if dim == 3 else (0, 0, lo, hi)
        xp = F.pad(xs, pad, mode="replicate") if (lo or hi) else xs   # xp's index 0 is input row a
        phases = []
        for r in range(P):
            acc = None
            for k in range(8):
                sl = [slice(None)] * 4
                st = int(first[r]) + k + Q * j0 - a
                sl[dim] = slice(st, st + Q * (j1 - j0 - 1) + 1, Q)
                v = xp[tuple(sl)]
                wk = float(wgt[r, k])
                acc = v * wk if acc is None else acc.add_(v, alpha=wk)
            phases.append(acc)
        y = torch.stack(phases, dim + 1)
        shape = list(x.shape)
        shape[dim] = o1 - o0
        return y.reshape(shape)
    if dim == 3:  # work on rows: transpose, resize dim 2, transpose back
        return _lanczos4_axis(x.transpose(2, 3), 2, out_n).transpose(2, 3)
    # Blocked banded matmul: each block of 32 output rows reads a short run of input rows, so
    # one bmm of [blocks, 32, run] weights with the gathered runs does the whole axis.
    d = torch.arange(o0, o1, dtype=torch.float64)
    n_out = o1 - o0
    first, wgt = _lanczos4_weights((d + 0.5) * (in_n / out_n) - 0.5)
    bo = 32
    nb = -(-n_out // bo)
    pad_o = nb * bo - n_out
    first = torch.cat([first, first[-1:].expand(pad_o)])
    wgt = torch.cat([wgt, torch.zeros(pad_o, 8, dtype=wgt.dtype)])
    fb = first.view(nb, bo)
    start = fb[:, 0]
    run = int((fb[:, -1] + 8 - start).max())
    cols = (fb - start[:, None])[..., None] + torch.arange(8)                 # [nb,bo,8]
    wb = torch.zeros(nb, bo, run, dtype=torch.float64)
    wb.scatter_add_(2, cols, wgt.view(nb, bo, 8))
    rows_in = (start[:, None] + torch.arange(run)).clamp(0, in_n - 1)        # replicate border
    B, C, _, W = x.shape
    xr = x.permute(2, 0, 1, 3).reshape(x.shape[2], B * C * W)
    xb = xr.index_select(0, (rows_in.flatten() - in_offset).to(dev)).view(nb, run, B * C * W)
    y = torch.bmm(wb.to(device=dev, dtype=x.dtype), xb)                      # [nb,bo,N]
    y = y.view(nb * bo, B, C, W)[:n_out]
    return y.permute(1, 2, 0, 3)


def resize_input_rows(in_h: int, out_h: int, r0: int, r1: int) -> Tuple[int, int]:
    """The input rows [a, b) an enlarging ``resize_frames`` reads for output rows [r0, r1)."""
    first, _ = _lanczos4_weights((torch.tensor([r0, r1 - 1], dtype=torch.float64) + 0.5) * (in_h / out_h) - 0.5)
    return max(0, int(first[0])), min(in_h, int(first[1]) + 8)


def resize_row_step(in_h: int, out_h: int) -> int:
    """Row bands of a resize from ``in_h`` to ``out_h`` rows must start at multiples of this for
    ``resize_frames(..., rows=...)`` to compute each row exactly as the whole resize does."""
    if out_h <= in_h:
        return 1
    p = out_h // math.gcd(in_h, out_h)
    return p if p <= 16 else 32


def resize_lanczos4(x: torch.Tensor, out_h: int, out_w: int, rows: Optional[Tuple[int, int]] = None,
                    in_h: Optional[int] = None, in_offset: int = 0) -> torch.Tensor:
    """Lanczos-4 resize of [B,C,H,W] float like cv2.resize(INTER_LANCZOS4), clamped to 0..1
    (the reference resizes uint8, which saturates). ``rows``: only those output rows; ``x`` may
    then be input rows ``in_offset ..`` of an input ``in_h`` rows tall (``resize_input_rows``)."""
    xf = x.to(torch.float32) if x.dtype not in (torch.float32, torch.float64) else x
    y = _lanczos4_axis(_lanczos4_axis(xf, 2, out_h, rows, in_h, in_offset), 3, out_w)
    return y.clamp_(0.0, 1.0).to(x.dtype).contiguous()


def resize_frames(x: torch.Tensor, out_h: int, out_w: int, rows: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Background resize: Lanczos-4 (the reference) when enlarging; antialiased bicubic when
    shrinking, where the reference's Lanczos-4 would alias. ``rows`` (r0, r1): only those output
    rows, reading only the input rows they need when enlarging (r0 and r1 multiples of
    ``resize_row_step``, or r1 = ``out_h``); a shrink is computed whole and cut."""
    if x.shape[-2:] == (out_h, out_w):
        return x if rows is None else x[:, :, rows[0]:rows[1]]
    if out_h >= x.shape[-2] and out_w >= x.shape[-1]:
        return resize_lanczos4(x, out_h, out_w, rows)
    y = F.interpolate(x.to(torch.float32), size=(out_h, out_w), mode="bicubic",
                      align_corners=False, antialias=True)
    y = y if rows is None else y[:, :, rows[0]:rows[1]]
    return y.clamp_(0.0, 1.0).to(x.dtype)


# ----------------------------------------------------------------------------- parse masks

def parse_labels_to_masks(labels: torch.Tensor) -> torch.Tensor:
    """ParseNet label maps [N,S,S] (int) -> paste weights [N,1,S,S] float32 in 0..1.

    As the reference: per-label weight (0/255) -> Gaussian 101x101, sigma 11, twice, reflect-101
    border -> a 10-pixel band on all sides set to 0 -> /255. The soft edge keeps hair and background
    of the original while the face blends in.
    """
    if labels.dim() == 2:
        labels = labels[None]
    lab = labels.long()
    table = torch.tensor(PARSE_LABEL_WEIGHTS, dtype=torch.float32, device=lab.device)
    m = table[lab.clamp(0, len(PARSE_LABEL_WEIGHTS) - 1)][:, None]       # [N,1,H,W]
    n = m.shape[0]
    if n == 0:
        return m
    k = gaussian_kernel_1d(101, 11.0).to(device=m.device, dtype=torch.float32)
    kern = k[None].expand(n, -1)
    m = _sep_blur(_sep_blur(m, kern), kern)
    h, w = m.shape[-2:]
    band = torch.zeros(h, w, dtype=torch.bool, device=m.device)
    band[10:h - 10, 10:w - 10] = True
    return (m * band) / 255.0


# ----------------------------------------------------------------------------- paste

def _color_match(restored: torch.Tensor, original: torch.Tensor,
                 weights: torch.Tensor) -> torch.Tensor:
    """Match per-channel mean/std of restored to original inside ``weights`` [N,1,S,S]."""
    wsum = weights.sum((2, 3), keepdim=True).clamp_min(1e-6)
    def stats(x):
        mu = (x * weights).sum((2, 3), keepdim=True) / wsum
        var = ((x - mu) ** 2 * weights).sum((2, 3), keepdim=True) / wsum
        return mu, var.clamp_min(1e-10).sqrt()
    mr, sr = stats(restored)
    mo, so = stats(original)
    return ((restored - mr) / sr * so + mo).clamp(0.0, 1.0)


def _face_ellipse(n: int, size: int, device) -> torch.Tensor:
    """Central face region of an FFHQ-aligned crop (brows to chin, cheek to cheek)."""
    c = torch.arange(size, device=device, dtype=torch.float32) * (512.0 / size)
    e = ((c[None, :] - 256.0) / 120.0) ** 2 + ((c[:, None] - 300.0) / 150.0) ** 2
    return (e <= 1.0).to(torch.float32)[None, None].expand(n, 1, size, size)


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _as_per_face(v, n: int, device) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.float32, device=device).reshape(-1)
    return t.expand(n) if t.numel() == 1 else t.reshape(n)


def paste_affines(inverse_affines: torch.Tensor, upscale: float = 1.0, crop_size: int = 512,
                  restored_size: Optional[int] = None) -> torch.Tensor:
    """Restored-crop pixels -> output pixels, [N,2,3] float64 (CPU), as the reference pastes.

    The upscale-1 inverse is multiplied (all six entries) by ``upscale``; only when upscale > 1
    is 0.5 * upscale added to the translation (facexlib's convention, which the goldens follow;
    the exact pixel-centre shift would be 0.5 * upscale - 0.5). A restored crop of another size
    than the aligned one is first mapped onto it pixel centre to pixel centre.
    """
    inv = inverse_affines.detach().to(device="cpu", dtype=torch.float64)
    if restored_size is not None and int(restored_size) != int(crop_size):
        r = crop_size / restored_size
        pre = torch.tensor([[r, 0.0, 0.5 * r - 0.5], [0.0, r, 0.5 * r - 0.5]],
                           dtype=torch.float64)
        inv = compose_affine(inv, pre)
    inv = inv * float(upscale)
    if upscale > 1:
        inv[..., 2] += 0.5 * float(upscale)
    return inv


PASTE_ORDERS = ("score", "given")


def paste_order(faces: FaceBatch, order: str = "score") -> list:
    """Face indices in the order they are composited (later ones on top where faces overlap).

    "score": the reference's order, the detector's (highest score first; equal scores keep the
    batch order); frames are independent, so one sort over all faces does. "given": the batch order.
    """
    if order not in PASTE_ORDERS:
        raise ValueError(f"order must be one of {PASTE_ORDERS}, got {order!r}")
    if order == "given":
        return list(range(len(faces)))
    return torch.sort(faces.scores.detach().float().cpu(), descending=True, stable=True).indices.tolist()


def paste_faces(frames: torch.Tensor, faces: FaceBatch, restored: Optional[torch.Tensor] = None,
                upscale: float = 1.0, background: Optional[torch.Tensor] = None,
                background_upscaler: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                parse_masks: Optional[torch.Tensor] = None,
                visibility: Union[float, torch.Tensor] = 1.0, color_match: bool = False,
                feather: Optional[int] = None, keep_gray: bool = True, order: str = "score",
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Paste restored crops back; returns (frames [B,3,Hs,Ws], mask [B,1,Hs,Ws]).

    Hs, Ws = int(H * upscale), int(W * upscale). Background: ``background`` (resized if its size
    differs), else ``background_upscaler(frames)`` when upscale != 1, else a Lanczos-4 resize
    (identity at upscale 1). The crop -> output map is faces.inverse_affines * upscale, plus
    0.5 * upscale on the translation only when upscale > 1 (the reference's convention).

    Square mode (no parse_masks), per face: warped ones mask -> erode int(2s) -> face * mask,
    area -> w_edge = int(sqrt(area)) // 20 (or ``feather``) -> erode 2*w_edge (3x3 when 0) ->
    Gaussian (2*w_edge+1) -> blend. Parse mode: the blend weight is the inverse-warped parse
    mask [N,1,S,S] (see parse_labels_to_masks) and the face is not multiplied by a square mask.
    ``visibility`` (scalar or [N]) scales the blend weight. ``keep_gray`` turns faces whose
    ``faces.gray`` is set into luminance; ``color_match`` transfers the original crop's
    per-channel mean/std (inside the parse mask or a central face ellipse) to the restored one.
    The returned mask is the union of the soft masks, 1 - prod(1 - soft_i): the share of each
    output pixel that comes from restored faces. ``order``: see ``paste_order``.

    ``paste_bands`` gives the same result in bands of rows, without the whole output in memory.
    """
    if not frames.is_floating_point():
        raise TypeError("frames must be float (0..1), got " + str(frames.dtype))
    (_, out, mask_out), = paste_bands(frames, faces, restored, upscale, background=background,
                                      background_upscaler=background_upscaler, parse_masks=parse_masks,
                                      visibility=visibility, color_match=color_match, feather=feather,
                                      keep_gray=keep_gray, order=order)
    return out, mask_out


def paste_bands(frames: torch.Tensor, faces: FaceBatch, restored: Optional[torch.Tensor] = None,
                upscale: float = 1.0, *, band_rows: Optional[int] = None, layer_bytes: Optional[int] = None,
                background: Optional[torch.Tensor] = None,
                background_upscaler: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                parse_masks: Optional[torch.Tensor] = None, visibility: Union[float, torch.Tensor] = 1.0,
                order: str = "score", **face_options) -> Iterator[Tuple[int, torch.Tensor, torch.Tensor]]:
    """``paste_faces`` in bands of about ``band_rows`` output rows (None: one band of all rows):
    yields (first row, frames [B,3,r,Ws], mask [B,1,r,Ws]) band after band, top to bottom.
    ``frames`` may also be integer pixels (uint8, 16-bit: ``PIXEL_SCALES``), e.g. a view of a
    photo as read, converted band by band: no float copy of a whole large frame is needed.

    The faces' warped layers are made once; each band holds only its rows of the background
    (the resize reads only the input rows it needs; an upscaler with ``rows`` runs only the
    tiles it needs) and composites the parts of the faces that fall in it, so every pixel is
    what ``paste_faces`` gives (the band height is rounded up to the resize's row step). A
    background given as a tensor, a shrinking resize, or an upscaler whose scale is not the
    output's is computed whole once and handed out band by band. ``layer_bytes``: the faces'
    layers are made a group of faces at a time, each group within about this many bytes (None:
    all at once, as ``paste_faces``); a big face needs ~``LAYER_PLANES`` float planes of its
    window meanwhile. ``face_options``: the other options of ``paste_faces`` (color_match,
    feather, keep_gray).
    """
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [B,3,H,W], got {tuple(frames.shape)}")
    B, _, H, W = frames.shape
    if B != faces.num_frames:
        raise ValueError(f"faces were aligned on {faces.num_frames} frames, got {B}")
    if (int(H), int(W)) != tuple(faces.frame_size):
        raise ValueError(f"faces were aligned on frames of size {faces.frame_size}, got {(H, W)}")
    s = float(upscale)
    if not s > 0:
        raise ValueError("upscale must be > 0")
    Hs, Ws = int(H * s), int(W * s)
    if not frames.is_floating_point() and frames.dtype not in PIXEL_SCALES:
        raise TypeError("frames must be float (0..1) or integer pixels, got " + str(frames.dtype))
    background_rows, step = _background_source(frames, Hs, Ws, background, background_upscaler)
    n = len(faces)
    rest = faces.crops if restored is None else restored
    if rest.shape[0] != n:
        raise ValueError(f"expected {n} restored crops, got {rest.shape[0]}")
    pm = None if parse_masks is None or not n else parse_masks.reshape(n, 1, *parse_masks.shape[-2:])
    vis = _as_per_face(visibility, n, frames.device)
    Sr = int(rest.shape[-1])
    composite_order = paste_order(faces, order) if n else []
    # Rows each face's pasted pixels span (its own window): its layers are made when the first
    # band reaching it comes, and dropped after its last. Without layer_bytes: all at once, one
    # common window, as paste_faces.
    spans = [_windows(faces.inverse_affines[i:i + 1], faces.crop_size, Sr, s, Hs, Ws)[1:3] for i in range(n)] \
        if layer_bytes is not None else [(0, Hs)] * n
    waiting = sorted(range(n), key=lambda i: int(spans[i][0]))
    live = {}   # face -> (frame, top, left, pasted [3,h,w], soft [1,h,w])
    step = Hs if not band_rows else max(step, -(-int(band_rows) // step) * step)
    for r0 in range(0, Hs, step):
        r1 = min(Hs, r0 + step)
        starting = sorted(i for i in waiting if int(spans[i][0]) < r1)
        waiting = [i for i in waiting if int(spans[i][0]) >= r1]
        for g in _layer_groups(faces, starting, Sr, s, Hs, Ws, layer_bytes):
            made = _face_layers(frames, faces.select(g), rest[g], s, Hs, Ws, parse_masks=None if pm is None
                                else pm[g], visibility=vis[g], **face_options)
            live.update(zip(g.tolist(), made))
        out = background_rows(r0, r1)
        mask_out = torch.zeros(B, 1, r1 - r0, Ws, dtype=torch.float32, device=frames.device)
        _composite(out, mask_out, r0, [live[i] for i in composite_order if i in live])
        for i in [i for i in live if int(spans[i][0]) + int(spans[i][1]) <= r1]:
            del live[i]
        yield r0, out, mask_out


LAYER_PLANES = 40  # float32 planes of its window one face needs while its layers are made (measured 37-41)


def _windows(inverse_affines: torch.Tensor, crop_size: int, Sr: int, s: float, Hs: int, Ws: int):
    """(inv [N,2,3] restored crop -> output pixels, y0, h, x0, w): one window size that holds
    every face's warped crop, plus a margin. The warped mask is non-zero where the crop position
    lies in (-1, Sr); the soft mask can reach one pixel further (even erosion anchor, whatever
    the feather); 3 pixels of margin cover both and keep the window's edge pixels 0 (the blur
    pads interior sides with them)."""
    inv = paste_affines(inverse_affines, s, crop_size, Sr)   # CPU float64
    corners = torch.tensor([[-1.0, -1.0], [Sr, -1.0], [-1.0, Sr], [Sr, Sr]], dtype=torch.float64)
    return (inv, *face_windows(apply_affine(inv, corners[None]), Hs, Ws, margin=3))


def _layer_groups(faces: FaceBatch, which: list, Sr: int, s: float, Hs: int, Ws: int,
                  layer_bytes: Optional[int]) -> list:
    """The faces ``which`` (index tensors, in that order) in groups whose layers are made together:
    all of them, or consecutive groups whose common window costs at most ``layer_bytes`` (a face
    alone may cost more)."""
    if not which or layer_bytes is None:
        return [torch.tensor(which, dtype=torch.long)] if which else []
    groups, group, gh, gw = [], [], 0, 0
    for i in which:
        _, _, h, _, w = _windows(faces.inverse_affines[i:i + 1], faces.crop_size, Sr, s, Hs, Ws)
        nh, nw = max(gh, h), max(gw, w)
        if group and (len(group) + 1) * nh * nw * 4 * LAYER_PLANES > layer_bytes:
            groups.append(torch.tensor(group))
            group, nh, nw = [], h, w
        group.append(i)
        gh, gw = nh, nw
    return groups + [torch.tensor(group)]


# Integer pixel types frames may come in, and the value that is 1.0 (as pipeline.to_frames reads them).
PIXEL_SCALES = {torch.uint8: 255.0, torch.int16: 65535.0, torch.int32: 65535.0,
                **({torch.uint16: 65535.0} if hasattr(torch, "uint16") else {})}


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Pixels as float 0..1: integer types scaled by ``PIXEL_SCALES`` into a new float32 tensor,
    float tensors as they are."""
    scale = PIXEL_SCALES.get(x.dtype)
    if scale is None:
        return x
    return x.to(torch.float32, memory_format=torch.contiguous_format).div_(scale)


def _background_source(frames: torch.Tensor, Hs: int, Ws: int, background: Optional[torch.Tensor],
                       upscaler) -> Tuple[Callable[[int, int], torch.Tensor], int]:
    """(rows(r0, r1) -> fresh [B,3,r1-r0,Ws] background rows the caller may write into, the row
    step bands must keep). Integer ``frames`` are converted only as far as each band needs."""
    dev, out_dtype = frames.device, _float_dtype(frames)
    B, _, H, W = frames.shape
    whole = None
    if background is not None:
        bg = background.to(device=dev, dtype=out_dtype)
        if bg.shape[0] != B or bg.shape[1] != 3:
            raise ValueError(f"background must be [B,3,Hs,Ws], got {tuple(bg.shape)}")
        whole = resize_frames(bg, Hs, Ws)
    elif (Hs, Ws) != (H, W) and upscaler is not None:
        scale, tile = getattr(upscaler, "scale", None), getattr(upscaler, "row_step", 0)
        unit = to_unit(frames)
        if getattr(upscaler, "rows", None) is not None and tile and (H * scale, W * scale) == (Hs, Ws):
            return (lambda r0, r1: upscaler.rows(unit, r0 // scale, r1 // scale).to(dev, out_dtype)), tile * scale
        whole = resize_frames(upscaler(unit).to(device=dev, dtype=out_dtype), Hs, Ws)
    if whole is not None:
        owned = not (_shares_memory(whole, frames) or (background is not None and _shares_memory(whole, background)))
        return (lambda r0, r1: whole[:, :, r0:r1] if owned and (r0, r1) == (0, Hs)
                else whole[:, :, r0:r1].clone(memory_format=torch.contiguous_format)), 1
    if (Hs, Ws) == (H, W):  # the input's own rows are the caller's memory: copied, never written into
        return (lambda r0, r1: to_unit(frames[:, :, r0:r1]).to(out_dtype).clone(memory_format=torch.contiguous_format)), 1
    if Hs >= H and Ws >= W:  # enlarging: each band reads (and converts) only the input rows it needs

        def rows(r0: int, r1: int) -> torch.Tensor:
            a, b = resize_input_rows(H, Hs, r0, r1)
            return resize_lanczos4(to_unit(frames[:, :, a:b]).to(out_dtype), Hs, Ws, (r0, r1), H, a)
        return rows, resize_row_step(H, Hs)
    whole = resize_frames(to_unit(frames).to(out_dtype), Hs, Ws)
    return (lambda r0, r1: whole if (r0, r1) == (0, Hs) else whole[:, :, r0:r1].clone()), 1


def _float_dtype(frames: torch.Tensor) -> torch.dtype:
    return frames.dtype if frames.is_floating_point() else torch.float32


def _face_layers(frames: torch.Tensor, faces: FaceBatch, restored: torch.Tensor, s: float, Hs: int, Ws: int,
                 parse_masks: Optional[torch.Tensor] = None, visibility: Union[float, torch.Tensor] = 1.0,
                 color_match: bool = False, feather: Optional[int] = None, keep_gray: bool = True) -> list:
    """Each face's ``FaceLayer`` (one common window size for the group), in order."""
    dev = frames.device
    n = len(faces)
    # ---- crops to paste (crop space): gray / colour handling happen before warping
    rest = restored.to(device=dev, dtype=torch.float32)
    Sr = int(rest.shape[-1])
    pm = None
    if parse_masks is not None:
        pm = parse_masks.to(device=dev, dtype=torch.float32).reshape(n, 1, *parse_masks.shape[-2:])
        if pm.shape[-1] != Sr or pm.shape[-2] != Sr:
            pm = F.interpolate(pm, size=(Sr, Sr), mode="bilinear", align_corners=False)
    if color_match:
        orig = faces.crops.to(device=dev, dtype=torch.float32)
        if orig.shape[-1] != Sr:
            orig = F.interpolate(orig, size=(Sr, Sr), mode="bilinear", align_corners=False)
        wts = pm if pm is not None else _face_ellipse(n, Sr, dev)
        rest = _color_match(rest, orig, wts)
    if keep_gray and faces.gray is not None and bool(faces.gray.any()):
        g = faces.gray.to(dev).view(n, 1, 1, 1)
        rest = torch.where(g, to_luminance(rest), rest)

    # ---- geometry (float64): restored-crop pixels <-> output pixels
    inv, y0, h, x0, w = _windows(faces.inverse_affines, faces.crop_size, Sr, s, Hs, Ws)
    fwd = invert_affine64(inv)                             # output pixels -> restored crop pixels
    reflect_sides = torch.stack([y0 == 0, y0 + h == Hs, x0 == 0, x0 + w == Ws], 1).to(dev)

    # ---- the blend weight over each face's whole window (it needs the whole window: the mask's
    # area sets the feather, the erosions and the blur reach far). The face pixels themselves
    # are warped band by band when composited (``_face_pixels``), so only this plane is kept.
    # window pixels -> output pixels -> restored-crop pixels -> normalised crop coordinates
    c = compose_affine(pixel_to_normalized(Sr, Sr), compose_affine(fwd, translation(x0, y0)))
    grid = window_grid(c, h, w, dev)
    erode = max(int(2 * s), 1)
    if pm is not None:
        soft = F.grid_sample(pm, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        del grid
    else:
        m1 = _erode(_warped_ones(grid, Sr), erode)
        del grid
        if feather is None:
            area = m1.sum((1, 2, 3))
            w_edge = torch.floor(torch.sqrt(area)).long() // 20
        else:
            w_edge = torch.full((n,), int(feather), dtype=torch.long, device=dev)
        # cv2.erode given the empty kernel of w_edge = 0 erodes by a 3x3 square instead.
        m2 = _erode(m1, torch.where(w_edge == 0, torch.full_like(w_edge, 3), 2 * w_edge))
        del m1
        ks = (2 * w_edge + 1).tolist()
        K = max(ks)
        kern = torch.zeros(n, K, dtype=torch.float64)
        cache = {}
        for i, kz in enumerate(ks):
            if kz not in cache:
                cache[kz] = gaussian_kernel_1d(kz)
            off = (K - kz) // 2
            kern[i, off:off + kz] = cache[kz]
        soft = _sep_blur(m2, kern.to(device=dev, dtype=torch.float32), reflect_sides)
    soft = soft.clamp(0.0, 1.0)  # float sums of the blur can land a hair above 1
    vis = _as_per_face(visibility, n, dev)
    if not bool((vis == 1).all()):
        soft = soft * vis.view(n, 1, 1, 1)
    dtype = _float_dtype(frames)
    return [FaceLayer(f, y, x, c[i:i + 1], rest[i:i + 1], soft[i], None if pm is not None else erode, dtype)
            for i, (f, y, x) in enumerate(zip(faces.frame_index.tolist(), y0.tolist(), x0.tolist()))]


def _warped_ones(grid: torch.Tensor, Sr: int) -> torch.Tensor:
    """The warped "ones" image of an Sr x Sr crop over ``grid`` [N,h,w,2], [N,1,h,w], in closed
    form: per axis the in-range bilinear weights sum to clamp(min(u + 1, Sr - u), 0, 1) =
    clamp(0.5 + Sr/2 * (1 - |g|), 0, 1), g normalised. (``grid`` is used up.)"""
    half = Sr / 2.0
    cov = torch.add(torch.full((), half + 0.5, device=grid.device), grid.abs_(), alpha=-half).clamp_(0.0, 1.0)
    return (cov[..., 0] * cov[..., 1])[:, None]


@dataclass
class FaceLayer:
    """One face to composite: its window of the output (frame, top, left; size of ``soft``), the
    map from window pixels to the crop's normalised coordinates ``c`` [1,2,3] (float64), the
    crop ``src`` [1,3,S,S] as pasted (colour and gray handled), the blend weight ``soft``
    [1,h,w], and the square mask's first erosion (None in parse mode: no square mask)."""
    frame: int
    top: int
    left: int
    c: torch.Tensor
    src: torch.Tensor
    soft: torch.Tensor
    erode: Optional[int]
    dtype: torch.dtype


def _face_pixels(layer: FaceLayer, r0: int, r1: int) -> torch.Tensor:
    """Window rows r0..r1 of the face as pasted, [3,r1-r0,w]: the crop warped there, times the
    eroded square mask (computed on the rows the erosion reaches, so each row is what the whole
    window gives)."""
    h, w = layer.soft.shape[-2:]
    halo = 0 if layer.erode is None else layer.erode
    lo, hi = max(0, r0 - halo), min(h, r1 + halo)
    grid = window_grid(layer.c, h, w, layer.src.device, rows=(lo, hi))
    face = F.grid_sample(layer.src, grid[:, r0 - lo:r1 - lo], mode="bilinear", padding_mode="zeros",
                         align_corners=False).clamp_(0.0, 1.0)   # restored crops may overshoot
    if layer.erode is not None:
        m1 = _erode(_warped_ones(grid, layer.src.shape[-1]), layer.erode)
        face = face * m1[:, :, r0 - lo:r1 - lo]
    return face[0].to(layer.dtype)


def _composite(out: torch.Tensor, mask_out: torch.Tensor, row0: int, layers: list) -> None:
    """Blend the faces' layers (``FaceLayer``, in paste order) into output rows ``row0 ..`` held
    by ``out`` [B,3,r,Ws] and ``mask_out`` [B,1,r,Ws], in place."""
    band = out.shape[2]
    for layer in layers:
        y, x = layer.top - row0, layer.left
        h, w = layer.soft.shape[-2:]
        a, b = max(0, -y), min(h, band - y)       # the window rows inside the band
        if a >= b:
            continue
        pasted = _face_pixels(layer, a, b)
        soft = layer.soft
        soft_o = soft.to(out.dtype)
        ones = torch.ones((), device=out.device, dtype=torch.float32).expand(1, h, w)
        for r0, r1 in row_chunks(h, 3 * w, out.device):
            r0, r1 = max(r0, a), min(r1, b)
            if r0 >= r1:
                continue
            out[layer.frame, :, y + r0:y + r1, x:x + w].lerp_(pasted[:, r0 - a:r1 - a], soft_o[:, r0:r1])
            # union 1 - (1 - m)(1 - soft) = lerp(m, 1, soft)
            mask_out[layer.frame, :, y + r0:y + r1, x:x + w].lerp_(ones[:, r0:r1], soft[:, r0:r1])
