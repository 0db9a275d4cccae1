"""Benchmark: peak resident memory of one large photo through the pipeline, as the command line runs it.

    python -m codeformer_core.dev.bench_memory [--size 6000x4000] [-s 2] [--faces 4] [--face-size 800]
                                               [--max-memory 2G] [--models DIR] [--cli IMAGE ...]

Each measurement runs in a fresh interpreter (a child process) that reports its own peak resident set
(``VmHWM`` of /proc/self/status at exit; ``ru_maxrss`` would carry over the parent's peak across
exec): models, PyTorch and the allocator's retained
memory included.

Default (pipeline): the child sets the command line's allocator policy (cli/memory.py), loads
CodeFormer from ``--models`` (synthetic weights are written to a temporary folder when none is
given), makes a SIZE photo with FACES faces FACE_SIZE pixels wide at known places (given to
``restore_images`` as detections: no detector, so the faces are real work whatever the weights),
and writes the output band by band into the saved pixel format, as ``codeformer restore`` does.

``--cli IMAGE ...``: the ``codeformer restore`` command itself on each file (``-s``, ``--max-memory``,
``--models``; other options after ``--``), faces being whatever the detector finds.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = "--child"


# Runs a module as ``python -m`` would, then reports the process's own peak resident set.
WRAP = ("import re, runpy, sys\n"
        "sys.argv = sys.argv[1:]\n"
        "try:\n"
        "    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
        "finally:\n"
        "    print('PEAK_RSS_KB', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1),\n"
        "          file=sys.stderr)\n")


def _peak_of(module: str, *args: str) -> tuple:
    """(exit code, peak RSS bytes, seconds, output) of ``python -m module args`` in a child process."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", WRAP, module, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    lines = (r.stdout + r.stderr).splitlines()
    peak = next((int(line.split()[1]) * 1024 for line in lines if line.startswith("PEAK_RSS_KB")), None)
    return r.returncode, peak, seconds, "\n".join(line for line in lines if not line.startswith("PEAK_RSS_KB"))


def _models(folder) -> Path:
    """A models folder with codeformer.pth (synthetic weights when ``folder`` is None)."""
    if folder:
        return Path(folder)
    import torch
    from ..models.registry import architecture, contract
    from .synthetic import synth_state_dict
    root = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    (root / "facerestore_models").mkdir()
    torch.save({"params_ema": synth_state_dict(contract(architecture("codeformer", "restoration")).items())},
               root / "facerestore_models" / "codeformer.pth")
    return root


def child(args) -> int:
    """One photo through restore_images with a band sink, in this (fresh) process."""
    from ..cli.memory import keep_freed_memory_for_reuse
    keep_freed_memory_for_reuse()                     # as the codeformer command does at start
    import numpy as np
    import torch
    from .. import pipeline
    from ..faces.align import FFHQ_TEMPLATE_512
    from ..faces.detect import Detections
    from ..faces.paste import PasteOptions
    from ..models.loader import load_model
    w, h = (int(v) for v in args.size.split("x"))
    model = load_model(Path(args.models) / "facerestore_models" / "codeformer.pth", device="cpu")
    y, x = np.mgrid[0:h, 0:w]
    photo = np.dstack([(x * 255 // w), (y * 255 // h), ((x + y) % 256)]).astype(np.uint8)
    del x, y
    cols = max(1, int(np.ceil(np.sqrt(args.faces))))
    points = []
    for i in range(args.faces):   # faces on a grid, each FACE_SIZE wide (the template's crop)
        cx = (i % cols + 0.5) * w / cols - args.face_size / 2
        cy = (i // cols + 0.5) * h / max(1, -(-args.faces // cols)) - args.face_size / 2
        points.append(FFHQ_TEMPLATE_512 * (args.face_size / 512) + torch.tensor([cx, cy]))
    lm = torch.stack(points) if points else torch.zeros(0, 5, 2)
    boxes = torch.cat([lm.amin(1), lm.amax(1)], 1)
    dets = Detections(boxes, torch.ones(len(points)), lm, torch.zeros(len(points), dtype=torch.long), 1, (h, w))
    out = np.empty((int(h * args.upscale), int(w * args.upscale), 3), np.uint8)

    def sink(_first, row0, rgb, _mask):
        out[row0:row0 + rgb.shape[1]] = (rgb[0].numpy() * 255 + 0.5).astype(np.uint8)

    t0 = time.perf_counter()
    res = pipeline.restore_images(photo, model, None, detections=dets, sink=sink,
                                  paste=pipeline.PasteSettings(PasteOptions(upscale=args.upscale)),
                                  run=pipeline.RunOptions(batch_size=4, memory_budget=args.max_memory))
    print(f"faces {res.total_faces}, pipeline {time.perf_counter() - t0:.1f} s")
    return 0


def _gib(n) -> str:
    return "?" if n is None else f"{n / 2 ** 30:.2f} GiB ({n / 1e9:.2f} GB)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="6000x4000", help="WxH of the photo (default 6000x4000)")
    ap.add_argument("-s", "--upscale", type=float, default=2.0, help="output scale (default 2)")
    ap.add_argument("--faces", type=int, default=4, help="faces in the photo (default 4)")
    ap.add_argument("--face-size", type=int, default=800, help="width of each face's crop region in pixels")
    ap.add_argument("--max-memory", default="2G", help="the memory budget (default 2G)")
    ap.add_argument("--models", default=None, help="models folder with facerestore_models/codeformer.pth "
                    "(default: synthetic weights written to a temporary folder)")
    ap.add_argument("--cli", nargs="+", metavar="IMAGE", help="run `codeformer restore` on these files instead")
    ap.add_argument(CHILD, action="store_true", help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args(argv)
    from ..chunks import parse_memory
    if args.child:
        args.max_memory = parse_memory(args.max_memory)
        return child(args)
    models = _models(args.models)
    if args.cli:
        for image in args.cli:
            out = Path(tempfile.mkdtemp(prefix="bench_memory_out_")) / Path(image).name
            rc, peak, seconds, text = _peak_of(
                "codeformer_core", "restore", image, "-o", str(out), "-s", str(args.upscale), "--max-memory",
                args.max_memory, "--models", str(models), "--no-download", "-q", *[a for a in rest if a != "--"])
            print(f"codeformer restore {Path(image).name} -s {args.upscale:g} --max-memory {args.max_memory}: "
                  f"peak RSS {_gib(peak)}, {seconds:.1f} s, exit {rc}")
            if rc:
                print(text.strip().splitlines()[-1] if text.strip() else "")
        return 0
    rc, peak, seconds, text = _peak_of(
        "codeformer_core.dev.bench_memory", CHILD, "--size", args.size, "-s", str(args.upscale), "--faces",
        str(args.faces), "--face-size", str(args.face_size), "--max-memory", args.max_memory, "--models", str(models))
    print(text.strip())
    print(f"{args.size} photo, {args.faces} faces of {args.face_size} px, -s {args.upscale:g}, --max-memory "
          f"{args.max_memory}: peak RSS {_gib(peak)}, {seconds:.1f} s in all (start-up and loading included)"
          + ("" if rc == 0 else f", exit {rc}"))
    return rc


if __name__ == "__main__":
    sys.exit(main())
