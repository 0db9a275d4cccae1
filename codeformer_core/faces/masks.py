"""Parse masks: ParseNet label maps -> the soft blend weights the paste-back uses (the reference's
per-label weights, blurs and border band; rules in docs/faces.md)."""
from __future__ import annotations

import torch

from .kernels import gaussian_kernel_1d, sep_blur

__all__ = ["PARSE_LABEL_WEIGHTS", "parse_labels_to_masks"]

# facexlib's per-label weights for ParseNet's 19 classes: 1-13 and 15 are pasted (0 = dropped).
PARSE_LABEL_WEIGHTS = (0, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 0, 255,
                       0, 0, 0)


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
    m = sep_blur(sep_blur(m, kern), kern)
    h, w = m.shape[-2:]
    band = torch.zeros(h, w, dtype=torch.bool, device=m.device)
    band[10:h - 10, 10:w - 10] = True
    return (m * band) / 255.0
