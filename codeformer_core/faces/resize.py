"""Lanczos-4 resizing like cv2.resize(INTER_LANCZOS4), whole or band by band (only the output rows
asked for, reading only the input rows they need), and the background resize of the paste-back."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["resize_lanczos4", "resize_frames", "resize_row_step", "resize_input_rows"]


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
