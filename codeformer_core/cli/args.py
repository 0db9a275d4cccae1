"""The command line's options: ``restore | colorize | inpaint`` and ``weights ...``."""
from __future__ import annotations

import argparse
import sys

from ..tasks import TASKS
from . import run, weights_cmd
from .console import EXIT_CODES_HELP, EXIT_USAGE, UserError

DETECTORS = ("retinaface_resnet50", "retinaface_mobilenet0.25")
TASK_HELP = {"restore": "restore faces (fidelity -w)", "colorize": "colorize gray or faded faces",
             "inpaint": "fill masked / white regions of faces"}


TEMPORAL_HELP = ("video, restore: codebook choices combined along each face's track over a Gaussian of FRAMES "
                 "(sigma) so the restored face does not flicker (the encoder runs twice per face, about 1.5x the "
                 "time); default 2 (0 with --smooth 0, --smooth-online or --face-model), 0 = off")

def _task_options(p: argparse.ArgumentParser, task: str) -> None:
    from ..models import DTYPE_CHOICES
    suffix = TASKS[task].suffix
    p.add_argument("input", help="an image, a video (.mp4 .mov .avi .mkv .webm) or a folder of them")
    p.add_argument("more_inputs", nargs="*", metavar="INPUT", help="more inputs (with --ray)")
    p.add_argument("-o", "--output", help="output file or folder (default: next to a file input as "
                   f"NAME{suffix}.EXT; for a folder, a sibling folder FOLDER{suffix})")
    if task == "restore":
        p.add_argument("-w", "--fidelity", type=float, default=0.5,
                       help="0 = strongest restoration (quality), 1 = closest to the input (fidelity); "
                            "default 0.5")
    else:
        p.set_defaults(fidelity=0.5)
    p.set_defaults(mask=None, face_model=None)
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
    g.add_argument("--max-faces", type=int, default=0,
                   help="at most this many faces per frame, largest first (0 = all)")
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
    g.add_argument("--region-preset", default="face", metavar="PRESET",
                   help="with --parse: which face regions take the restored pixels: face (the original's: skin, "
                        "nose, glasses, eyes, brows, ears, mouth, lips, hair), face_keep_eyes, face_keep_mouth, "
                        "skin_only, face_no_hair, face_and_hair (docs/faces.md)")
    g.add_argument("--regions", default=None, metavar="NAMES",
                   help="with --parse: the regions restored instead of the preset, comma-separated, from skin, "
                        "brows, eyes, glasses, ears, nose, mouth, lips, hair, hat, neck, cloth")
    g.add_argument("--keep-regions", default=None, metavar="NAMES",
                   help="with --parse: regions whose original pixels stay (e.g. eyes,mouth)")
    g.add_argument("--mask-grow", type=int, default=0, metavar="PX",
                   help="grow the paste mask by PX pixels of the 512 face crop (negative shrinks; default 0)")
    g.add_argument("--mask-blur", type=int, default=0, metavar="PX",
                   help="soften the paste mask's edge by a blur of PX pixels of the 512 face crop (default 0)")
    g.add_argument("--paste-mask", default=None, metavar="FILE",
                   help="restored pixels are pasted only where this image (the input's size; white = paste, "
                        "grey blends) is set; one mask for every frame of a video")
    g.add_argument("--min-face-size", type=int, default=0, metavar="PX",
                   help="leave faces whose box's short side is under PX pixels alone (0 = no limit)")
    g.add_argument("--max-face-size", type=int, default=0, metavar="PX",
                   help="leave faces whose box's short side is over PX pixels alone (0 = no limit)")
    g = p.add_argument_group("background")
    g.add_argument("--bg-upsampler", metavar="PATH",
                   help="upscaler file spandrel can load (e.g. RealESRGAN_x2plus.pth) or a registry name "
                        "(realesrgan_x2plus); used for the background when -s > 1")
    g.add_argument("--bg-tile", type=int, default=400, metavar="PX",
                   help="tile size for the upsampler (default 400, 0 = whole frame)")
    g.add_argument("--face-upsample", action="store_true",
                   help="also upsample the restored faces with the background upsampler before pasting")
    g = p.add_argument_group("output and video")
    g.add_argument("--suffix", default=None, help=f"added to output names (default {suffix} "
                   "for a single file, none inside an output folder)")
    g.add_argument("--skip-existing", action="store_true", help="leave inputs whose output exists")
    g.add_argument("--fps", type=float, default=None,
                   help="output video frame rate (default: the input's); frames are dropped or repeated "
                        "so the duration and audio sync are kept")
    g.add_argument("--smooth", type=float, default=2.0, metavar="FRAMES",
                   help="video: face landmarks smoothed over time against flicker, a Gaussian of FRAMES (sigma) "
                        "centred on each frame along each face's track, so it does not lag behind moving faces "
                        "(faces are detected in a first pass over the video); default 2, 0 = off")
    g.add_argument("--smooth-online", type=float, default=0.0, metavar="S",
                   help="video: one-pass exponential smoothing 0..1 instead of --smooth (lags behind moving "
                        "faces by S/(1-S) frames; for when the video should be read once); default 0 = off")
    g.add_argument("--temporal", type=float, default=None, metavar="FRAMES", help=TEMPORAL_HELP)
    g.add_argument("--crf", type=int, default=None, metavar="Q",
                   help="video quality (x264 default 18, VP9 32; lower = better)")
    g.add_argument("--video-codec", default=None,
                   help="encoder (default libx264; libvpx-vp9 for .webm; mpeg4 for .avi)")
    g = p.add_argument_group("performance and models")
    g.add_argument("--batch-size", type=int, default=None,
                   help="faces per network batch (default: 1 on CPU, where it is fastest; 8 on a GPU)")
    g.add_argument("--frames-per-chunk", type=int, default=8,
                   help="video frames decoded and restored together (faces batched across them; default 8, "
                        "fewer when --max-memory asks for it)")
    g.add_argument("--max-memory", type=_memory_size, default=None, metavar="SIZE",
                   help="working memory besides the loaded networks, e.g. 1.5G or 800M (default 2G): sets the "
                        "frames and faces processed together and the height of the bands large outputs are "
                        "made in; free memory is never looked at")
    g.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    g.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="network precision (auto: fp16 on CUDA; on CPU bf16 for CodeFormer where the CPU runs bf16 "
                        "natively, else fp32; CodeFormer in fp16/bf16 keeps its encoder in fp32, so the codes "
                        "are kept: docs/precision.md)")
    g.add_argument("--model", metavar="PATH", help="CodeFormer checkpoint to use instead of the registry file "
                   "(.pth or .safetensors)")
    if task == "restore":
        g.add_argument("--face-model", metavar="PATH",
                       help="restore faces with another face model instead of CodeFormer: GFPGAN 1.2-1.4, "
                            "RestoreFormer (and CodeFormer with spandrel-extra-arches installed) through spandrel, "
                            "or an ONNX file (GPEN-BFR-256..2048, GFPGAN, CodeFormer .onnx; needs onnx and "
                            "onnxruntime, --dtype does not apply, TensorRT engines cached beside the file in "
                            "NAME.trt_cache: docs/onnx.md). -w applies to CodeFormer and to ONNX files with a "
                            "fidelity input only")
    else:   # taken only to say why not (argparse would say just "unrecognized arguments")
        g.add_argument("--face-model", metavar="PATH", help=argparse.SUPPRESS)
    _models_option(g)
    g.add_argument("--no-download", action="store_true", help="never download; fail if a weight file is missing")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="PyTorch CPU threads (default: one per core). On a machine other programs keep busy, one "
                        "more than the cores keeps a busy core from holding every step back (docs/models.md)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info messages")
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    _cluster_options(p.add_argument_group("cluster (pip install comfyui-codeformer[cluster]; see docs/cluster.md)"))


