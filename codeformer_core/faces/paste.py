"""The band compositor: restored face crops pasted back into (optionally upscaled) frames.

Follows the reference face helper's paste-back (facexlib 0.3.0; the rules, including OpenCV's
kernel and border details, are written out in docs/faces.md). Everything runs as a few batched
tensor ops on the frames' device:

* each face is inverse-warped only over its own window of the output (a common window size for
  all faces, so one grid_sample covers every face of the batch), never over the whole frame;
* the warped "ones" mask is computed in closed form (bilinear coverage), erosions are separable
  sliding minima (log-doubling of shifted slices), the Gaussian feather is a separable grouped
  convolution with per-face kernels and reflect-101 borders at the image edges (``kernels``);
* only the final blend touches the output frames, in place, face by face, band by band.

Overlapping faces of one frame are composited as the reference does: in detection-score order
(highest first), each later face drawn over the earlier ones, whatever order ``faces`` is sorted in
for output and selection (``order="given"`` composites in the batch's order instead).

The user's choices travel in one frozen ``PasteOptions``; the background resize is ``resize``, the
parse masks ``masks``, pixel formats ``codeformer_core.pixels``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from ..errors import SettingsError
from ..pixels import PIXEL_SCALES, float_dtype, to_luminance, to_unit
from .batch import FaceBatch
from .geometry import (apply_affine, compose_affine, face_windows, invert_affine64, pixel_to_normalized,
                       row_chunks, translation, window_grid)
from .kernels import erode, gaussian_kernel_1d, sep_blur
from .masks import ORIGINAL_LABELS, check_frame_masks, shape_masks
from .resize import resize_frames, resize_input_rows, resize_lanczos4, resize_row_step

__all__ = ["PasteOptions", "paste_faces", "paste_bands", "paste_affines", "paste_order", "PASTE_ORDERS",
           "LAYER_PLANES"]

PASTE_ORDERS = ("score", "given")


@dataclass(frozen=True)
class PasteOptions:
    """How faces are pasted back (what the user chooses; the data travel as arguments).

    upscale: output size factor of the whole image (> 0). visibility: opacity of the pasted faces,
    a number or one per face ([N] tensor). color_match: give each restored face the original
    crop's per-channel mean / std (inside the parse mask or a central face ellipse). feather:
    edge softness of the square mask in output pixels (None: the reference's, from the face
    size). keep_gray: faces found grey (``faces.gray``) are pasted as luminance. order: "score"
    (the reference's compositing order) or "given" (``paste_order``). regions: the ParseNet labels
    that take the restored pixels, for whoever makes the parse masks
    (``masks.parse_labels_to_masks(labels, options.regions)``; ``masks.region_labels`` turns a preset
    and region names into them; the default is the reference's). mask_grow, mask_blur: pixels of
    the crop (512) by which the blend mask, parse or square alike, is grown (negative: shrunk) and
    then blurred, in the crop before the inverse warp (``masks.shape_masks``; 0, 0 = as the reference).
    """
    upscale: float = 1.0
    visibility: Union[float, torch.Tensor] = 1.0
    color_match: bool = False
    feather: Optional[int] = None
    keep_gray: bool = True
    order: str = "score"
    regions: frozenset = ORIGINAL_LABELS
    mask_grow: int = 0
    mask_blur: int = 0

    def __post_init__(self):
        if not float(self.upscale) > 0:
            raise SettingsError(f"upscale must be > 0, got {self.upscale}")
        if self.order not in PASTE_ORDERS:
            raise SettingsError(f"order must be one of {PASTE_ORDERS}, got {self.order!r}")
        if self.feather is not None and int(self.feather) < 0:
            raise SettingsError(f"feather must be >= 0 (or None for automatic), got {self.feather}")
        if int(self.mask_blur) < 0:
            raise ValueError(f"mask_blur must be >= 0, got {self.mask_blur}")
        object.__setattr__(self, "regions", frozenset(int(r) for r in self.regions))

    @property
    def shapes_mask(self) -> bool:
        """Whether mask_grow / mask_blur change the blend mask."""
        return bool(int(self.mask_grow) or int(self.mask_blur))

    @classmethod
    def of(cls, options: Optional["PasteOptions"] = None, **fields) -> "PasteOptions":
        """``options`` (default: the defaults) with ``fields`` given as keywords on top."""
        base = cls() if options is None else options
        return replace(base, **fields) if fields else base


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



def paste_order(faces: FaceBatch, order: str = "score") -> list:
    """Face indices in the order they are composited (later ones on top where faces overlap).

    "score": the reference's order, the detector's (highest score first; equal scores keep the
    batch order); frames are independent, so one sort over all faces does. "given": the batch order.
    """
    if order not in PASTE_ORDERS:
        raise SettingsError(f"order must be one of {PASTE_ORDERS}, got {order!r}")
    if order == "given":
        return list(range(len(faces)))
    return torch.sort(faces.scores.detach().float().cpu(), descending=True, stable=True).indices.tolist()


def paste_faces(frames: torch.Tensor, faces: FaceBatch, restored: Optional[torch.Tensor] = None,
                options: Optional[PasteOptions] = None, *, parse_masks: Optional[torch.Tensor] = None,
                frame_masks: Optional[torch.Tensor] = None, background: Optional[torch.Tensor] = None,
                background_upscaler: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                **fields) -> Tuple[torch.Tensor, torch.Tensor]:
    """Paste restored crops back; returns (frames [B,3,Hs,Ws], mask [B,1,Hs,Ws]): ``paste_bands``
    in one band of all rows (float frames only).

    Hs, Ws = int(H * upscale), int(W * upscale). Background: ``background`` (resized if its size
    differs), else ``background_upscaler(frames)`` when upscale != 1, else a Lanczos-4 resize
    (identity at upscale 1). The crop -> output map is faces.inverse_affines * upscale, plus
    0.5 * upscale on the translation only when upscale > 1 (the reference's convention).

    Square mode (no parse_masks), per face: warped ones mask -> erode int(2s) -> face * mask,
    area -> w_edge = int(sqrt(area)) // 20 (or ``feather``) -> erode 2*w_edge (3x3 when 0) ->
    Gaussian (2*w_edge+1) -> blend. Parse mode: the blend weight is the inverse-warped parse
    mask [N,1,S,S] (see ``masks.parse_labels_to_masks``) and the face is not multiplied by a
    square mask. ``options``: a ``PasteOptions`` (upscale, visibility, colour match, feather,
    gray, order, regions, mask shape); ``fields``: the same given as keywords (``upscale=2``), over
    ``options``. ``frame_masks`` (a MASK [B,H,W] of the input frames' size, or one [H,W]): restored
    pixels only where it is set, its soft values kept (it multiplies the blend weight).
    The returned mask is the union of the soft masks, 1 - prod(1 - soft_i): the share of each
    output pixel that comes from restored faces.
    """
    if not frames.is_floating_point():
        raise TypeError("frames must be float (0..1), got " + str(frames.dtype))
    (_, out, mask_out), = paste_bands(frames, faces, restored, options, parse_masks=parse_masks,
                                      frame_masks=frame_masks, background=background,
                                      background_upscaler=background_upscaler, **fields)
    return out, mask_out


def paste_bands(frames: torch.Tensor, faces: FaceBatch, restored: Optional[torch.Tensor] = None,
                options: Optional[PasteOptions] = None, *, parse_masks: Optional[torch.Tensor] = None,
                frame_masks: Optional[torch.Tensor] = None, background: Optional[torch.Tensor] = None,
                background_upscaler: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                band_rows: Optional[int] = None, layer_bytes: Optional[int] = None,
                **fields) -> Iterator[Tuple[int, torch.Tensor, torch.Tensor]]:
    """The compositor: ``paste_faces`` in bands of about ``band_rows`` output rows (None: one
    band of all rows): yields (first row, frames [B,3,r,Ws], mask [B,1,r,Ws]) band after band,
    top to bottom. ``frames`` may also be integer pixels (uint8, 16-bit: ``pixels.PIXEL_SCALES``),
    e.g. a view of a photo as read, converted band by band: no float copy of a whole large frame
    is needed.

    The faces' warped layers are made once; each band holds only its rows of the background
    (the resize reads only the input rows it needs; an upscaler with ``rows`` runs only the
    tiles it needs) and composites the parts of the faces that fall in it, so every pixel is
    what ``paste_faces`` gives (the band height is rounded up to the resize's row step). A
    background given as a tensor, a shrinking resize, or an upscaler whose scale is not the
    output's is computed whole once and handed out band by band. ``layer_bytes``: the faces'
    layers are made a group of faces at a time, each group within about this many bytes (None:
    all at once, as ``paste_faces``); a big face needs ~``LAYER_PLANES`` float planes of its
    window meanwhile. Faces whose layers are made in other groups than ``paste_faces`` makes them
    (one group per call) can get another window origin, which moves some of their blend weights by
    float32 rounding (a last-bit difference, 6e-8 seen); the same groups give the same bits.
    ``options`` / ``fields``: as ``paste_faces``.
    """
    opts = PasteOptions.of(options, **fields)
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [B,3,H,W], got {tuple(frames.shape)}")
    B, _, H, W = frames.shape
    if B != faces.num_frames:
        raise ValueError(f"faces were aligned on {faces.num_frames} frames, got {B}")
    if (int(H), int(W)) != tuple(faces.frame_size):
        raise ValueError(f"faces were aligned on frames of size {faces.frame_size}, got {(H, W)}")
    s = float(opts.upscale)
    Hs, Ws = int(H * s), int(W * s)
    if not frames.is_floating_point() and frames.dtype not in PIXEL_SCALES:
        raise TypeError("frames must be float (0..1) or integer pixels, got " + str(frames.dtype))
    background_rows, step = _background_source(frames, Hs, Ws, background, background_upscaler)
    n = len(faces)
    rest = faces.crops if restored is None else restored
    if rest.shape[0] != n:
        raise ValueError(f"expected {n} restored crops, got {rest.shape[0]}")
    pm = None if parse_masks is None or not n else parse_masks.reshape(n, 1, *parse_masks.shape[-2:])
    vis = _as_per_face(opts.visibility, n, frames.device)
    fm = None
    if frame_masks is not None and n:   # the blend weight's frame factor, at the output's size
        fm = check_frame_masks(frame_masks.to(frames.device), B, (H, W))[:, None]
        if (Hs, Ws) != (H, W):
            fm = F.interpolate(fm, size=(Hs, Ws), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    Sr = int(rest.shape[-1])
    composite_order = paste_order(faces, opts.order) if n else []
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
            made = _face_layers(frames, faces.select(g), rest[g], Hs, Ws, None if pm is None else pm[g], vis[g],
                                opts, fm)
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


def _background_source(frames: torch.Tensor, Hs: int, Ws: int, background: Optional[torch.Tensor],
                       upscaler) -> Tuple[Callable[[int, int], torch.Tensor], int]:
    """(rows(r0, r1) -> fresh [B,3,r1-r0,Ws] background rows the caller may write into, the row
    step bands must keep). Integer ``frames`` are converted only as far as each band needs."""
    dev, out_dtype = frames.device, float_dtype(frames)
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
        return (lambda r0, r1: to_unit(frames[:, :, r0:r1]).to(out_dtype)
                .clone(memory_format=torch.contiguous_format)), 1
    if Hs >= H and Ws >= W:  # enlarging: each band reads (and converts) only the input rows it needs

        def rows(r0: int, r1: int) -> torch.Tensor:
            a, b = resize_input_rows(H, Hs, r0, r1)
            return resize_lanczos4(to_unit(frames[:, :, a:b]).to(out_dtype), Hs, Ws, (r0, r1), H, a)
        return rows, resize_row_step(H, Hs)
    whole = resize_frames(to_unit(frames).to(out_dtype), Hs, Ws)
    return (lambda r0, r1: whole if (r0, r1) == (0, Hs) else whole[:, :, r0:r1].clone()), 1


def _face_layers(frames: torch.Tensor, faces: FaceBatch, restored: torch.Tensor, Hs: int, Ws: int,
                 parse_masks: Optional[torch.Tensor], visibility: torch.Tensor, options: PasteOptions,
                 frame_masks: Optional[torch.Tensor] = None) -> list:
    """Each face's ``FaceLayer`` (one common window size for the group), in order. ``frame_masks``:
    [B,1,Hs,Ws] at the output's size, or None."""
    dev = frames.device
    n = len(faces)
    # ---- crops to paste (crop space): gray / colour handling happen before warping
    rest = restored.to(device=dev, dtype=torch.float32)
    Sr = int(rest.shape[-1])
    pm = None
    if parse_masks is not None:
        pm = parse_masks.to(device=dev, dtype=torch.float32).reshape(n, 1, *parse_masks.shape[-2:])
        if options.shapes_mask:   # in the crop, before any resize and the inverse warp
            pm = shape_masks(pm, options.mask_grow, options.mask_blur)
        if pm.shape[-1] != Sr or pm.shape[-2] != Sr:
            pm = F.interpolate(pm, size=(Sr, Sr), mode="bilinear", align_corners=False)
    s = float(options.upscale)
    if options.color_match:
        orig = faces.crops.to(device=dev, dtype=torch.float32)
        if orig.shape[-1] != Sr:
            orig = F.interpolate(orig, size=(Sr, Sr), mode="bilinear", align_corners=False)
        wts = pm if pm is not None else _face_ellipse(n, Sr, dev)
        rest = _color_match(rest, orig, wts)
    if options.keep_gray and faces.gray is not None and bool(faces.gray.any()):
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
    first_erosion = max(int(2 * s), 1)
    if pm is not None:
        soft = F.grid_sample(pm, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        del grid
    else:
        square = None
        if options.shapes_mask:   # the square mask shaped by the same rule, in the crop, then warped
            ones = torch.ones(n, 1, faces.crop_size, faces.crop_size, device=dev)
            square = F.grid_sample(shape_masks(ones, options.mask_grow, options.mask_blur), grid, mode="bilinear",
                                   padding_mode="zeros", align_corners=False)
        m1 = erode(_warped_ones(grid, Sr), first_erosion)
        del grid
        if options.feather is None:
            area = m1.sum((1, 2, 3))
            w_edge = torch.floor(torch.sqrt(area)).long() // 20
        else:
            w_edge = torch.full((n,), int(options.feather), dtype=torch.long, device=dev)
        # cv2.erode given the empty kernel of w_edge = 0 erodes by a 3x3 square instead.
        m2 = erode(m1, torch.where(w_edge == 0, torch.full_like(w_edge, 3), 2 * w_edge))
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
        soft = sep_blur(m2, kern.to(device=dev, dtype=torch.float32), reflect_sides)
        if square is not None:
            soft = soft * square
    soft = soft.clamp(0.0, 1.0)  # float sums of the blur can land a hair above 1
    if frame_masks is not None:   # each face's window of its frame's mask
        fi = faces.frame_index.to(dev)
        rows = (y0[:, None] + torch.arange(h))[:, :, None].to(dev)
        cols = (x0[:, None] + torch.arange(w))[:, None, :].to(dev)
        soft = soft * frame_masks[:, 0][fi[:, None, None], rows, cols][:, None]
    vis = visibility.to(dev)
    if not bool((vis == 1).all()):
        soft = soft * vis.view(n, 1, 1, 1)
    dtype = float_dtype(frames)
    return [FaceLayer(f, y, x, c[i:i + 1], rest[i:i + 1], soft[i], None if pm is not None else first_erosion, dtype)
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
        m1 = erode(_warped_ones(grid, layer.src.shape[-1]), layer.erode)
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
