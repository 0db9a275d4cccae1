"""``codeformer restore | colorize | inpaint``: plan the inputs (an image, a video or a folder of
them), load the networks once, stream every input through ``pipeline.restore_images``, report.

Videos are decoded, restored and encoded chunk by chunk (``--frames-per-chunk`` frames at a
time at most, fewer when ``--max-memory`` says so; ``restore_images`` halves a chunk that runs
out of memory), so memory stays flat whatever the length; each frame keeps its timestamp. The
output is quantized band by band as ``restore_images`` pastes it, so no float copy of a whole
large output is ever held. Every input is checked (readable, not empty) before any network is
loaded.
"""
from __future__ import annotations

import argparse
import os
import time
import traceback
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from ..errors import MissingDependencyError, NotEnoughMemoryError, WrongVariantError, first_line
from ..tasks import TASKS
from .console import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, Out, UserError, describe, progress_bar
from .weights_cmd import ensure, file_or_weight

Boxes = List[Tuple[float, float, float, float]]


# -- detector wrapper that remembers boxes (for --draw-box) ------------------------------------
class BoxRecorder:
    """Duck-typed FaceDetector: forwards ``detect`` and keeps each frame's boxes."""

    def __init__(self, detector):
        self.detector = detector
        self.boxes: List[Boxes] = []

    def detect(self, frames, **kwargs):
        dets = self.detector.detect(frames, **kwargs)
        self.boxes.extend(boxes_per_frame(dets))
        return dets

    def take(self) -> List[Boxes]:
        boxes, self.boxes = self.boxes, []
        return boxes


def boxes_per_frame(dets) -> List[Boxes]:
    """Each frame's face boxes (x1, y1, x2, y2) from Detections."""
    per: List[Boxes] = [[] for _ in range(dets.num_frames)]
    for box, fi in zip(dets.boxes.cpu().tolist(), dets.frame_index.cpu().tolist()):
        per[fi].append(tuple(box))
    return per


# -- the processing context ------------------------------------------------------------------------
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


@dataclass
class Context:
    args: argparse.Namespace
    task: str
    out: Out
    model: object = None
    detector: object = None
    parser: object = None
    bg: Optional[Callable] = None
    face_up: Optional[Callable] = None
    mask: object = None  # [H,W] float32 numpy, inpainting hole

    @property
    def upscale(self) -> float:
        a = self.args
        return a.upscale if a.upscale is not None else (1.0 if a.has_aligned else 2.0)

    def detect_kwargs(self) -> dict:
        a = self.args
        kw = dict(conf_threshold=a.detection_threshold, resolution=a.detection_resolution)
        if a.only_center_face:
            kw["selection"] = "center"
        elif a.max_faces:
            kw["max_faces"] = a.max_faces
        return kw


def check_variant(model, task: str, checkpoint: Path) -> None:
    """The pipeline's variant check, worded with the command to use instead."""
    from ..pipeline import check_variant as check
    try:
        check(model, task)
    except WrongVariantError as e:
        other = next((t.name for t in TASKS.values() if t.variant == e.have), None)
        use = f"use 'codeformer {other}' for it, or " if other else ""
        raise WrongVariantError(e.have, e.want, f"'codeformer {task}' needs the {e.want} model, but "
                                f"{checkpoint.name} is the {e.have} variant; {use}give a {e.want} "
                                f"checkpoint with --model") from None


def weight_paths(args, task: str, out: Out) -> dict:
    """The weight files a run loads, fetched first when missing: ``model``, and unless
    --has-aligned ``detector``, ``parser`` (--parse) and ``bg`` (--bg-upsampler)."""
    a = args
    if a.face_model:
        paths = {"model": file_or_weight(a.face_model, a, out, "--face-model")}
    else:
        paths = {"model": file_or_weight(a.model, a, out, "--model") if a.model else ensure(TASKS[task].weight, a, out)}
    if not a.has_aligned:
        paths["detector"] = ensure(a.detector, a, out)
        if a.parse:
            paths["parser"] = ensure("parsenet", a, out)
        if a.bg_upsampler:
            paths["bg"] = file_or_weight(a.bg_upsampler, a, out, "--bg-upsampler")
    return paths


