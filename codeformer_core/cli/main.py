"""``codeformer`` command line: restore / colorize / inpaint images, folders and videos, and
manage the weight files.

Why a CLI on the same core as the ComfyUI nodes: people batch-process archives and videos
outside a graph, and the original repository's scripts need a broken basicsr/facexlib
install. Everything heavy lives in ``codeformer_core`` (pipeline, registry, downloader);
this module only parses options, streams files through ``restore_images`` and reports.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

EXIT_OK = 0
EXIT_ERROR = 1       # nothing (or the only input) could be processed, or a bad setting
EXIT_USAGE = 2       # argparse: unknown option, bad value
EXIT_PARTIAL = 3     # a folder where some files failed and at least one succeeded
EXIT_INTERRUPTED = 130

TASK_WEIGHT = {"restore": "codeformer", "colorize": "codeformer_colorization",
               "inpaint": "codeformer_inpainting"}
TASK_SUFFIX = {"restore": "_restored", "colorize": "_colorized", "inpaint": "_inpainted"}
DETECTORS = ("retinaface_resnet50", "retinaface_mobilenet0.25")

EXIT_CODES_HELP = """\
exit codes:
  0  every input was processed (files where no face was found count as processed)
  1  error: bad input, missing/corrupt weights, download failed, or every file failed
  2  bad command-line usage
  3  partial failure: a folder where some files failed (each is reported on stderr,
     the others were written)
  130 interrupted (Ctrl-C); no half-written output is left under a final name
"""


class UserError(Exception):
    """A problem the user can fix; reported as one line without a traceback."""


# -- small helpers ------------------------------------------------------------------------------
class _Out:
    """stderr/stdout writer that does not tear tqdm bars apart; ``quiet`` silences info."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def info(self, msg: str) -> None:
        if not self.quiet:
            self._write(msg, sys.stderr)

    def warn(self, msg: str) -> None:
        self._write(f"codeformer: warning: {msg}", sys.stderr)

    def result(self, msg: str) -> None:
        self._write(msg, sys.stdout)

    @staticmethod
    def _write(msg: str, stream) -> None:
        try:
            from tqdm import tqdm
            tqdm.write(msg, file=stream)
        except ImportError:  # pragma: no cover
            print(msg, file=stream)


def _bar(total=None, desc="", unit="it", quiet=False, leave=True, position=None):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, position=position,
                disable=True if quiet else None, dynamic_ncols=True, file=sys.stderr)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _user_error_types() -> tuple:
    """Exceptions whose message is meant for the user (no traceback)."""
    from ..models.checkpoint import CheckpointError
    from ..weights.download import DownloadError
    from ..io.images import ImageReadError
    from ..pipeline import WrongVariantError
    from ..io.video import VideoError
    from ..weights.registry import CorruptWeightError, MissingWeightError, UnknownWeightError
    return (UserError, CheckpointError, DownloadError, ImageReadError, WrongVariantError, VideoError,
            CorruptWeightError, MissingWeightError, UnknownWeightError, FileNotFoundError,
            PermissionError, IsADirectoryError, NotADirectoryError)


# -- weights ------------------------------------------------------------------------------------
def _models_dir(args) -> Path:
    from ..weights.registry import default_models_dir
    return default_models_dir(getattr(args, "models", None))


def _ensure(name: str, args, out: _Out) -> Path:
    """Registry file, fetched on first use (one-line error naming URL and path when offline)."""
    from ..weights.registry import ensure_weight, get_entry, path_for
    entry = get_entry(name)
    dest = path_for(entry, _models_dir(args))
    if not dest.is_file() and not args.no_download:
        out.info(f"downloading {entry.file} (first run) from {entry.url} to {dest}")
    return ensure_weight(entry, _models_dir(args), download=not args.no_download)


