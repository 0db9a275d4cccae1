"""Benchmark: ``python -m codeformer_core.dev.bench_cluster [--images 16] [--size 96] [--faces none|one]
[--workers 1 2] [--models DIR] [--input DIR]``.

Files/s of ``codeformer restore FOLDER -o OUT --ray --workers N`` on a one-node Ray started once in
this process (``num_cpus`` = the largest N, 1 CPU and 1 PyTorch thread per worker), for each N in
``--workers``. Each figure is a whole run of the command as a user sees it: actor start and model
load (once per actor) included. Also printed: the time one process takes to load the networks, the
mean time a worker spends per file (decode, detect, restore, paste, encode, write: from the
manifest), and the load average before and after each run (the machine may be shared: compare the
ratio of the runs, measured back to back, rather than the absolute numbers).

Without ``--models`` the weights are synthetic (the golden formula, official shapes) in a temporary
folder: speed does not depend on the values. ``--faces none`` sets the detection threshold to 1.0
(detection runs, finds nothing: the cost without faces); ``--faces one`` restores one face per image
(the centre face at threshold 0.3; with synthetic weights the detector then always finds one).
``--input DIR`` benchmarks your own images instead of the generated ones.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def synthetic_models(root: Path) -> Path:
    """codeformer.pth and the MobileNet detector with synthetic weights, in the ComfyUI layout."""
    import torch
    from ..models.registry import architecture, contract
    from ..models.retinaface import RetinaFace
    from .synthetic import synth_state_dict
    (root / "facerestore_models").mkdir(parents=True)
    (root / "facedetection").mkdir()
    torch.save({"params_ema": synth_state_dict(contract(architecture("codeformer", "restoration")).items())},
               root / "facerestore_models" / "codeformer.pth")
    shapes = [(k, tuple(v.shape)) for k, v in RetinaFace("mobilenet0.25").state_dict().items()]
    torch.save(synth_state_dict(shapes, face=True), root / "facedetection" / "detection_mobilenet0.25_Final.pth")
    return root


def make_images(folder: Path, n: int, size: int) -> Path:
    """``n`` PNG images of ``size`` px: smooth gradients with a little noise, all different."""
    from ..io.images import write_image
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / max(1, size - 1)
    for i in range(n):
        rgb = np.stack([x, y, (x + y) / 2], -1)[..., np.roll(np.arange(3), i)]
        rgb = np.clip(rgb * 220 + rng.normal(0, 6, rgb.shape) + 10 * (i % 5), 0, 255).astype(np.uint8)
        write_image(folder / f"img{i:03d}.png", rgb)
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--faces", choices=("none", "one"), default="none")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", help="models folder (default: synthetic weights in a temporary folder)")
    ap.add_argument("--input", help="a folder of your own images (default: --images generated ones)")
    a = ap.parse_args(argv)

    import ray
    from ..cli import main as cli_main
    from ..cli.args import build_parser
    from ..cli.console import Out
    from ..cli.engine import open_session
    from ..cli.settings import settings_from_args

    with tempfile.TemporaryDirectory(prefix="bench_cluster_") as tmp:
        tmp = Path(tmp)
        models = Path(a.models) if a.models else synthetic_models(tmp / "models")
        src = Path(a.input) if a.input else make_images(tmp / "in", a.images, a.size)
        n_files = sum(1 for p in src.iterdir() if p.is_file() and not p.name.startswith("."))
        faces = (["--detection-threshold", "1.0"] if a.faces == "none" else
                 ["--only-center-face", "--detection-threshold", "0.3", "--detection-resolution", "0"])
        common = ["-s", "1", *faces, "--models", str(models), "--detector", "retinaface_mobilenet0.25",
                  "--no-download", "-q"]

        args = build_parser().parse_args(["restore", str(src), *common, "--device", "cpu"])
        t0 = time.perf_counter()
        open_session(settings_from_args(args, "restore"), Out(quiet=True))
        print(f"model load in one process: {time.perf_counter() - t0:.1f} s")

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=max(a.workers), include_dashboard=False, object_store_memory=256 * 2**20,
                 logging_level="error", log_to_driver=False)
        results = {}
        try:
            for n in a.workers:
                out = tmp / f"out{n}"
                before = load_average()
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):  # one result line per file
                    rc = cli_main(["restore", str(src), "-o", str(out), *common, "--ray", "--workers", str(n)])
                wall = time.perf_counter() - t0
                rows = [json.loads(line) for line in (out / "codeformer-manifest.jsonl").read_text().splitlines()]
                ok = [r for r in rows if r["status"] == "ok"]
                per_file = sum(r["seconds"] for r in ok) / max(1, len(ok))
                n_faces = sum(r["faces"] for r in ok)
                results[n] = n_files / wall
                print(f"workers={n}: exit {rc}, {len(ok)}/{n_files} files, {n_faces} faces in {wall:.1f} s -> "
                      f"{n_files / wall:.3f} files/s ({n_faces / wall:.3f} faces/s); worker time per file "
                      f"{per_file:.2f} s; load average {before} -> {load_average()}")
        finally:
            ray.shutdown()
    if len(results) > 1:
        base = min(results)
        for n in sorted(results):
            if n != base:
                print(f"speed-up {base} -> {n} workers (same run): {results[n] / results[base]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