def load(ctx: Context) -> None:
    """Load the networks once per run (fetching missing registry files first)."""
    import torch
    from ..faces import detect
    from ..models import loader
    a, out = ctx.args, ctx.out
    try:
        device = loader.resolve_device(a.device)
    except RuntimeError as e:
        raise UserError(f"--device {a.device}: {first_line(e)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {a.device}: CUDA is not available in this PyTorch build")
    try:  # CodeFormer's "auto" is bf16 on a CPU with native bf16 (codes kept); other networks keep resolve_dtype
        dtype = (loader.resolve_dtype if a.face_model else loader.codeformer_dtype)(a.dtype, device)
    except ValueError as e:
        raise UserError(str(e)) from None
    paths = weight_paths(a, ctx.task, out)
    ckpt = paths["model"]
    out.info(f"loading {ckpt.name} on {device} ({str(dtype).replace('torch.', '')})")
    if a.face_model:
        ctx.model = load_face_model(ckpt, device, dtype)
    else:
        ctx.model = loader.load_model(ckpt, device=device, dtype=dtype)
        check_variant(ctx.model, ctx.task, ckpt)
    if not a.has_aligned:
        ctx.detector = detect.load_detector(paths["detector"], device=device)
        if a.draw_box:
            ctx.detector = BoxRecorder(ctx.detector)
        if a.parse:
            from ..models.loader import load_parsenet
            ctx.parser = load_parsenet(paths["parser"], device=device)
        if a.bg_upsampler:
            from ..io.upscale import load_upscaler
            try:
                ctx.bg = load_upscaler(paths["bg"], device, half=dtype == torch.float16, tile=a.bg_tile)
            except MissingDependencyError:
                raise UserError("--bg-upsampler needs spandrel: pip install spandrel") from None
            if a.face_upsample:
                ctx.face_up = ctx.bg
    if a.mask:
        from ..io.images import read_mask
        ctx.mask = read_mask(a.mask)


def load_face_model(path: Path, device, dtype):
    """--face-model: a spandrel face model (GFPGAN, RestoreFormer ...), errors worded for the option."""
    from ..errors import NotAFaceModelError
    from ..models.face_model import load_face_model as load_file
    try:
        return load_file(path, device, dtype)
    except MissingDependencyError:
        raise UserError("--face-model needs spandrel: pip install spandrel") from None
    except NotAFaceModelError as e:
        hint = "; use it with --bg-upsampler" if e.purpose == "SR" else ""
        raise NotAFaceModelError(e.name, e.architecture, e.purpose, e.scale, f"--face-model: {e}{hint}") from None


def frames_per_chunk(ctx: Context, height: int, width: int) -> int:
    """--frames-per-chunk, or fewer when --max-memory asks for it."""
    from ..pipeline import auto_frames_per_chunk
    return min(max(1, ctx.args.frames_per_chunk),
               auto_frames_per_chunk(height, width, None, ctx.upscale, budget=ctx.args.max_memory,
                                     output_whole=False))


def restore(ctx: Context, frames, smoother=None, progress=None, mask=None, detections=None, sink=None):
    """One call of the shared pipeline; returns (RestoreResult, boxes per frame or None).
    ``detections``: the frames' faces from the first pass of a video (zero-lag smoothing).
    ``sink``: takes the output band by band (``pipeline.restore_images``)."""
    import torch
    from .. import pipeline
    a = ctx.args
    masks = None if mask is None else torch.from_numpy(mask)[None]
    res = pipeline.restore_images(
        frames, ctx.model, ctx.detector, w=a.fidelity, task=ctx.task, upscale=ctx.upscale,
        parser=ctx.parser, background_upscaler=ctx.bg, face_upscaler=ctx.face_up,
        inpaint_masks=masks, has_aligned=a.has_aligned, smoother=smoother, detections=detections,
        color_match=a.color_match, frames_per_chunk=frames_per_chunk(ctx, *pipeline.image_batch(frames).shape[1:3]),
        batch_size=None if a.batch_size is None else max(1, a.batch_size), progress=progress,
        memory_budget=a.max_memory, sink=sink,
        **ctx.detect_kwargs())
    boxes = ctx.detector.take() if isinstance(ctx.detector, BoxRecorder) else None
    if detections is not None and a.draw_box:
        boxes = boxes_per_frame(detections)
    return res, boxes