def _file_or_weight(value: str, args, out: _Out, what: str) -> Path:
    """A path if it exists, else a registry name (downloaded when missing)."""
    p = Path(os.path.expanduser(value))
    if p.is_file():
        return p
    from ..weights.registry import find_entry
    if find_entry(value) is not None and not any(c in value for c in "/\\"):
        return _ensure(value, args, out)
    raise UserError(f"{what} {value}: no such file (and not a known weight name; see 'codeformer weights list')")


# -- background / face upsampler ----------------------------------------------------------------
def load_upscaler(path: Path, device, half: bool = False, tile: int = 400,
                  tile_pad: int = 10) -> Callable:
    """Any upscaler spandrel recognises (RealESRGAN_x2plus.pth, ...) as frames [B,3,H,W] 0..1 ->
    [B,3,H*s,W*s]; tiled so a 4K frame does not need the memory of the whole image at once."""
    import torch
    import torch.nn.functional as F
    try:
        import spandrel
    except ImportError:
        raise UserError("--bg-upsampler needs spandrel: pip install spandrel") from None
    try:
        desc = spandrel.ModelLoader(device=device).load_from_file(str(path))
    except Exception as e:
        raise UserError(f"{path.name}: not an upscaler spandrel can load ({_one_line(e)})") from None
    if not isinstance(desc, spandrel.ImageModelDescriptor) or desc.input_channels != 3 \
            or desc.output_channels != 3:
        raise UserError(f"{path.name}: not an RGB image upscaler ({desc.architecture.name})")
    desc.eval()
    use_half = bool(half and desc.supports_half and torch.device(device).type == "cuda")
    if use_half:
        desc.half()
    scale = int(desc.scale)
    req = desc.size_requirements

    def run(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        th, tw = max(h, req.minimum), max(w, req.minimum)
        m = max(1, int(req.multiple_of))
        th, tw = -(-th // m) * m, -(-tw // m) * m
        if (th, tw) != (h, w):
            x = F.pad(x, (0, tw - w, 0, th - h), mode="replicate")
        with torch.inference_mode():
            y = desc(x.to(device, torch.float16 if use_half else torch.float32)).float()
        return y[..., :h * scale, :w * scale].clamp(0, 1)

    def upscale(frames: torch.Tensor) -> torch.Tensor:
        b, _, h, w = frames.shape
        if not tile or (h <= tile and w <= tile):
            return run(frames).to(frames.device)
        out = torch.empty(b, 3, h * scale, w * scale, dtype=torch.float32, device=frames.device)
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                py0, px0 = max(0, y0 - tile_pad), max(0, x0 - tile_pad)
                py1, px1 = min(h, y1 + tile_pad), min(w, x1 + tile_pad)
                t = run(frames[:, :, py0:py1, px0:px1])
                oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
                out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
                    t[:, :, oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale].to(out.device)
        return out

    upscale.scale = scale
    upscale.name = path.name
    return upscale


# -- detector wrapper that remembers boxes (for --draw-box) ------------------------------------
class _BoxRecorder:
    """Duck-typed FaceDetector: forwards ``detect`` and keeps each frame's boxes."""

    def __init__(self, detector):
        self.detector = detector
        self.boxes: List[List[Tuple[float, float, float, float]]] = []

    def detect(self, frames, **kwargs):
        dets = self.detector.detect(frames, **kwargs)
        per = [[] for _ in range(int(frames.shape[0]))]
        for box, fi in zip(dets.boxes.cpu().tolist(), dets.frame_index.cpu().tolist()):
            per[fi].append(tuple(box))
        self.boxes.extend(per)
        return dets

    def take(self) -> List[List[Tuple[float, float, float, float]]]:
        boxes, self.boxes = self.boxes, []
        return boxes


def _draw_boxes(img, boxes, scale: float) -> None:
    """Green rectangles on a float [H,W,3] array, in place (as the original --draw_box)."""
    h, w = img.shape[:2]
    t = max(1, int(round(2 * scale)))
    for x1, y1, x2, y2 in boxes:
        x1, y1, x2, y2 = (int(round(v * scale)) for v in (x1, y1, x2, y2))
        x1, x2 = max(0, min(x1, w - 1)), max(0, min(x2, w - 1))
        y1, y2 = max(0, min(y1, h - 1)), max(0, min(y2, h - 1))
        if x2 <= x1 or y2 <= y1:
            continue
        green = img.new_tensor([0.0, 1.0, 0.0]) if hasattr(img, "new_tensor") else (0.0, 1.0, 0.0)
        img[y1:y1 + t, x1:x2 + 1] = green
        img[max(y1, y2 - t + 1):y2 + 1, x1:x2 + 1] = green
        img[y1:y2 + 1, x1:x1 + t] = green
        img[y1:y2 + 1, max(x1, x2 - t + 1):x2 + 1] = green


# -- the processing context ------------------------------------------------------------------------
@dataclass
class _Stats:
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
class _Context:
    args: argparse.Namespace
    task: str
    out: _Out
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


def _load(ctx: _Context) -> None:
    """Load the networks once per run (fetching missing registry files first)."""
    import torch
    from ..faces.detect import load_detector
    from ..models.loader import load_model, resolve_device, resolve_dtype
    a, out = ctx.args, ctx.out
    try:
        device = resolve_device(a.device)
    except RuntimeError as e:
        raise UserError(f"--device {a.device}: {_one_line(e)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {a.device}: CUDA is not available in this PyTorch build")
    try:
        dtype = resolve_dtype(a.dtype, device)
    except ValueError as e:
        raise UserError(str(e)) from None
    ckpt = _file_or_weight(a.model, a, out, "--model") if a.model else _ensure(TASK_WEIGHT[ctx.task], a, out)
    out.info(f"loading {ckpt.name} on {device} ({str(dtype).replace('torch.', '')})")
    ctx.model = load_model(ckpt, device=device, dtype=dtype)
    from ..pipeline import check_variant
    check_variant(ctx.model, ctx.task)
    if not a.has_aligned:
        det_path = _ensure(a.detector, a, out)
        ctx.detector = load_detector(det_path, device=device)
        if a.draw_box:
            ctx.detector = _BoxRecorder(ctx.detector)
        if a.parse:
            from ..models.parsenet import load_parsenet
            ctx.parser = load_parsenet(_ensure("parsenet", a, out), device=device)
        if a.bg_upsampler:
            up = load_upscaler(_file_or_weight(a.bg_upsampler, a, out, "--bg-upsampler"), device,
                               half=dtype == torch.float16, tile=a.bg_tile)
            ctx.bg = up
            if a.face_upsample:
                ctx.face_up = up
    if a.mask:
        from ..io.images import read_mask
        ctx.mask = read_mask(a.mask)


def _restore(ctx: _Context, frames, smoother=None, progress=None, mask=None):
    """One call of the shared pipeline; returns (RestoreResult, boxes per frame or None)."""
    import torch
    from ..pipeline import restore_images
    a = ctx.args
    masks = None if mask is None else torch.from_numpy(mask)[None]
    res = restore_images(
        frames, ctx.model, ctx.detector, w=a.fidelity, task=ctx.task, upscale=ctx.upscale,
        parser=ctx.parser, background_upscaler=ctx.bg, face_upscaler=ctx.face_up,
        inpaint_masks=masks, has_aligned=a.has_aligned, smoother=smoother,
        color_match=a.color_match, frames_per_chunk=max(1, a.frames_per_chunk),
        batch_size=max(1, a.batch_size), progress=progress, **ctx.detect_kwargs())
    boxes = ctx.detector.take() if isinstance(ctx.detector, _BoxRecorder) else None
    return res, boxes


# -- images -------------------------------------------------------------------------------------
def _process_image(ctx: _Context, src: Path, dest: Path, stats: _Stats) -> str:
    from ..io.images import read_image, to_output_array, write_image
    img = read_image(src)
    mask = ctx.mask
    if mask is not None and mask.shape != img.size:
        raise UserError(f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {img.size[1]}x{img.size[0]}")
    t0 = time.perf_counter()
    bar = None

    def progress(done, total):
        nonlocal bar
        if bar is None:
            bar = _bar(total=total, desc=f"{src.name} faces", unit="face", quiet=ctx.out.quiet, leave=False)
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        res, boxes = _restore(ctx, img.rgb, progress=progress, mask=mask)
    finally:
        if bar is not None:
            bar.close()
    rgb = res.images[0]
    if boxes:
        _draw_boxes(rgb, boxes[0], ctx.upscale)
    arr = to_output_array(rgb.numpy(), img, dest.suffix, keep_gray=ctx.task != "colorize")
    write_image(dest, arr)
    stats.add(res.face_counts)
    n = res.total_faces
    return f"{src.name} -> {dest}: {n} face{'s' if n != 1 else ''}, {time.perf_counter() - t0:.1f} s"


# -- videos -------------------------------------------------------------------------------------
def _process_video(ctx: _Context, src: Path, dest: Path, stats: _Stats) -> str:
    import numpy as np
    from ..pipeline import LandmarkSmoother
    from ..io.video import VideoReader, VideoWriter, retime_counts
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
        smoother = None
        if a.smooth > 0 and not a.has_aligned:
            smoother = LandmarkSmoother(strength=a.smooth)
        with VideoWriter(dest, ow, oh, fps_out, audio_from=src if info.has_audio else None,
                         codec=a.video_codec, crf=a.crf) as writer:
            if (ow, oh) != (writer.width, writer.height):
                ctx.out.info(f"{src.name}: output {ow}x{oh} cropped to {writer.width}x{writer.height} "
                             f"(the encoder needs even sizes)")
            bar = _bar(total=info.frames, desc=src.name, unit="frame", quiet=ctx.out.quiet, leave=False)
            try:
                index = 0
                for chunk in reader.chunks(max(1, a.frames_per_chunk)):
                    n = len(chunk)
                    counts = retime_counts(index, n, info.fps, fps_out) if a.fps else [1] * n
                    keep = [i for i, c in enumerate(counts) if c > 0]
                    index += n
                    bar.update(n)
                    if not keep:
                        continue
                    res, boxes = _restore(ctx, chunk[keep] if len(keep) < n else chunk,
                                          smoother=smoother, mask=ctx.mask)
                    imgs = res.images
                    if boxes:
                        for k, b in enumerate(boxes):
                            _draw_boxes(imgs[k], b, s)
                    u8 = (imgs.numpy() * 255 + 0.5).astype(np.uint8)
                    writer.write(u8, [counts[i] for i in keep])
                    frames += len(keep)
                    faces += res.total_faces
                    no_face += sum(1 for c in res.face_counts if c == 0)
                    stats.add(res.face_counts)
                    bar.set_postfix(faces=faces, refresh=False)
            finally:
                bar.close()
            writer.finish()
    dt = time.perf_counter() - t0
    audio = ("audio copied" if writer.audio_copied else "audio not copied") if info.has_audio else "no audio"
    if writer.audio_note:
        audio += f" ({writer.audio_note})"
    return (f"{src.name} -> {dest}: {frames} frames ({writer.frames_written} written at "
            f"{float(fps_out):.3g} fps), {faces} faces, {no_face} frames with no face, {audio}, "
            f"{dt:.1f} s, {faces / dt if dt > 0 else 0:.2f} faces/s")


# -- inputs and outputs -----------------------------------------------------------------------------
def _kind(path: Path) -> Optional[str]:
    from ..io.images import IMAGE_EXTS
    from ..io.video import VIDEO_EXTS
    ext = path.suffix.lower()
    return "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else None


def _plan(args, task: str) -> Tuple[List[Tuple[Path, Optional[Path], Optional[str]]], bool]:
    """[(input, output, kind)] and whether the input is a folder; kind None = skipped."""
    src = Path(os.path.expanduser(args.input))
    if not src.exists():
        raise UserError(f"{src}: no such file or folder")
    default_suffix = TASK_SUFFIX[task]
    if src.is_dir():
        out_dir = Path(args.output) if args.output else src.parent / (src.name + default_suffix)
        suffix = args.suffix or ""
        plan = []
        for p in sorted(src.iterdir()):
            if p.name.startswith(".") or not p.is_file():
                continue
            k = _kind(p)
            dest = out_dir / f"{p.stem}{suffix}{p.suffix}" if k else None
            if dest is not None and dest.resolve() == p.resolve():
                raise UserError(f"output folder {out_dir} is the input folder and would overwrite "
                                f"its files; give --suffix or another -o")
            plan.append((p, dest, k))
        if not any(k for _, _, k in plan):
            raise UserError(f"{src}: no images ({', '.join(_exts('image'))}) or videos "
                            f"({', '.join(_exts('video'))}) in the folder")
        return plan, True
    k = _kind(src)
    if k is None:
        raise UserError(f"{src.name}: not a supported image or video extension "
                        f"({', '.join(_exts('image') + _exts('video'))})")
    suffix = default_suffix if args.suffix is None else args.suffix
    if args.output:
        o = Path(os.path.expanduser(args.output))
        if _kind(o) is not None:
            if _kind(o) != k:
                raise UserError(f"-o {o.name}: an {k} input needs an {k} output extension")
            dest = o
        else:
            dest = o / f"{src.stem}{suffix}{src.suffix}"
    else:
        dest = src.with_name(f"{src.stem}{suffix}{src.suffix}")
    if dest.resolve() == src.resolve():
        raise UserError(f"output {dest} would overwrite the input; give --suffix or -o")
    return [(src, dest, k)], False


def _exts(kind: str) -> List[str]:
    from ..io.images import IMAGE_EXTS
    from ..io.video import VIDEO_EXTS
    return list(IMAGE_EXTS if kind == "image" else VIDEO_EXTS)


def run_task(args, task: str) -> int:
    """restore / colorize / inpaint: plan, load once, process each input, summarise."""
    out = _Out(args.quiet)
    if args.face_upsample and not args.bg_upsampler:
        raise UserError("--face-upsample uses the background upsampler: give --bg-upsampler too")
    if task != "inpaint" and getattr(args, "mask", None):
        raise UserError("--mask is for 'codeformer inpaint'")
    if args.fps is not None and not args.fps > 0:
        raise UserError("--fps must be > 0")
    if args.upscale is not None and not 0 < args.upscale <= 16:
        raise UserError("-s/--upscale must be in (0, 16]")
    if not 0 <= args.fidelity <= 1:
        raise UserError("-w/--fidelity must be in [0, 1]")
    if not 0 <= args.smooth < 1:
        raise UserError("--smooth must be in [0, 1)")
    plan, is_folder = _plan(args, task)
    stats = _Stats()
    todo = []
    for src, dest, kind in plan:
        if kind is None:
            stats.skipped += 1
            out.warn(f"{src.name}: skipped (not an image or video file)")
        elif args.skip_existing and dest.exists():
            stats.skipped += 1
            out.info(f"{src.name}: skipped ({dest} exists)")
        else:
            todo.append((src, dest, kind))
    ctx = _Context(args=args, task=task, out=out)
    if todo:
        _load(ctx)
    files_bar = _bar(total=len(todo), desc="files", unit="file", quiet=out.quiet or not is_folder)
    try:
        for src, dest, kind in todo:
            try:
                line = (_process_video if kind == "video" else _process_image)(ctx, src, dest, stats)
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
                out.warn(f"{src.name}: failed: {_describe(e)}")
            finally:
                files_bar.update(1)
    finally:
        files_bar.close()
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


def _describe(e: BaseException) -> str:
    import torch
    if isinstance(e, torch.OutOfMemoryError):
        return "out of memory; lower --batch-size / --frames-per-chunk or set --bg-tile"
    if isinstance(e, _user_error_types()):
        return _one_line(e)
    return f"{type(e).__name__}: {_one_line(e)}"


# -- weights subcommands --------------------------------------------------------------------------
def _human(n: Optional[int]) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_weights_list(args) -> int:
    from ..weights.registry import known_weights, path_for
    models = _models_dir(args)
    print(f"models folder: {models}")
    rows = []
    for name, e in known_weights().items():
        p = path_for(e, models)
        status = f"present ({_human(p.stat().st_size)})" if p.is_file() else "missing"
        rows.append((name, f"{e.folder}/{e.file}", f"{e.kind}:{e.variant}", status))
    widths = [max(len(r[i]) for r in rows + [("NAME", "FILE", "KIND", "STATUS")]) for i in range(4)]
    for r in [("NAME", "FILE", "KIND", "STATUS")] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return EXIT_OK


def cmd_weights_download(args) -> int:
    from ..weights.download import download
    from ..weights.registry import get_entry, known_weights, path_for, verify_file
    names = list(known_weights()) if args.names == ["all"] else args.names
    entries = [get_entry(n) for n in names]  # unknown names fail before any download
    models = _models_dir(args)
    for e in entries:
        dest = path_for(e, models)
        if dest.is_file() and not args.force:
            check = verify_file(dest, e)
            if check.ok:
                print(f"{e.name}: already present at {dest} ({check.message.split(': ', 1)[-1]})")
                continue
            print(f"{e.name}: {check.message}; downloading again", file=sys.stderr)
        download(e.urls, dest, sha256=e.sha256, expected_size=e.size)
        print(f"{e.name}: downloaded to {dest}" + (" (sha256 ok)" if e.sha256 else ""))
    return EXIT_OK


def cmd_weights_verify(args) -> int:
    from ..weights.registry import known_weights, path_for, verify_file
    bad = 0
    if args.paths:
        targets = [(Path(os.path.expanduser(p)), None) for p in args.paths]
    else:
        models = _models_dir(args)
        print(f"models folder: {models}")
        targets = [(path_for(e, models), e) for e in known_weights().values()]
    for path, entry in targets:
        if entry is not None and not path.is_file():
            print(f"{entry.name}: missing ({path})")
            continue
        r = verify_file(path, entry)
        line = r.message
        if r.ok and r.expected_sha256 is None and path.suffix.lower() in (".pth", ".ckpt", ".safetensors", ".pt"):
            line = f"{line}; {_describe_checkpoint(path)}"
            if "cannot be loaded" in line:
                r = None
        print(("OK   " if r else "FAIL ") + line)
        bad += 0 if r else 1
    return EXIT_ERROR if bad else EXIT_OK


def _describe_checkpoint(path: Path) -> str:
    """What a file without a published hash holds, by loading it (weights only)."""
    from ..models.checkpoint import CheckpointError, detect_variant, read_state_dict
    from ..weights.registry import find_entry
    entry = find_entry(path.name)
    if entry is not None and entry.kind != "codeformer":
        return f"registry: {entry.kind} {entry.variant}"
    try:
        sd = read_state_dict(path)
    except CheckpointError as e:
        return f"cannot be loaded: {_one_line(e)}"
    try:
        return f"CodeFormer {detect_variant(sd, path.name)} checkpoint, {len(sd)} tensors"
    except CheckpointError:
        return f"{len(sd)} tensors (not a CodeFormer checkpoint)"


def cmd_weights_convert(args) -> int:
    from ..models.checkpoint import convert_to_safetensors
    src = Path(os.path.expanduser(args.path))
    if not src.is_file():
        raise UserError(f"{src}: no such file")
    if args.to != "safetensors":
        raise UserError("only --to safetensors is supported")
    dest = Path(args.output) if args.output else None
    if dest is not None and dest.resolve() == src.resolve():
        raise UserError("the output would overwrite the input")
    result = convert_to_safetensors(src, dest, fp16=args.fp16)
    print(f"{src} -> {result} ({_human(result.stat().st_size)}{', fp16' if args.fp16 else ''})")
    return EXIT_OK


# -- argument parser ------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, task: str) -> None:
    p.add_argument("input", help="an image, a video (.mp4 .mov .avi .mkv .webm) or a folder of them")
    p.add_argument("-o", "--output", help="output file or folder (default: next to a file input as "
                   f"NAME{TASK_SUFFIX[task]}.EXT; for a folder, a sibling folder FOLDER{TASK_SUFFIX[task]})")
    if task == "restore":
        p.add_argument("-w", "--fidelity", type=float, default=0.5,
                       help="0 = strongest restoration (quality), 1 = closest to the input (fidelity); "
                            "default 0.5")
    else:
        p.set_defaults(fidelity=0.5)
    p.set_defaults(mask=None)
    if task == "inpaint":
        p.add_argument("--mask", metavar="FILE", help="mask image of the input's size, white = hole; "
                       "default: pure white pixels of the input are the hole (as the original)")
    g = p.add_argument_group("faces")
    g.add_argument("-s", "--upscale", type=float, default=None,
                   help="output scale of the whole image (default 2; 1 with --has-aligned); video sizes are "
                        "rounded down to even numbers for the encoder")
    g.add_argument("--has-aligned", action="store_true",
                   help="inputs are already cropped and aligned 512x512 faces (no detection)")
    g.add_argument("--only-center-face", action="store_true", help="restore only the face nearest the centre")
    g.add_argument("--max-faces", type=int, default=0, help="at most this many faces per frame, largest first (0 = all)")
    g.add_argument("--draw-box", action="store_true", help="draw the detected face boxes on the output")
    g.add_argument("--detector", choices=DETECTORS, default="retinaface_resnet50", help="face detector")
    g.add_argument("--detection-threshold", type=float, default=0.8, metavar="P",
                   help="face confidence threshold (default 0.8, as the original)")
    g.add_argument("--detection-resolution", type=int, default=640, metavar="PX",
                   help="short side the detector sees (default 640; 0 = original size)")
    g.add_argument("--parse", action=argparse.BooleanOptionalAction, default=False,
                   help="blend faces back with a ParseNet face mask instead of the square feathered "
                        "mask (the original scripts use it; downloads parsing_parsenet.pth)")
    g.add_argument("--color-match", action="store_true", help="match restored faces' colours to the input")
    g = p.add_argument_group("background")
    g.add_argument("--bg-upsampler", metavar="PATH",
                   help="upscaler file spandrel can load (e.g. RealESRGAN_x2plus.pth) or a registry name "
                        "(realesrgan_x2plus); used for the background when -s > 1")
    g.add_argument("--bg-tile", type=int, default=400, metavar="PX",
                   help="tile size for the upsampler (default 400, 0 = whole frame)")
    g.add_argument("--face-upsample", action="store_true",
                   help="also upsample the restored faces with the background upsampler before pasting")
    g = p.add_argument_group("output and video")
    g.add_argument("--suffix", default=None, help=f"added to output names (default {TASK_SUFFIX[task]} "
                   "for a single file, none inside an output folder)")
    g.add_argument("--skip-existing", action="store_true", help="leave inputs whose output exists")
    g.add_argument("--fps", type=float, default=None,
                   help="output video frame rate (default: the input's); frames are dropped or repeated "
                        "so the duration and audio sync are kept")
    g.add_argument("--smooth", type=float, default=0.5, metavar="S",
                   help="video landmark smoothing across frames against flicker, 0..1 (default 0.5, 0 = off)")
    g.add_argument("--crf", type=int, default=None, help="video quality (x264 default 18, VP9 32; lower = better)")
    g.add_argument("--video-codec", default=None, help="encoder (default libx264; libvpx-vp9 for .webm; mpeg4 for .avi)")
    g = p.add_argument_group("performance and models")
    g.add_argument("--batch-size", type=int, default=4, help="faces per network batch (default 4)")
    g.add_argument("--frames-per-chunk", type=int, default=8,
                   help="video frames decoded and restored together (faces batched across them; default 8)")
    g.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    g.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="network precision (auto: fp16 on CUDA, fp32 elsewhere)")
    g.add_argument("--model", metavar="PATH", help="CodeFormer checkpoint to use instead of the registry file "
                   "(.pth or .safetensors)")
    _models_arg(g)
    g.add_argument("--no-download", action="store_true", help="never download; fail if a weight file is missing")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info messages")
    g.add_argument("--debug", action="store_true", help="show tracebacks")


def _models_arg(p) -> None:
    p.add_argument("--models", metavar="DIR", default=None,
                   help="models folder (ComfyUI layout: facerestore_models/, facedetection/, upscale_models/); "
                        "default: $CODEFORMER_MODELS_DIR, else ComfyUI's models/ when this pack is inside "
                        "ComfyUI, else the per-user cache folder")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="codeformer", formatter_class=fmt,
        description="CodeFormer face restoration, colorization and inpainting for images, folders "
                    "and videos (.mp4 .mov .avi .mkv .webm), and weight-file management. Missing "
                    "weights are downloaded on first use into the models folder.",
        epilog="examples:\n"
               "  codeformer restore photo.jpg -w 0.7 -s 2\n"
               "  codeformer restore old_photos/ -o restored/ --bg-upsampler realesrgan_x2plus --face-upsample\n"
               "  codeformer restore clip.mp4 -w 0.5 --only-center-face\n"
               "  codeformer restore cropped_faces/ --has-aligned\n"
               "  codeformer colorize gray_face.png --has-aligned\n"
               "  codeformer inpaint masked_face.png --has-aligned\n"
               "  codeformer weights list\n\n" + EXIT_CODES_HELP)
    parser.add_argument("--version", action="version", version=f"codeformer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    helps = {"restore": "restore faces (fidelity -w)", "colorize": "colorize gray or faded faces",
             "inpaint": "fill masked / white regions of faces"}
    for task in ("restore", "colorize", "inpaint"):
        p = sub.add_parser(task, help=helps[task], description=helps[task].capitalize() + " in an image, "
                           "a folder or a video.", formatter_class=fmt, epilog=EXIT_CODES_HELP)
        _common(p, task)
        p.set_defaults(func=lambda a, t=task: run_task(a, t))
    w = sub.add_parser("weights", help="list, download, verify or convert weight files",
                       description="Weight files from the registry (weights/registry.json).")
    wsub = w.add_subparsers(dest="weights_command", metavar="ACTION")
    p = wsub.add_parser("list", help="registry entries and whether each is present")
    _models_arg(p)
    p.set_defaults(func=cmd_weights_list)
    p = wsub.add_parser("download", help="download NAME ... (or 'all'), verified, atomically")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--force", action="store_true", help="download even if a valid file is present")
    _models_arg(p)
    p.set_defaults(func=cmd_weights_download)
    p = wsub.add_parser("verify", help="check files against the registry's size/sha256 "
                        "(default: every registry file in the models folder)")
    p.add_argument("paths", nargs="*", metavar="PATH")
    _models_arg(p)
    p.set_defaults(func=cmd_weights_verify)
    p = wsub.add_parser("convert", help="convert a CodeFormer checkpoint to .safetensors")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--to", default="safetensors", choices=("safetensors",))
    p.add_argument("--fp16", action="store_true", help="store floating-point tensors in half precision")
    p.add_argument("-o", "--output", help="output file (default: next to PATH, .safetensors)")
    p.set_defaults(func=cmd_weights_convert)
    w.set_defaults(func=lambda a: _usage(w))
    return parser


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_usage(sys.stderr)
    print(f"{p.prog}: error: choose an action", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``codeformer`` script; returns the exit code (see --help)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    if not getattr(args, "func", None):
        parser.print_usage(sys.stderr)
        print("codeformer: error: choose a command (restore, colorize, inpaint, weights)", file=sys.stderr)
        return EXIT_USAGE
    debug = getattr(args, "debug", False)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("codeformer: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if debug:
            traceback.print_exc()
        elif not isinstance(e, _user_error_types()):
            print("codeformer: (unexpected error; run with --debug for the traceback)", file=sys.stderr)
        print(f"codeformer: error: {_describe(e)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
