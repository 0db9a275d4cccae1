"""The options of ``codeformer restore | colorize | inpaint`` as one frozen value.

``settings_from_args`` is the one place that reads the argparse Namespace of a task command: it
checks the values and groups them by who uses them (planning the files, loading the networks,
the video encoder, the pipeline's options). Everything after it takes a ``Settings`` (or one of
its groups), so each function's signature shows what it reads. Importing this module imports
neither torch nor OpenCV (``codeformer --help`` stays fast).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

from ..tasks import TASKS
from .console import UserError


@dataclass(frozen=True)
class FileSettings:
    """Which files are read and where the outputs go (``plan.plan``)."""
    input: str
    output: Optional[str] = None
    suffix: Optional[str] = None        # None: the task's suffix for a file, none inside an output folder
    skip_existing: bool = False
    default_suffix: str = "_restored"   # the task's own (tasks.TASKS[task].suffix)


@dataclass(frozen=True)
class ModelSettings:
    """Which networks are loaded, on which device, from where (``engine.load_networks``).

    ``models`` and ``no_download`` are read by ``weights_cmd.ensure`` under those names."""
    model: Optional[str] = None         # --model: a CodeFormer checkpoint instead of the registry file
    face_model: Optional[str] = None    # --face-model: a spandrel face model instead of CodeFormer
    detector: str = "retinaface_resnet50"
    parse: bool = False
    bg_upsampler: Optional[str] = None
    bg_tile: int = 400
    face_upsample: bool = False
    mask: Optional[str] = None          # inpaint --mask FILE
    paste_mask: Optional[str] = None    # --paste-mask FILE
    device: str = "auto"
    dtype: str = "auto"
    models: Optional[str] = None
    no_download: bool = False


@dataclass(frozen=True)
class VideoSettings:
    """How videos are timed, smoothed and encoded (``video.process_video``)."""
    fps: Optional[float] = None         # None: each frame keeps its timestamp
    smooth: float = 2.0                 # zero-lag smoothing, sigma in frames (two passes)
    smooth_online: float = 0.0          # one-pass exponential smoothing instead
    temporal: float = 0.0               # temporal codes, sigma in frames (restore; needs the two passes)
    crf: Optional[int] = None
    codec: Optional[str] = None


@dataclass(frozen=True)
class DetectSettings:
    """The detector options as given (``detect_options`` turns them into the core's
    ``faces.detect.DetectOptions``, which imports torch)."""
    threshold: float = 0.8
    resolution: int = 640
    center_only: bool = False
    max_faces: int = 0
    min_size: int = 0
    max_size: int = 0

    def options(self):
        """The core's ``DetectOptions`` for these settings."""
        from ..faces.detect import DetectOptions
        sizes = dict(conf_threshold=self.threshold, resolution=self.resolution, min_size=self.min_size,
                     max_size=self.max_size)
        if self.center_only:
            return DetectOptions(selection="center", **sizes)
        return DetectOptions(max_faces=self.max_faces, **sizes)


@dataclass(frozen=True)
class BlendSettings:
    """Which parts of each face take the restored pixels (``paste_options`` turns them into the
    core's ``faces.paste.PasteOptions``): the ParseNet regions (a preset, or names, less the names
    to keep; with --parse) and the mask's grow / blur in crop pixels."""
    region_preset: str = "face"
    regions: Optional[str] = None
    keep_regions: Optional[str] = None
    mask_grow: int = 0
    mask_blur: int = 0

    def paste_options(self, upscale: float, color_match: bool):
        """The core's ``PasteOptions`` (region names checked there: InputError naming the choices)."""
        from ..faces.masks import region_labels
        from ..faces.paste import PasteOptions
        return PasteOptions(upscale=upscale, color_match=color_match, mask_grow=self.mask_grow,
                            mask_blur=self.mask_blur,
                            regions=region_labels(self.region_preset, self.regions, self.keep_regions))


@dataclass(frozen=True)
class Settings:
    """One task command's options, checked (``settings_from_args``)."""
    task: str
    files: FileSettings
    models: ModelSettings
    video: VideoSettings
    detect: DetectSettings
    blend: BlendSettings
    fidelity: float = 0.5
    upscale: float = 2.0                # resolved: -s, else 1 with --has-aligned, else 2
    has_aligned: bool = False
    color_match: bool = False
    draw_box: bool = False
    batch_size: Optional[int] = None
    frames_per_chunk: int = 8           # --frames-per-chunk: the most (--max-memory may ask for fewer)
    max_memory: Optional[int] = None    # bytes; None: the pipeline's default budget
    threads: Optional[int] = None
    quiet: bool = False
    debug: bool = False