# -- images -------------------------------------------------------------------------------------
def process_image(ctx: Context, src: Path, dest: Path, stats: Stats) -> str:
    import numpy as np
    from ..io.images import output_layout, quantize, read_image, with_alpha, write_image
    img = read_image(src)
    mask = ctx.mask
    if mask is not None and mask.shape != img.size:
        raise UserError(f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {img.size[1]}x{img.size[0]}")
    t0 = time.perf_counter()
    bar = None

    def progress(done, total):
        nonlocal bar
        if bar is None:
            bar = progress_bar(total=total, desc=f"{src.name} faces", unit="face", quiet=ctx.out.quiet, leave=False)
        bar.total = total
        bar.n = done
        bar.refresh()

    keep_gray, ext = ctx.task != "colorize", dest.suffix
    dtype, gray = output_layout(img, ext, keep_gray)
    h, w = (int(n * ctx.upscale) for n in img.size)
    out = np.empty((h, w) if gray else (h, w, 3), dtype)

    def sink(_first, row0, rgb, _mask):  # each band straight to the saved pixel format
        out[row0:row0 + rgb.shape[1]] = quantize(rgb[0].numpy(), img, ext, keep_gray)

    try:
        res, boxes = restore(ctx, img.rgb, progress=progress, mask=mask, sink=sink)
    except NotEnoughMemoryError as e:
        raise memory_error(e, src, e.what) from e
    finally:
        if bar is not None:
            bar.close()
    if boxes:
        draw_saved_boxes(out, boxes[0], ctx.upscale, img, ext, keep_gray)
    write_image(dest, with_alpha(out, img, ext))
    stats.add(res.face_counts)
    n = res.total_faces
    return f"{src.name} -> {dest}: {n} face{'s' if n != 1 else ''}, {time.perf_counter() - t0:.1f} s"


def draw_saved_boxes(out, boxes, scale: float, like=None, ext: str = ".png", keep_gray: bool = True) -> None:
    """--draw-box on an output already in its saved pixel format (``out`` [H,W] or [H,W,3]), in
    the colour the float green would have been saved as."""
    import numpy as np
    import torch
    from ..faces.draw import GREEN, draw_boxes
    from ..io.images import quantize
    color = quantize(np.asarray([[GREEN]], np.float32), like, ext, keep_gray)[0, 0]
    draw_boxes(torch.from_numpy(out), boxes, scale, color=np.atleast_1d(color).tolist())


MEMORY_HINT = "free some memory (close other programs) or lower -s"


def memory_error(e: NotEnoughMemoryError, src: Path, what: str) -> NotEnoughMemoryError:
    """The pipeline's out-of-memory error, worded for the command line: file, item, what to do."""
    return NotEnoughMemoryError(what, e.item, f"{src.name}: not enough memory for {what}, even on its own; "
                                              f"{MEMORY_HINT}")


# -- videos -------------------------------------------------------------------------------------
def detect_video(ctx: Context, src: Path, frames: int):
    """First pass of zero-lag smoothing (--smooth): every frame's faces, smoothed along each face's
    track. Only the detections are kept, so memory stays flat whatever the length."""
    from ..io.video import VideoReader
    from ..pipeline import detect_clip
    a = ctx.args
    detector = ctx.detector.detector if isinstance(ctx.detector, BoxRecorder) else ctx.detector
    bar = progress_bar(total=frames, desc=f"{src.name} detect", unit="frame", quiet=ctx.out.quiet, leave=False)

    def progress(done, total):
        bar.total, bar.n = total, done
        bar.refresh()
    try:
        with VideoReader(src) as reader:
            return detect_clip(reader.chunks(max(1, a.frames_per_chunk)), detector, a.smooth, progress=progress,
                               total=frames, **ctx.detect_kwargs())
    finally:
        bar.close()


def process_video(ctx: Context, src: Path, dest: Path, stats: Stats) -> str:
    """Without --fps each frame keeps its input timestamp (a variable frame rate stays variable,
    audio stays in sync); with --fps frames are dropped or repeated by timestamp. Rotation
    metadata is applied (upright frames, upright output). A video that stops decoding early is
    processed as far as it decodes, with a warning."""
    import numpy as np
    from ..io.video import VideoReader, VideoWriter, frame_repeats
    from ..pipeline import LandmarkSmoother
    a = ctx.args
    t0 = time.perf_counter()
    faces = frames = no_face = 0
    with VideoReader(src) as reader:
        info = reader.info
        if ctx.mask is not None and ctx.mask.shape != (info.height, info.width):
            raise UserError(f"mask is {ctx.mask.shape[1]}x{ctx.mask.shape[0]}, "
                            f"video is {info.width}x{info.height}")
        fps_out = Fraction(a.fps).limit_denominator(100000) if a.fps else info.fps
        s = ctx.upscale
        ow, oh = int(info.width * s), int(info.height * s)
        smoother = found = None
        if a.smooth_online > 0 and not a.has_aligned:
            smoother = LandmarkSmoother(strength=a.smooth_online)
        elif a.smooth > 0 and not a.has_aligned:
            found = detect_video(ctx, src, info.frames)
        per_chunk = frames_per_chunk(ctx, info.height, info.width)
        shortest, longest = float("inf"), 0.0   # seconds a frame is shown: a variable rate shows
        with VideoWriter(dest, ow, oh, fps_out, audio_from=src if info.has_audio else None,
                         codec=a.video_codec, crf=a.crf,
                         time_base=None if a.fps else reader.stream.time_base) as writer:
            if (ow, oh) != (writer.width, writer.height):
                ctx.out.info(f"{src.name}: output {ow}x{oh} cropped to {writer.width}x{writer.height} "
                             f"(the encoder needs even sizes)")
            bar = progress_bar(total=info.frames, desc=src.name, unit="frame", quiet=ctx.out.quiet, leave=False)
            try:
                index = 0
                for chunk in reader.timed_chunks(per_chunk):
                    n = len(chunk)
                    shortest = min([shortest] + [e - t for t, e in zip(chunk.times, chunk.ends)])
                    longest = max([longest] + [e - t for t, e in zip(chunk.times, chunk.ends)])
                    counts = frame_repeats(chunk.times, chunk.ends, fps_out) if a.fps else [1] * n
                    keep = [i for i, c in enumerate(counts) if c > 0]
                    first, index = index, index + n
                    bar.update(n)
                    if not keep:
                        continue
                    u8 = np.empty((len(keep), oh, ow, 3), np.uint8)

                    def sink(at, row0, rgb, _mask):
                        u8[at:at + rgb.shape[0], row0:row0 + rgb.shape[1]] = (rgb.numpy() * 255 + 0.5).astype(np.uint8)

                    try:
                        res, boxes = restore(ctx, chunk.frames[keep] if len(keep) < n else chunk.frames,
                                             smoother=smoother, mask=ctx.mask, sink=sink,
                                             detections=None if found is None else
                                             found.take_frames([first + i for i in keep]))
                    except NotEnoughMemoryError as e:
                        raise memory_error(e, src, f"frame {first + keep[e.item] + 1} ({info.width}x{info.height}"
                                                   f" pixels, output {ow}x{oh})") from e
                    for k, b in enumerate(boxes or []):
                        draw_saved_boxes(u8[k], b, s)
                    if a.fps:
                        writer.write(u8, [counts[i] for i in keep])
                    else:
                        writer.write(u8, times=chunk.times, ends=chunk.ends)
                    frames += len(keep)
                    faces += res.total_faces
                    no_face += sum(1 for c in res.face_counts if c == 0)
                    stats.add(res.face_counts)
                    bar.set_postfix(faces=faces, refresh=False)
            finally:
                bar.close()
            if reader.shortfall:
                ctx.out.warn(f"{src.name}: {reader.shortfall}; the output has the {frames} frames that decoded")
            writer.finish()
    dt = time.perf_counter() - t0
    audio = ("audio copied" if writer.audio_copied else "audio not copied") if info.has_audio else "no audio"
    if writer.audio_note:
        audio += f" ({writer.audio_note})"
    if a.fps:
        timing = f"{writer.frames_written} written at {float(fps_out):.3g} fps"
    elif longest > 1.05 * shortest:
        timing = f"variable frame rate kept: {shortest * 1000:.0f} to {longest * 1000:.0f} ms a frame"
    else:
        timing = f"{float(info.fps):.3g} fps"
    if info.rotation:   # frames turned upright; the output is stored upright, without the tag
        timing += f"; rotation metadata {info.rotation}\u00b0 applied"
    return (f"{src.name} -> {dest}: {frames} frames ({timing}), {faces} faces, {no_face} frames with no face, "
            f"{audio}, {dt:.1f} s, {faces / dt if dt > 0 else 0:.2f} faces/s")


def process_file(ctx: Context, src: Path, dest: Path, kind: str, stats: Stats) -> str:
    """One planned input (``kind`` "image" or "video") with loaded networks; returns the result line."""
    return (process_video if kind == "video" else process_image)(ctx, src, dest, stats)


# -- inputs and outputs -----------------------------------------------------------------------------
def _exts(kind: str) -> List[str]:
    from ..io.images import IMAGE_EXTS
    from ..io.video import VIDEO_EXTS
    return list(IMAGE_EXTS if kind == "image" else VIDEO_EXTS)


def media_kind(path: Path) -> Optional[str]:
    ext = path.suffix.lower()
    return "image" if ext in _exts("image") else "video" if ext in _exts("video") else None


def plan(args, task: str) -> Tuple[List[Tuple[Path, Optional[Path], Optional[str]]], bool]:
    """[(input, output, kind)] and whether the input is a folder; kind None = skipped."""
    src = Path(os.path.expanduser(args.input))
    if not src.exists():
        raise UserError(f"{src}: no such file or folder")
    default_suffix = TASKS[task].suffix
    if src.is_dir():
        out_dir = Path(args.output) if args.output else src.parent / (src.name + default_suffix)
        suffix = args.suffix or ""
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
            raise UserError(f"{src}: no images ({', '.join(_exts('image'))}) or videos "
                            f"({', '.join(_exts('video'))}) in the folder")
        return items, True
    k = media_kind(src)
    if k is None:
        raise UserError(f"{src.name}: not a supported image or video extension "
                        f"({', '.join(_exts('image') + _exts('video'))})")
    suffix = default_suffix if args.suffix is None else args.suffix
    if args.output:
        o = Path(os.path.expanduser(args.output))
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


def check_settings(args, task: str) -> None:
    if args.face_upsample and not args.bg_upsampler:
        raise UserError("--face-upsample uses the background upsampler: give --bg-upsampler too")
    if task != "inpaint" and getattr(args, "mask", None):
        raise UserError("--mask is for 'codeformer inpaint'")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads}: give 1 or more")
    if args.fps is not None and not args.fps > 0:
        raise UserError("--fps must be > 0")
    if args.upscale is not None and not 0 < args.upscale <= 16:
        raise UserError("-s/--upscale must be in (0, 16]")
    if not 0 <= args.fidelity <= 1:
        raise UserError("-w/--fidelity must be in [0, 1]")
    if not 0 <= args.smooth <= 100:
        raise UserError("--smooth must be in [0, 100] frames")
    if not 0 <= args.smooth_online < 1:
        raise UserError("--smooth-online must be in [0, 1)")
    if args.face_model and args.model:
        raise UserError("--face-model replaces CodeFormer: give --model or --face-model, not both")


