"""The networks a task command loads once, and the one call of ``pipeline.restore_images`` that
every image, video chunk and cluster worker goes through."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from ..errors import MissingDependencyError, NotEnoughMemoryError, WrongVariantError, first_line
from ..tasks import TASKS
from .console import Out, UserError
from .settings import ModelSettings, Settings
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


# -- the loaded networks ------------------------------------------------------------------------
@dataclass(frozen=True)
class Networks:
    """What a run loads once: the face model, and unless --has-aligned the detector (a BoxRecorder
    with --draw-box), the ParseNet (--parse), the background upscaler (--bg-upsampler, also the
    face upscaler with --face-upsample); the inpainting mask file as read (--mask)."""
    model: object
    detector: object = None
    parser: object = None
    background_upscaler: Optional[Callable] = None
    face_upscaler: Optional[Callable] = None
    mask: object = None   # [H,W] float32 numpy, 1 = hole
    paste_mask: object = None   # [H,W] float32 numpy, 0..1: where restored pixels go (--paste-mask)


@dataclass(frozen=True)
class Session:
    """A task command ready to process files: its settings, its console and its networks."""
    settings: Settings
    out: Out
    nets: Networks


def require_task_model(model, task: str, checkpoint: Path) -> None:
    """The pipeline's variant check, worded with the command to use instead."""
    from ..pipeline import check_variant
    try:
        check_variant(model, task)
    except WrongVariantError as e:
        other = next((t.name for t in TASKS.values() if t.variant == e.have), None)
        use = f"use 'codeformer {other}' for it, or " if other else ""
        raise WrongVariantError(e.have, e.want, f"'codeformer {task}' needs the {e.want} model, but "
                                f"{checkpoint.name} is the {e.have} variant; {use}give a {e.want} "
                                f"checkpoint with --model") from None


def weight_paths(models: ModelSettings, task: str, has_aligned: bool, out: Out) -> dict:
    """The weight files a run loads, fetched first when missing: ``model``, and unless
    --has-aligned ``detector``, ``parser`` (--parse) and ``bg`` (--bg-upsampler)."""
    if models.face_model:
        paths = {"model": file_or_weight(models.face_model, models, out, "--face-model")}
    elif models.model:
        paths = {"model": file_or_weight(models.model, models, out, "--model")}
    else:
        paths = {"model": ensure(TASKS[task].weight, models, out)}
    if not has_aligned:
        paths["detector"] = ensure(models.detector, models, out)
        if models.parse:
            paths["parser"] = ensure("parsenet", models, out)
        if models.bg_upsampler:
            paths["bg"] = file_or_weight(models.bg_upsampler, models, out, "--bg-upsampler")
    return paths


def open_session(settings: Settings, out: Out) -> Session:
    """Load the networks once per run (fetching missing registry files first)."""
    import torch
    from ..faces import detect
    from ..models import loader
    m = settings.models
    try:
        device = loader.resolve_device(m.device)
    except RuntimeError as e:
        raise UserError(f"--device {m.device}: {first_line(e)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {m.device}: CUDA is not available in this PyTorch build")
    try:  # CodeFormer's "auto" is bf16 on a CPU with native bf16 (codes kept); other networks keep resolve_dtype
        dtype = (loader.resolve_dtype if m.face_model else loader.codeformer_dtype)(m.dtype, device)
    except ValueError as e:
        raise UserError(str(e)) from None
    paths = weight_paths(m, settings.task, settings.has_aligned, out)
    ckpt = paths["model"]
    onnx = bool(m.face_model) and is_onnx_path(ckpt)
    if onnx:
        if m.dtype != "auto":
            out.warn(f"--dtype {m.dtype} does not apply to {ckpt.name}: an ONNX file runs in the precision it "
                     f"was exported in")
        model = load_onnx_face_model_for_cli(ckpt, device, out)
    elif m.face_model:
        out.info(f"loading {ckpt.name} on {device} ({str(dtype).replace('torch.', '')})")
        model = load_spandrel_face_model(ckpt, device, dtype)
    else:
        out.info(f"loading {ckpt.name} on {device} ({str(dtype).replace('torch.', '')})")
        model = loader.load_model(ckpt, device=device, dtype=dtype)
        require_task_model(model, settings.task, ckpt)
    nets = Networks(model=model)
    if not settings.has_aligned:
        detector = detect.load_detector(paths["detector"], device=device)
        parser = bg = None
        if m.parse:
            from ..models.loader import load_parsenet
            parser = load_parsenet(paths["parser"], device=device)
        if m.bg_upsampler:
            from ..io.upscale import load_upscaler
            try:
                bg = load_upscaler(paths["bg"], device, half=dtype == torch.float16, tile=m.bg_tile)
            except MissingDependencyError:
                raise UserError("--bg-upsampler needs spandrel: pip install spandrel") from None
        nets = Networks(model=model, detector=BoxRecorder(detector) if settings.draw_box else detector,
                        parser=parser, background_upscaler=bg, face_upscaler=bg if m.face_upsample else None)
    if m.mask:
        from dataclasses import replace
        from ..io.images import read_mask
        nets = replace(nets, mask=read_mask(m.mask))
    if m.paste_mask:
        from dataclasses import replace
        from ..io.images import read_mask
        nets = replace(nets, paste_mask=read_mask(m.paste_mask, soft=True))
    return Session(settings, out, nets)


