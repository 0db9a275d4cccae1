"""``codeformer restore | colorize | inpaint``: plan the inputs (an image, a video or a folder of
them), load the networks once, stream every input through ``pipeline.restore_images``, report.

    settings.py  the options, read once from the command line into a frozen ``Settings``
    plan.py      inputs -> outputs, and the cheap checks of each input
    engine.py    the networks loaded once (a ``Session``) and the one pipeline call
    images.py    one image file; video.py: one video file, chunk by chunk

Videos are decoded, restored and encoded chunk by chunk (``--frames-per-chunk`` frames at a
time at most, fewer when ``--max-memory`` says so; ``restore_images`` halves a chunk that runs
out of memory), so memory stays flat whatever the length; each frame keeps its timestamp. The
output is quantized band by band as ``restore_images`` pastes it, so no float copy of a whole
large output is ever held. Every input is checked (readable, not empty) before any network is
loaded.
"""
from __future__ import annotations

import argparse
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Tuple

from .console import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, Out, describe, progress_bar
from .engine import Session, open_session
from .plan import Item, check_input, plan
from .settings import Settings, settings_from_args


@dataclass
class Stats:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    frames: int = 0
    faces: int = 0
    no_face: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, counts: Sequence[int]) -> None:
        self.frames += len(counts)
        self.faces += int(sum(counts))
        self.no_face += sum(1 for c in counts if c == 0)


def process_file(session: Session, src: Path, dest: Path, kind: str, stats: Stats) -> str:
    """One planned input (``kind`` "image" or "video") with loaded networks; returns the result line."""
    from .images import process_image
    from .video import process_video
    line, counts = (process_video if kind == "video" else process_image)(session, src, dest)
    stats.add(counts)
    return line


def inputs_to_do(settings: Settings, items: List[Item], is_folder: bool, stats: Stats, out: Out) -> List[Item]:
    """The planned inputs worth loading the networks for: not skipped, and readable (a bad input
    costs nothing: checked before any network is loaded; in a folder it is counted as failed)."""
    todo = []
    for src, dest, kind in items:
        if kind is None:
            stats.skipped += 1
            out.warn(f"{src.name}: skipped (not an image or video file)")
        elif settings.files.skip_existing and dest.exists():
            stats.skipped += 1
            out.info(f"{src.name}: skipped ({dest} exists)")
        else:
            try:
                check_input(src, kind)
            except Exception as e:
                if not is_folder:
                    raise
                stats.failed += 1
                out.warn(f"{src.name}: failed: {describe(e)}")
                continue
            todo.append((src, dest, kind))
    if todo and settings.models.mask:
        from ..io.images import read_mask
        read_mask(settings.models.mask)
    return todo


def run_task(args: argparse.Namespace, task: str) -> int:
    """restore / colorize / inpaint: plan, load once, process each input, summarise."""
    settings = settings_from_args(args, task)
    out = Out(settings.quiet)
    if settings.threads is not None:  # the command owns its process (like cli/memory.py), the library never sets this
        import torch
        torch.set_num_threads(settings.threads)
    items, is_folder = plan(settings.files)
    stats = Stats()
    todo = inputs_to_do(settings, items, is_folder, stats, out)
    if todo:
        process_all(open_session(settings, out), todo, is_folder, stats)
    return summary(out, task, stats)


def process_all(session: Session, todo: List[Tuple[Path, Path, str]], is_folder: bool, stats: Stats) -> None:
    """Each input in turn; in a folder, one bad file is reported and the others go on."""
    out = session.out
    files_bar = progress_bar(total=len(todo), desc="files", unit="file", quiet=out.quiet or not is_folder)
    try:
        for src, dest, kind in todo:
            try:
                out.result(process_file(session, src, dest, kind, stats))
                stats.ok += 1
            except KeyboardInterrupt:
                raise
            except Exception as e:  # one bad file must not stop a folder
                if not is_folder:
                    raise
                stats.failed += 1
                if session.settings.debug:
                    traceback.print_exc()
                out.warn(f"{src.name}: failed: {describe(e)}")
            finally:
                files_bar.update(1)
    finally:
        files_bar.close()


def summary(out: Out, task: str, stats: Stats) -> int:
    dt = time.perf_counter() - stats.start
    parts = [f"{stats.ok} file{'s' if stats.ok != 1 else ''} done"]
    if stats.failed:
        parts.append(f"{stats.failed} failed")
    if stats.skipped:
        parts.append(f"{stats.skipped} skipped")
    out.result(f"codeformer {task}: {', '.join(parts)}; {stats.faces} faces found, "
               f"{stats.no_face} of {stats.frames} frames with no face; {dt:.1f} s, "
               f"{stats.faces / dt if dt > 0 else 0:.2f} faces/s")
    if stats.failed and stats.ok:
        return EXIT_PARTIAL
    if stats.failed or (not stats.ok and not stats.skipped):
        return EXIT_ERROR
    return EXIT_OK