def run_task(args, task: str) -> int:
    """restore / colorize / inpaint: plan, load once, process each input, summarise."""
    out = Out(args.quiet)
    check_settings(args, task)
    if args.threads is not None:  # the command owns its process (like cli/memory.py), the library never sets this
        import torch
        torch.set_num_threads(args.threads)
    items, is_folder = plan(args, task)
    stats = Stats()
    todo = []
    for src, dest, kind in items:
        if kind is None:
            stats.skipped += 1
            out.warn(f"{src.name}: skipped (not an image or video file)")
        elif args.skip_existing and dest.exists():
            stats.skipped += 1
            out.info(f"{src.name}: skipped ({dest} exists)")
        else:
            try:  # a bad input costs nothing: checked before any network is loaded
                check_input(src, kind)
            except Exception as e:
                if not is_folder:
                    raise
                stats.failed += 1
                out.warn(f"{src.name}: failed: {describe(e)}")
                continue
            todo.append((src, dest, kind))
    if todo and args.mask:
        from ..io.images import read_mask
        read_mask(args.mask)
    ctx = Context(args=args, task=task, out=out)
    if todo:
        load(ctx)
    files_bar = progress_bar(total=len(todo), desc="files", unit="file", quiet=out.quiet or not is_folder)
    try:
        for src, dest, kind in todo:
            try:
                line = process_file(ctx, src, dest, kind, stats)
                stats.ok += 1
                out.result(line)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # one bad file must not stop a folder
                if not is_folder:
                    raise
                stats.failed += 1
                if args.debug:
                    traceback.print_exc()
                out.warn(f"{src.name}: failed: {describe(e)}")
            finally:
                files_bar.update(1)
    finally:
        files_bar.close()
    return summary(out, task, stats)


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
