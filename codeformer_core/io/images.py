"""Reading and writing still images for the command line.

Why not just PIL: Pillow silently truncates 16-bit colour PNG/TIFF to 8 bits, so those go
through OpenCV when it is installed (it is optional: the pack's dependencies only promise
Pillow). JPEG/WebP go through Pillow so EXIF orientation is honoured. Writes are atomic
(encode in memory, write a temp file, rename) so an interrupted run never leaves a truncated
image under the final name.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
from ..errors import ImageReadError

__all__ = ["IMAGE_EXTS", "ImageReadError", "LoadedImage", "check_image", "read_image", "write_image", "read_mask",
           "to_output_array", "quantize", "output_layout", "with_alpha"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_CV2_FIRST = (".png", ".tif", ".tiff")
_NO_ALPHA = (".jpg", ".jpeg", ".bmp")
_HIGH_DEPTH = (".png", ".tif", ".tiff")

try:  # optional
    import cv2  # type: ignore
except Exception:  # pragma: no cover - exercised only without OpenCV
    cv2 = None


@dataclass
class LoadedImage:
    """An image as read: ``rgb`` [H,W,3] or [H,W] (gray) uint8/uint16, plus optional alpha."""

    rgb: np.ndarray
    alpha: Optional[np.ndarray]
    bit_depth: int  # 8 or 16

    @property
    def gray(self) -> bool:
        return self.rgb.ndim == 2

    @property
    def size(self):
        return self.rgb.shape[:2]


def _split(arr: np.ndarray, bgr: bool) -> LoadedImage:
    if arr.dtype not in (np.uint8, np.uint16):
        if arr.dtype == np.int32 or arr.dtype == np.int16:   # PIL 'I' mode (16-bit gray)
            arr = np.clip(arr, 0, 65535).astype(np.uint16)
        elif arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        elif np.issubdtype(arr.dtype, np.floating):
            arr = (np.clip(np.nan_to_num(arr), 0, 1) * 65535 + 0.5).astype(np.uint16)
        else:
            raise ImageReadError(f"unsupported pixel type {arr.dtype}")
    depth = 16 if arr.dtype == np.uint16 else 8
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    alpha = None
    if arr.ndim == 3:
        c = arr.shape[2]
        if c == 2:          # gray + alpha
            alpha, arr = arr[..., 1], arr[..., 0]
        elif c == 4:
            alpha, arr = arr[..., 3], arr[..., :3]
        elif c != 3:
            raise ImageReadError(f"unsupported channel count {c}")
        if arr.ndim == 3 and bgr:
            arr = arr[..., ::-1]
    return LoadedImage(np.ascontiguousarray(arr), None if alpha is None else np.ascontiguousarray(alpha), depth)


def _read_pil(path: Path) -> LoadedImage:
    from PIL import Image, ImageOps
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                im = im.convert("RGBA" if ("transparency" in im.info or im.mode == "PA") else "RGB")
            arr = np.array(im)  # a writable copy (torch warns on read-only arrays)
    except Exception as e:
        raise ImageReadError(f"{path.name}: not a readable image ({type(e).__name__}: {e})".splitlines()[0]) from None
    return _split(arr, bgr=False)


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path.name}: empty file (0 bytes)")
    return path


def check_image(path: Union[str, os.PathLike]) -> Tuple[int, int]:
    """(width, height) from the header only: the cheap check of an input before any network is
    loaded. Raises ImageReadError for a missing, empty or unreadable file (a header Pillow does
    not know is decoded in full, so what read_image accepts passes)."""
    path = _existing(Path(path))
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:
        h, w = read_image(path).size
        return w, h


def read_image(path: Union[str, os.PathLike]) -> LoadedImage:
    """Read gray / RGB / RGBA, 8 or 16 bits per channel; raises ImageReadError on failure."""
    path = _existing(Path(path))
    if cv2 is not None and path.suffix.lower() in _CV2_FIRST:
        data = np.fromfile(str(path), dtype=np.uint8)  # works for non-ASCII paths on Windows too
        arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
        if arr is None:
            raise ImageReadError(f"{path.name}: not a readable image")
        return _split(arr, bgr=True)
    return _read_pil(path)


def read_mask(path: Union[str, os.PathLike], size=None, soft: bool = False) -> np.ndarray:
    """A mask file -> [H,W] float32: 1 where any channel is bright (an inpainting hole; alpha
    ignored), or with ``soft`` the brightest channel's 0..1 value (a paste mask: grey blends)."""
    img = read_image(path)
    arr = img.rgb if img.gray else img.rgb.max(axis=2)
    m = arr.astype(np.float32) / (65535.0 if img.bit_depth == 16 else 255.0)
    if size is not None and tuple(m.shape) != tuple(size):
        raise ImageReadError(f"mask {Path(path).name} is {m.shape[1]}x{m.shape[0]}, "
                             f"but the image is {size[1]}x{size[0]}")
    return m if soft else (m > 0.5).astype(np.float32)


