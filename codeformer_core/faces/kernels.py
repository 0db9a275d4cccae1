"""Blur and erosion kernels of the paste-back, as OpenCV computes them: the 1-D Gaussian (with its
fixed small kernels), reflect-101 borders, a separable per-face blur and a grey erosion by a square
(sliding minima by log-doubling). Masks are float tensors [N,1,H,W]."""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

__all__ = ["gaussian_kernel_1d", "reflect101_index", "sep_blur", "erode", "dilate", "blur_zero_border"]

# cv2.GaussianBlur with sigma 0 derives sigma from ksize, except for ksize <= 9, where it uses
# these fixed kernels (OpenCV 4.x and 5.0); small faces get such feathers.
FIXED_GAUSS = {
    1: (1.0,),
    3: (1.0, 2.0, 1.0),
    5: (1.0, 4.0, 6.0, 4.0, 1.0),
    7: (1.0, 3.5, 7.0, 9.0, 7.0, 3.5, 1.0),
    9: (2.0, 6.5, 15.0, 25.5, 30.0, 25.5, 15.0, 6.5, 2.0),
}


def gaussian_kernel_1d(ksize: int, sigma: Optional[float] = None) -> torch.Tensor:
    """OpenCV's 1-D Gaussian (float64): fixed kernels for ksize <= 9 when sigma is derived."""
    if ksize % 2 != 1 or ksize < 1:
        raise ValueError(f"ksize must be odd and positive, got {ksize}")
    if (sigma is None or sigma <= 0) and ksize in FIXED_GAUSS:
        k = torch.tensor(FIXED_GAUSS[ksize], dtype=torch.float64)
        return k / k.sum()
    if sigma is None or sigma <= 0:
        sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    k = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return k / k.sum()


def reflect101_index(n: int, lo: int, hi: int, device) -> torch.Tensor:
    """Source indices for padding a length-n axis by (lo, hi) with OpenCV's reflect-101 border.

    Works for any pad width (repeated reflection), unlike F.pad's "reflect".
    """
    i = torch.arange(-lo, n + hi, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * n - 2
    j = torch.remainder(i, period)
    return torch.where(j >= n, period - j, j)


def sep_blur(x: torch.Tensor, kernels: torch.Tensor,
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
    ri = reflect101_index(h, p, p, dev)[None].repeat(n, 1)               # [N,h+2p]
    ci = reflect101_index(w, p, p, dev)[None].repeat(n, 1)
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


def erode(x: torch.Tensor, k: Union[int, torch.Tensor]) -> torch.Tensor:
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



def dilate(x: torch.Tensor, k: int) -> torch.Tensor:
    """Grey dilation of x [N,1,H,W] by an odd k x k square (centred); pixels outside the array
    are ignored (the max of what is inside)."""
    return x if k <= 1 else -erode(-x, k)


def blur_zero_border(x: torch.Tensor, ksize: int) -> torch.Tensor:
    """Separable Gaussian blur of x [N,1,H,W] with OpenCV's kernel of odd size ``ksize`` (sigma
    derived from the size), zero outside the array (nothing exists beyond a face crop)."""
    if ksize <= 1:
        return x
    k = gaussian_kernel_1d(ksize).to(device=x.device, dtype=x.dtype)
    p = ksize // 2
    y = F.conv2d(x, k.view(1, 1, 1, ksize), padding=(0, p))
    return F.conv2d(y, k.view(1, 1, ksize, 1), padding=(p, 0))