def is_onnx_path(path: Path) -> bool:
    from ..models.onnx_face import is_onnx_file   # the module imports onnx only when a file is opened
    return is_onnx_file(path)


def load_onnx_face_model_for_cli(path: Path, device, out: Out):
    """--face-model FILE.onnx: run with ONNX Runtime on the providers --device decides (TensorRT
    engines cached in <name>.trt_cache beside the file); errors worded for the option."""
    from ..errors import CheckpointError, NotAFaceModelError
    from ..models.onnx_face import load_onnx_face_model
    try:
        model = load_onnx_face_model(path, device)
    except MissingDependencyError as e:
        raise UserError(f"--face-model {path.name}: {e}") from None
    except (CheckpointError, NotAFaceModelError) as e:
        raise UserError(f"--face-model: {e}") from None
    fid = "uses -w" if model.has_fidelity else "has no fidelity input: -w is ignored"
    cache = f"; TensorRT engines in {model.trt_cache_dir}" if model.trt_cache_dir is not None else ""
    out.info(f"loaded {path.name} with ONNX Runtime ({model.providers[0]}{cache}): {model.crop_size} px crops, "
             f"{fid}")
    return model


def load_spandrel_face_model(path: Path, device, dtype):
    """--face-model: a spandrel face model (GFPGAN, RestoreFormer ...), errors worded for the option."""
    from ..errors import NotAFaceModelError
    from ..models.face_model import load_face_model
    try:
        return load_face_model(path, device, dtype)
    except MissingDependencyError:
        raise UserError("--face-model needs spandrel: pip install spandrel") from None
    except NotAFaceModelError as e:
        hint = "; use it with --bg-upsampler" if e.purpose == "SR" else ""
        raise NotAFaceModelError(e.name, e.architecture, e.purpose, e.scale, f"--face-model: {e}{hint}") from None


# -- the pipeline call --------------------------------------------------------------------------
def chunk_frames_for(settings: Settings, height: int, width: int) -> int:
    """Frames restored together: --frames-per-chunk, or fewer when --max-memory asks for it."""
    from ..pipeline import auto_frames_per_chunk
    return min(settings.frames_per_chunk,
               auto_frames_per_chunk(height, width, None, settings.upscale, budget=settings.max_memory,
                                     output_whole=False))


def restore_frames(session: Session, frames, *, sink, smoother=None, progress=None, detections=None, codes=None):
    """One call of the shared pipeline; returns (RestoreResult, boxes per frame or None).
    ``detections``: the frames' faces from the first pass of a video (zero-lag smoothing).
    ``sink``: takes the output band by band (``pipeline.restore_images``). ``codes``: the frames'
    temporal codes (``pipeline.TrackCodes``, --temporal)."""
    import torch
    from .. import pipeline
    s, nets = session.settings, session.nets
    res = pipeline.restore_images(
        frames, nets.model, nets.detector, w=s.fidelity, task=s.task,
        inpaint_masks=None if nets.mask is None else torch.from_numpy(nets.mask)[None],
        has_aligned=s.has_aligned, smoother=smoother, detections=detections, detect=s.detect.options(),
        paste=pipeline.PasteSettings(s.blend.paste_options(s.upscale, s.color_match), parser=nets.parser,
                                     background_upscaler=nets.background_upscaler,
                                     face_upscaler=nets.face_upscaler,
                                     frame_masks=None if nets.paste_mask is None else
                                     torch.from_numpy(nets.paste_mask)[None]),
        run=pipeline.RunOptions(frames_per_chunk=chunk_frames_for(s, *pipeline.image_batch(frames).shape[1:3]),
                                batch_size=s.batch_size, progress=progress, memory_budget=s.max_memory),
        sink=sink, codes=codes)
    boxes = nets.detector.take() if isinstance(nets.detector, BoxRecorder) else None
    if detections is not None and s.draw_box:
        boxes = boxes_per_frame(detections)
    return res, boxes


MEMORY_HINT = "free some memory (close other programs) or lower -s"


def memory_error(e: NotEnoughMemoryError, src: Path, what: str) -> NotEnoughMemoryError:
    """The pipeline's out-of-memory error, worded for the command line: file, item, what to do."""
    return NotEnoughMemoryError(what, e.item, f"{src.name}: not enough memory for {what}, even on its own; "
                                              f"{MEMORY_HINT}")