def to_output_array(rgb01: np.ndarray, like: Optional[LoadedImage], ext: str,
                    keep_gray: bool = True) -> np.ndarray:
    """Float [H,W,3] 0..1 -> the array to save: bit depth, gray and alpha of the input kept
    where the output format allows (JPEG/BMP lose alpha, only PNG/TIFF keep 16 bits)."""
    return with_alpha(quantize(rgb01, like, ext, keep_gray), like, ext)


def quantize(rgb01: np.ndarray, like: Optional[LoadedImage], ext: str, keep_gray: bool = True) -> np.ndarray:
    """Float [..., 3] 0..1 -> the saved pixels without alpha: 8 or 16 bits (as ``like`` where
    ``ext`` allows), one channel for a gray input. Works on any rows, so an output can be
    quantized band by band into an array of ``output_layout``."""
    depth, gray = output_layout(like, ext, keep_gray)
    out = rgb01.mean(axis=-1) if gray and rgb01.ndim == 3 else rgb01
    return (np.clip(out, 0, 1) * (65535.0 if depth == np.uint16 else 255.0) + 0.5).astype(depth)


def output_layout(like: Optional[LoadedImage], ext: str, keep_gray: bool = True):
    """(dtype, gray) of ``quantize``'s result for an input like ``like`` saved as ``ext``."""
    deep = like is not None and like.bit_depth == 16 and ext.lower() in _HIGH_DEPTH
    return (np.uint16 if deep else np.uint8), bool(like is not None and like.gray and keep_gray)


def with_alpha(out: np.ndarray, like: Optional[LoadedImage], ext: str) -> np.ndarray:
    """``quantize``'s pixels with ``like``'s alpha (resized to fit) where ``ext`` keeps alpha."""
    if like is None or like.alpha is None or ext.lower() in _NO_ALPHA:
        return out
    scale = 65535.0 if out.dtype == np.uint16 else 255.0
    a = like.alpha
    h, w = out.shape[:2]
    if a.shape[:2] != (h, w):
        a = _resize(a, h, w)
    a = a.astype(np.float32) / (65535.0 if a.dtype == np.uint16 else 255.0)
    a = (np.clip(a, 0, 1) * scale + 0.5).astype(out.dtype)
    if out.ndim == 2:  # gray + alpha is saved as RGBA (OpenCV has no 2-channel PNG)
        out = np.dstack([out] * 3)
    return np.dstack([out, a])


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F
    t = torch.from_numpy(a.astype(np.float32))[None, None]
    r = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0, 0]
    return r.round().clamp(0, 65535 if a.dtype == np.uint16 else 255).numpy().astype(a.dtype)


def _encode(arr: np.ndarray, ext: str, quality: int) -> bytes:
    ext = ext.lower()
    if cv2 is not None:
        img = arr
        if arr.ndim == 3:
            img = arr[..., ::-1] if arr.shape[2] == 3 else arr[..., [2, 1, 0, 3]] if arr.shape[2] == 4 else arr
        params = []
        if ext in (".jpg", ".jpeg"):
            params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
        elif ext == ".webp":
            params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(img), params)
        if not ok:
            raise ValueError(f"OpenCV cannot encode {ext}")
        return buf.tobytes()
    import io
    from PIL import Image
    if arr.dtype == np.uint16:  # Pillow writes 16 bits for gray only
        arr = arr if arr.ndim == 2 else (arr >> 8).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 2:
        arr = np.dstack([arr[..., 0]] * 3 + [arr[..., 1]])
    im = Image.fromarray(arr)
    bio = io.BytesIO()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF",
           ".tiff": "TIFF", ".webp": "WEBP"}[ext]
    im.save(bio, format=fmt, **({"quality": int(quality)} if fmt in ("JPEG", "WEBP") else {}))
    return bio.getvalue()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_image(path: Union[str, os.PathLike], arr: np.ndarray, quality: int = 95) -> Path:
    """Encode by extension and write atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    data = _encode(arr, path.suffix, quality)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".part", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get normal permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
