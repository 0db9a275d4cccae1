"""Paste masks: ParseNet label maps -> the soft blend weights the paste-back uses (the reference's
per-label weights, blurs and border band; rules in docs/faces.md), the regions users choose them by,
the grow / blur rule applied to them in the crop, and the check of frame-space masks."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.nn.functional as F

from ..errors import InputError
from .kernels import blur_zero_border, dilate, erode, gaussian_kernel_1d, sep_blur

__all__ = ["PARSE_LABEL_WEIGHTS", "PARSE_LABELS", "REGIONS", "REGION_PRESETS", "ORIGINAL_LABELS",
           "parse_labels_to_masks", "region_labels", "shape_masks", "check_frame_masks"]

# facexlib's per-label weights for ParseNet's 19 classes: 1-13 and 15 are pasted (0 = dropped:
# background, hat, necklace, neck, cloth; see PARSE_LABELS).
PARSE_LABEL_WEIGHTS = (0, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 0, 255,
                       0, 0, 0)


def parse_labels_to_masks(labels: torch.Tensor, regions: Optional[Iterable[int]] = None) -> torch.Tensor:
    """ParseNet label maps [N,S,S] (int) -> paste weights [N,1,S,S] float32 in 0..1.

    ``regions``: the labels pasted (``region_labels``; None: the reference's, ``ORIGINAL_LABELS``).
    As the reference: per-label weight (0/255) -> Gaussian 101x101, sigma 11, twice, reflect-101
    border -> a 10-pixel band on all sides set to 0 -> /255. The soft edge keeps hair and background
    of the original while the face blends in.
    """
    if labels.dim() == 2:
        labels = labels[None]
    lab = labels.long()
    weights = PARSE_LABEL_WEIGHTS if regions is None else \
        tuple(255 if i in frozenset(regions) else 0 for i in range(len(PARSE_LABEL_WEIGHTS)))
    table = torch.tensor(weights, dtype=torch.float32, device=lab.device)
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


# ParseNet's 19 labels, in CelebAMask-HQ's own order (the ParseNet of PSFR-GAN / GPEN that facexlib
# ships as parsing_parsenet.pth is trained on it): 13 is hair, 15 an earring, 16 a necklace.
PARSE_LABELS = ("background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
                "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")

# The region names users choose from, and the labels each covers (background is never pasted).
REGIONS = {"skin": (1,), "nose": (2,), "glasses": (3,), "eyes": (4, 5), "brows": (6, 7), "ears": (8, 9, 15),
           "mouth": (10,), "lips": (11, 12), "hair": (13,), "hat": (14,), "neck": (16, 17), "cloth": (18,)}

# The reference's labels (PARSE_LABEL_WEIGHTS 255): 1-13 and 15.
ORIGINAL_LABELS = frozenset(i for i, w in enumerate(PARSE_LABEL_WEIGHTS) if w)

_FACE = ("skin", "nose", "glasses", "eyes", "brows", "ears", "mouth", "lips", "hair")
REGION_PRESETS = {
    "face": _FACE,                                                        # the original's set
    "face_keep_eyes": tuple(r for r in _FACE if r != "eyes"),
    "face_keep_mouth": tuple(r for r in _FACE if r not in ("mouth", "lips")),
    "skin_only": ("skin",),
    "face_no_hair": tuple(r for r in _FACE if r != "hair"),
    "face_and_hair": _FACE + ("hat",),
}


def _region_names(names, what: str) -> list:
    """Region names from "a,b" or a sequence, checked."""
    if names is None:
        return []
    items = names.split(",") if isinstance(names, str) else list(names)
    out = [str(n).strip().lower() for n in items if str(n).strip()]
    unknown = [n for n in out if n not in REGIONS]
    if unknown:
        raise InputError(f"unknown {what} {', '.join(repr(n) for n in unknown)}; the regions are "
                         f"{', '.join(REGIONS)}")
    return out


def region_labels(preset: str = "face", regions=None, keep_regions=None) -> frozenset:
    """The ParseNet labels that take the restored pixels: those of ``regions`` (names, a list or
    "skin,nose"; when given they replace the preset) or of the ``preset`` (``REGION_PRESETS``),
    less those of ``keep_regions`` (names whose original pixels stay)."""
    chosen = _region_names(regions, "region")
    if not chosen:
        if preset not in REGION_PRESETS:
            raise InputError(f"unknown region preset {preset!r}; choose one of {', '.join(REGION_PRESETS)}")
        chosen = list(REGION_PRESETS[preset])
    keep = _region_names(keep_regions, "region to keep")
    labels = frozenset(i for r in chosen for i in REGIONS[r]) - frozenset(i for r in keep for i in REGIONS[r])
    if not labels:
        raise InputError(f"no region is left to paste ({', '.join(chosen)} less {', '.join(keep)}); "
                         f"keep fewer regions")
    return labels


def shape_masks(masks: torch.Tensor, grow: int = 0, blur: int = 0) -> torch.Tensor:
    """Grow (grow > 0: grey dilation by a (2 grow + 1) square) or shrink (grow < 0: erosion, zero
    outside the crop, so a full square shrinks from its edges) crop-space masks [N,1,S,S], then blur
    them with a (2 blur + 1) Gaussian (OpenCV's sigma for that size; zero outside the crop). Values
    stay in 0..1; grow = blur = 0 returns ``masks`` itself."""
    grow, blur = int(grow), int(blur)
    if blur < 0:
        raise InputError(f"mask_blur must be >= 0, got {blur}")
    m = masks
    if grow > 0:
        m = dilate(m, 2 * grow + 1)
    elif grow < 0:
        r = -grow
        m = erode(F.pad(m, (r, r, r, r), value=0.0), 2 * r + 1)[..., r:-r, r:-r]
    if blur > 0:
        m = blur_zero_border(m, 2 * blur + 1)
    return m if m is masks else m.clamp(0.0, 1.0)


def check_frame_masks(masks: torch.Tensor, num_frames: int, frame_size) -> torch.Tensor:
    """Frame-space masks (a ComfyUI MASK [B,H,W] or one [H,W]) checked against the images they go
    with: [num_frames,H,W] float32 (one mask is used for every image)."""
    m = masks.to(torch.float32)
    if m.dim() == 2:
        m = m[None]
    h, w = (int(v) for v in frame_size)
    if m.dim() != 3 or tuple(m.shape[-2:]) != (h, w):
        raise InputError(f"mask has shape {tuple(m.shape)}, but the image is {w}x{h} pixels (the mask is "
                         f"{m.shape[-1]}x{m.shape[-2]}; images of {w}x{h} need a mask of that size); give a mask "
                         f"of the image size (for example the mask of the same Load Image, or resize it)")
    if m.shape[0] not in (1, num_frames):
        raise InputError(f"{m.shape[0]} masks for {num_frames} images; give one mask or one per image")
    return m.expand(num_frames, h, w) if m.shape[0] == 1 else m
