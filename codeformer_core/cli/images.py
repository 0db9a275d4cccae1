"""One image file through the pipeline: read, restore band by band straight into the saved pixel
format, draw boxes (--draw-box), write."""
from __future__ import annotations

import time
from pathlib import Path

from ..errors import NotEnoughMemoryError
from .console import UserError, progress_bar
from .engine import Session, memory_error, restore_frames


class FaceProgress:
    """A faces bar for one file, opened on the first report (when the total is known)."""

    def __init__(self, name: str, quiet: bool):
        self.name, self.quiet, self.bar = name, quiet, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = progress_bar(total=total, desc=f"{self.name} faces", unit="face", quiet=self.quiet,
                                    leave=False)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class SavedPixels:
    """The sink of one image: each band quantized straight to the saved pixel format."""

    def __init__(self, like, ext: str, keep_gray: bool, upscale: float):
        import numpy as np
        from ..io.images import output_layout
        self.like, self.ext, self.keep_gray = like, ext, keep_gray
        dtype, gray = output_layout(like, ext, keep_gray)
        h, w = (int(n * upscale) for n in like.size)
        self.array = np.empty((h, w) if gray else (h, w, 3), dtype)

    def __call__(self, _first, row0, rgb, _mask) -> None:
        from ..io.images import quantize
        self.array[row0:row0 + rgb.shape[1]] = quantize(rgb[0].numpy(), self.like, self.ext, self.keep_gray)


def process_image(session: Session, src: Path, dest: Path):
    """Restore one image file into ``dest``; returns (result line, faces per frame)."""
    from ..io.images import read_image, with_alpha, write_image
    s, mask = session.settings, session.nets.mask
    img = read_image(src)
    if mask is not None and mask.shape != img.size:
        raise UserError(f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {img.size[1]}x{img.size[0]}")
    t0 = time.perf_counter()
    keep_gray, ext = s.task != "colorize", dest.suffix
    out = SavedPixels(img, ext, keep_gray, s.upscale)
    progress = FaceProgress(src.name, session.out.quiet)
    try:
        res, boxes = restore_frames(session, img.rgb, progress=progress, sink=out)
    except NotEnoughMemoryError as e:
        raise memory_error(e, src, e.what) from e
    finally:
        progress.close()
    if boxes:
        draw_saved_boxes(out.array, boxes[0], s.upscale, img, ext, keep_gray)
    write_image(dest, with_alpha(out.array, img, ext))
    n = res.total_faces
    return f"{src.name} -> {dest}: {n} face{'s' if n != 1 else ''}, {time.perf_counter() - t0:.1f} s", res.face_counts


def draw_saved_boxes(out, boxes, scale: float, like=None, ext: str = ".png", keep_gray: bool = True) -> None:
    """--draw-box on an output already in its saved pixel format (``out`` [H,W] or [H,W,3]), in
    the colour the float green would have been saved as."""
    import numpy as np
    import torch
    from ..faces.draw import GREEN, draw_boxes
    from ..io.images import quantize
    color = quantize(np.asarray([[GREEN]], np.float32), like, ext, keep_gray)[0, 0]
    draw_boxes(torch.from_numpy(out), boxes, scale, color=np.atleast_1d(color).tolist())