def _cluster_options(g) -> None:
    g.add_argument("--ray", action="store_true", help="run on Ray: an actor pool with the model loaded once "
                   "per worker (a one-node Ray in this process unless --ray-address)")
    g.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (e.g. 10.0.0.1:6379; implies --ray); "
                   "inputs, outputs and --models must be on a filesystem every node sees")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="actors (default: GPUs / --gpus-per-worker, else CPUs / --cpus-per-worker)")
    g.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                   help="GPUs per actor (default 1 when the cluster has GPUs, else 0; 0.5 = two per GPU)")
    g.add_argument("--cpus-per-worker", type=float, default=1, metavar="C",
                   help="CPUs per actor (default 1; also its PyTorch threads on CPU)")
    g.add_argument("--retries", type=int, default=3, metavar="N",
                   help="times a file is retried when its worker dies (default 3)")
    g.add_argument("-r", "--recursive", action="store_true", help="walk subfolders (with --ray)")
    g.add_argument("--files-from", metavar="LIST", help="process the files LIST names (one a line, relative to "
                   "the input folder; with --ray)")
    g.add_argument("--manifest", metavar="FILE", help="results as JSON lines (with --ray; default "
                   "OUTPUT/codeformer-manifest.jsonl)")


def _run_task(a, task: str) -> int:
    if a.ray or a.ray_address:
        if a.threads is not None:
            raise UserError("--threads is for a local run; with --ray each actor's threads are --cpus-per-worker")
        from .cluster import run_cluster  # the only import of the Ray path
        return run_cluster(a, task)
    ray_only = [o for o, v in (("several inputs", a.more_inputs), ("--recursive", a.recursive),
                               ("--files-from", a.files_from), ("--manifest", a.manifest)) if v]
    if ray_only:
        raise UserError(f"{', '.join(ray_only)}: only with --ray (without it, give one image, video or folder)")
    return run.run_task(a, task)