def check_args(args: argparse.Namespace, task: str) -> None:
    """Refuse option values that do not fit, before anything is read or loaded."""
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
    temporal = getattr(args, "temporal", None)
    if temporal is not None:
        if not 0 <= temporal <= 100:
            raise UserError("--temporal must be in [0, 100] frames")
        if temporal > 0 and (task != "restore" or args.smooth_online > 0 or args.has_aligned
                             or getattr(args, "face_model", None)):
            raise UserError("--temporal chooses CodeFormer's codes along face tracks: it needs the restore command "
                            "with the CodeFormer model, whole frames (not --has-aligned) and the two-pass --smooth "
                            "(not --smooth-online); give --temporal 0 or drop the other option")
    if (args.regions or args.keep_regions or args.region_preset != "face") and not args.parse:
        raise UserError("--region-preset / --regions / --keep-regions choose ParseNet regions: add --parse")
    if not 0 <= args.mask_blur <= 128 or not -128 <= args.mask_grow <= 128:
        raise UserError("--mask-grow must be in [-128, 128] and --mask-blur in [0, 128] (pixels of the 512 crop)")
    if args.min_face_size < 0 or args.max_face_size < 0:
        raise UserError("--min-face-size / --max-face-size must be >= 0 (0 = no limit)")
    if args.max_face_size and args.min_face_size > args.max_face_size:
        raise UserError(f"--min-face-size {args.min_face_size} is above --max-face-size {args.max_face_size}")
    if args.paste_mask and args.has_aligned:
        raise UserError("--paste-mask is for whole images; aligned faces (--has-aligned) are not pasted back")
    if args.parse:  # region names checked now, before any file is read (masks imports torch: not for --help)
        from ..faces.masks import region_labels
        region_labels(args.region_preset, args.regions, args.keep_regions)
    if task != "restore" and getattr(args, "face_model", None):
        raise UserError(f"--face-model is for 'codeformer restore' only: 'codeformer {task}' needs the CodeFormer "
                        f"{TASKS[task].variant} model (--model)")
    if args.face_model and args.model:
        raise UserError("--face-model replaces CodeFormer: give --model or --face-model, not both")


DEFAULT_VIDEO_TEMPORAL = 2.0   # docs/temporal.md: 217x fewer code changes, 34x less flicker on a still face


def video_temporal(args: argparse.Namespace, task: str) -> float:
    """--temporal as given, or its default: 2 frames where temporal codes apply (restore with CodeFormer,
    two-pass smoothing --smooth > 0, whole frames), else 0 (--smooth 0 keeps a video to one pass)."""
    if getattr(args, "temporal", None) is not None:
        return float(args.temporal)
    applies = task == "restore" and args.smooth > 0 and args.smooth_online == 0 and not args.has_aligned \
        and not getattr(args, "face_model", None)
    return DEFAULT_VIDEO_TEMPORAL if applies else 0.0


def settings_from_args(args: argparse.Namespace, task: str) -> Settings:
    """The one reading of a task command's Namespace: checked, grouped, frozen."""
    check_args(args, task)
    upscale = args.upscale if args.upscale is not None else (1.0 if args.has_aligned else 2.0)
    return Settings(
        task=task,
        files=FileSettings(input=args.input, output=args.output, suffix=args.suffix,
                           skip_existing=args.skip_existing, default_suffix=TASKS[task].suffix),
        models=ModelSettings(model=args.model, face_model=getattr(args, "face_model", None),
                             detector=args.detector, parse=args.parse, bg_upsampler=args.bg_upsampler,
                             bg_tile=args.bg_tile, face_upsample=args.face_upsample,
                             mask=getattr(args, "mask", None), paste_mask=args.paste_mask, device=args.device,
                             dtype=args.dtype,
                             models=getattr(args, "models", None), no_download=args.no_download),
        video=VideoSettings(fps=args.fps, smooth=args.smooth, smooth_online=args.smooth_online, crf=args.crf,
                            codec=args.video_codec, temporal=video_temporal(args, task)),
        detect=DetectSettings(threshold=args.detection_threshold, resolution=args.detection_resolution,
                              center_only=args.only_center_face, max_faces=args.max_faces or 0,
                              min_size=args.min_face_size, max_size=args.max_face_size),
        blend=BlendSettings(region_preset=args.region_preset, regions=args.regions,
                            keep_regions=args.keep_regions, mask_grow=args.mask_grow, mask_blur=args.mask_blur),
        fidelity=args.fidelity, upscale=upscale, has_aligned=args.has_aligned, color_match=args.color_match,
        draw_box=args.draw_box, batch_size=None if args.batch_size is None else max(1, args.batch_size),
        frames_per_chunk=max(1, args.frames_per_chunk), max_memory=args.max_memory, threads=args.threads,
        quiet=args.quiet, debug=args.debug)
