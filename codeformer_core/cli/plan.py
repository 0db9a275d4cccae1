"""Inputs to outputs: which files a task command reads and where each result goes, and the cheap
checks of each input before any network is loaded."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Tuple

from .console import UserError
from .settings import FileSettings

Item = Tuple[Path, Optional[Path], Optional[str]]   # (input, output, kind); kind None = skipped


def media_exts(kind: str) -> List[str]:
    """The file extensions of ``kind`` ("image" or "video")."""
    from ..io.images import IMAGE_EXTS
    from ..io.video import VIDEO_EXTS
    return list(IMAGE_EXTS if kind == "image" else VIDEO_EXTS)


def media_kind(path: Path) -> Optional[str]:
    """"image", "video" or None, by the file's extension."""
    ext = path.suffix.lower()
    return "image" if ext in media_exts("image") else "video" if ext in media_exts("video") else None


def plan(files: FileSettings) -> Tuple[List[Item], bool]:
    """[(input, output, kind)] and whether the input is a folder; kind None = skipped."""
    src = Path(os.path.expanduser(files.input))
    if not src.exists():
        raise UserError(f"{src}: no such file or folder")
    if src.is_dir():
        return plan_folder(src, files), True
    k = media_kind(src)
    if k is None:
        raise UserError(f"{src.name}: not a supported image or video extension "
                        f"({', '.join(media_exts('image') + media_exts('video'))})")
    suffix = files.default_suffix if files.suffix is None else files.suffix
    if files.output:
        o = Path(os.path.expanduser(files.output))
        if media_kind(o) is not None:
            if media_kind(o) != k:
                raise UserError(f"-o {o.name}: an {k} input needs an {k} output extension")
            dest = o
        else:
            dest = o / f"{src.stem}{suffix}{src.suffix}"
    else:
        dest = src.with_name(f"{src.stem}{suffix}{src.suffix}")
    if dest.resolve() == src.resolve():
        raise UserError(f"output {dest} would overwrite the input; give --suffix or -o")
    return [(src, dest, k)], False


def plan_folder(src: Path, files: FileSettings) -> List[Item]:
    """Every visible file of a folder (not its subfolders), with its output in the output folder."""
    out_dir = Path(files.output) if files.output else src.parent / (src.name + files.default_suffix)
    suffix = files.suffix or ""
    items = []
    for p in sorted(src.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        k = media_kind(p)
        dest = out_dir / f"{p.stem}{suffix}{p.suffix}" if k else None
        if dest is not None and dest.resolve() == p.resolve():
            raise UserError(f"output folder {out_dir} is the input folder and would overwrite "
                            f"its files; give --suffix or another -o")
        items.append((p, dest, k))
    if not any(k for _, _, k in items):
        raise UserError(f"{src}: no images ({', '.join(media_exts('image'))}) or videos "
                        f"({', '.join(media_exts('video'))}) in the folder")
    return items


def check_input(src: Path, kind: str) -> None:
    """Cheap checks of one input before the networks are loaded: the file is there, not empty,
    and an image header or a video whose first frame decodes. Raises the reader's error."""
    if kind == "image":
        from ..io.images import check_image
        check_image(src)
    else:
        from ..io.video import VideoReader
        with VideoReader(src):
            pass