def _memory_size(text: str) -> int:
    from ..chunks import parse_memory
    try:
        return parse_memory(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _models_option(p) -> None:
    p.add_argument("--models", metavar="DIR", default=None,
                   help="models folder (ComfyUI layout: facerestore_models/, facedetection/, upscale_models/); "
                        "default: $CODEFORMER_MODELS_DIR, else ComfyUI's models/ when this pack is inside "
                        "ComfyUI, else the per-user cache folder")


def _weights_parser(sub) -> None:
    w = sub.add_parser("weights", help="list, download, verify, convert or export weight files",
                       description="Weight files from the registry (weights/registry.json).")
    wsub = w.add_subparsers(dest="weights_command", metavar="ACTION")
    p = wsub.add_parser("list", help="registry entries and whether each is present")
    _models_option(p)
    p.set_defaults(func=weights_cmd.cmd_list)
    p = wsub.add_parser("download", help="download NAME ... (or 'all'), verified, atomically")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--force", action="store_true", help="download even if a valid file is present")
    _models_option(p)
    p.set_defaults(func=weights_cmd.cmd_download)
    p = wsub.add_parser("verify", help="check files against the registry's size/sha256 "
                        "(default: every registry file in the models folder)")
    p.add_argument("paths", nargs="*", metavar="PATH")
    _models_option(p)
    p.set_defaults(func=weights_cmd.cmd_verify)
    p = wsub.add_parser("convert", help="convert a CodeFormer checkpoint to .safetensors")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--to", default="safetensors", choices=("safetensors",))
    p.add_argument("--fp16", action="store_true", help="store floating-point tensors in half precision")
    p.add_argument("-o", "--output", help="output file (default: next to PATH, .safetensors)")
    p.set_defaults(func=weights_cmd.cmd_convert)
    p = wsub.add_parser("export", help="export a CodeFormer checkpoint to ONNX (inputs input [B,3,512,512] and "
                        "w [B], dynamic batch; needs the onnx extra to run; docs/onnx.md)")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--onnx", required=True, metavar="OUT", help="the .onnx file to write")
    p.add_argument("--fp16", action="store_true",
                   help="decoder convolutions in fp16, encoder and transformer float32 (the codes of float32; "
                        "docs/precision.md); inputs and outputs stay float32; needs the onnx package")
    p.set_defaults(func=weights_cmd.cmd_export)
    w.set_defaults(func=lambda a: _usage(w))


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
    for task in TASKS:
        p = sub.add_parser(task, help=TASK_HELP[task], description=TASK_HELP[task].capitalize() + " in an image, "
                           "a folder or a video.", formatter_class=fmt, epilog=EXIT_CODES_HELP)
        _task_options(p, task)
        p.set_defaults(func=lambda a, t=task: _run_task(a, t))
    _weights_parser(sub)
    return parser


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_usage(sys.stderr)
    print(f"{p.prog}: error: choose an action", file=sys.stderr)
    return EXIT_USAGE
