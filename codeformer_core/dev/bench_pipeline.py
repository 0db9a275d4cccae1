"""Benchmark: the pipeline stage by stage, beside a classic per-face flow, in the same run.

    python -m codeformer_core.dev.bench_pipeline [--device cpu] [--cases 512x1,512x4,1024x1,1024x4]
                                                 [--busy] [--no-classic] [--dtype fp32]

Stages (ours): start-up (a fresh interpreter importing the pipeline), load (CodeFormer, RetinaFace
ResNet-50, ParseNet from synthetic weights), then per case detect, align, restore, parse, paste
(``paste_bands`` with the parse masks), their sum, and ``restore_images`` called end to end. The
forward alone (the same crops through the model in the default network batches) is the yardstick
for "pipeline per face"; the line under each case also gives the stage sum without the parse mask
(ParseNet is a second 512 px network, about half a CodeFormer forward, run by the original's
default paste-back too).

Classic flow (the original's order of work, written here): detect the frame with the reference
networks (BatchNorm not folded, naive CodeFormer options), then for each face: OpenCV align ->
restore (batch 1) -> parse (batch 1) -> OpenCV paste with the parse mask (``bench_paste``'s
per-face helpers).

Cases: ``SIZExFACES``; one face is tests/data/astronaut.png resized to SIZE, four faces the same
image tiled 2x2. Synthetic RetinaFace weights score faces around 0.7-0.77 (threshold 0.7, capped
at FACES per frame), so detections are not real faces: the work is. ``--busy`` then starts a
process that keeps one core busy and runs the first case again. Each figure is printed with the
load average (shared machines): quote same-run ratios.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..faces.align import align_faces
from ..faces.detect import FaceDetector
from ..faces.detect import DetectOptions
from ..faces.masks import parse_labels_to_masks
from ..faces.paste import paste_bands
from ..models.loader import load_model, load_parsenet, load_retinaface, resolve_device
from ..models.parsenet import parse_faces
from ..models.registry import architecture, contract, load_network
from ..pipeline import PasteSettings, default_network_batch, parse_masks_for, restore_images, run_network
from .bench_model import NAIVE, peak_mib, peak_reset, sync
from .bench_paste import cv2_align_face, cv2_paste_face
from .golden import DATA, FACE_DIR, face_state_dict
from .synthetic import synth_state_dict

REPO = Path(__file__).resolve().parents[2]
FACE_DATA = FACE_DIR
ASTRONAUT = DATA / "astronaut.png"
THRESHOLD = 0.7
STAGES = ("detect", "align", "restore", "parse", "paste")


def load_avg() -> str:
    with open("/proc/loadavg") as f:
        return "load " + " ".join(f.read().split()[:3])


def make_frame(size: int, faces: int) -> np.ndarray:
    """HxWx3 uint8 RGB: the astronaut at ``size`` (1 face) or tiled 2x2 (4 faces)."""
    import cv2
    img = cv2.imread(str(ASTRONAUT), cv2.IMREAD_COLOR)[:, :, ::-1]
    tiles = {1: 1, 4: 2}[faces]
    tile = cv2.resize(img, (size // tiles, size // tiles), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(np.tile(tile, (tiles, tiles, 1)))


def to_tensor(frame: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(frame).permute(2, 0, 1)[None].float().div(255).to(device)


def face_weights(name: str):
    return face_state_dict(name)


class Timer:
    def __init__(self, device: torch.device):
        self.device, self.times = device, {}

    @contextmanager
    def __call__(self, name: str):
        sync(self.device)
        t0 = time.perf_counter()
        yield
        sync(self.device)
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0


def startup_seconds() -> float:
    """A fresh interpreter importing what a run imports (pipeline, loaders, detector)."""
    code = ("import codeformer_core.pipeline, codeformer_core.models.loader, codeformer_core.faces.detect, "
            "codeformer_core.models.parsenet")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(REPO))
    return time.perf_counter() - t0


def run_ours(nets: Dict, frame: torch.Tensor, faces: int, w: float,
             batch_size: Optional[int] = None) -> Dict[str, float]:
    """The public steps one after another, each synchronised: seconds per stage, and ``faces``."""
    t = Timer(frame.device)
    with t("detect"):
        dets = nets["detector"].detect(frame, conf_threshold=THRESHOLD, max_faces=faces)
    with t("align"):
        batch = align_faces(frame, dets.landmarks, dets.frame_index, boxes=dets.boxes, scores=dets.scores)
    with t("restore"):
        restored = run_network(nets["model"], batch.crops, w=w, batch_size=batch_size)  # None: the default
    with t("parse"):
        masks = parse_masks_for(nets["parser"], restored)
    with t("paste"):
        for _ in paste_bands(frame, batch.with_crops(restored), parse_masks=masks):
            pass
    t.times["faces"] = len(batch)
    return t.times


def run_classic(nets: Dict, frame_np: np.ndarray, frame: torch.Tensor, faces: int, w: float) -> Dict[str, float]:
    """Detect, then face by face: OpenCV align -> restore -> parse -> OpenCV paste."""
    t = Timer(frame.device)
    with t("detect"):
        dets = nets["classic_detector"].detect(frame, conf_threshold=THRESHOLD, max_faces=faces)
    result = frame_np.astype(np.float32)
    for lm in dets.landmarks.cpu().numpy():
        with t("align"):
            fit, crop = cv2_align_face(frame_np, lm)
        with t("restore"):
            x = torch.from_numpy(crop).permute(2, 0, 1)[None].float().div(255).to(frame.device)
            y = nets["classic_model"](x * 2 - 1, w=w).clamp(-1, 1).add(1).div(2)
            face = (y[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.float32)
        with t("parse"):
            labels = parse_faces(nets["classic_parser"], y)
            mask = parse_labels_to_masks(labels)[0, 0].cpu().numpy()
        with t("paste"):
            result = cv2_paste_face(result, face, fit, parse_mask=mask)
    t.times["faces"] = len(dets)
    return t.times


def forward_alone(model, crops: torch.Tensor, w: float) -> float:
    sync(crops.device)
    t0 = time.perf_counter()
    step = default_network_batch(crops.device)
    with torch.inference_mode():
        for i in range(0, len(crops), step):
            model(crops[i:i + step] * 2 - 1, w=w)
    sync(crops.device)
    return time.perf_counter() - t0


def end_to_end(nets: Dict, frame: torch.Tensor, faces: int, w: float) -> float:
    t0 = time.perf_counter()
    restore_images(frame.permute(0, 2, 3, 1), nets["model"], nets["detector"], w=w,
                   detect=DetectOptions(conf_threshold=THRESHOLD, max_faces=faces),
                   paste=PasteSettings(parser=nets["parser"]))
    sync(frame.device)
    return time.perf_counter() - t0


def face_frame() -> torch.Tensor:
    """The 512x512 golden face frame (tests/data/face_golden/astronaut_rgb.png) as a ComfyUI IMAGE
    [512,512,3] float 0..1."""
    from PIL import Image
    rgb = np.asarray(Image.open(FACE_DATA / "astronaut_rgb.png").convert("RGB"))
    return torch.from_numpy(rgb.copy()).float() / 255


def pipeline_case(nets: Dict, images: torch.Tensor, restore: Callable, max_faces: int, batch: int,
                  w: float = 0.5, repeats: int = 1, warmup_frames: int = 1) -> Dict:
    """One pipeline case for tools/gpu_check.py: ``restore(images, nets, max_faces=, batch=, w=)``
    (the caller's end-to-end call, returning (output images, faces restored)) timed after a warm-up
    on ``warmup_frames`` frames, median of ``repeats``; then the stages alone (``run_ours`` on the
    frames uploaded once, one chunk holding every frame)."""
    import statistics
    device = next(nets["model"].parameters()).device
    restore(images[:warmup_frames], nets, max_faces=max_faces, batch=batch, w=w)  # kernels, allocator
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out, faces = restore(images, nets, max_faces=max_faces, batch=batch, w=w)
        sync(device)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    sync(device)
    t0 = time.perf_counter()
    frames = images.permute(0, 3, 1, 2).to(device)
    sync(device)
    stages = {"upload": time.perf_counter() - t0}
    st = run_ours(nets, frames, max_faces, w, batch_size=batch)
    stages.update((k, st[k]) for k in STAGES)
    return dict(frames=int(images.shape[0]), faces=int(faces), seconds=t, faces_s=faces / t,
                frames_s=images.shape[0] / t, network_batch=batch, finite=bool(torch.isfinite(out).all()),
                stages_s=stages)


@contextmanager
def busy_core():
    """A second process spinning on one core for the duration."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def best_of(runs: List[Dict[str, float]]) -> Dict[str, float]:
    return {k: min(r.get(k, 0.0) for r in runs) for k in runs[0]}


def case_rows(nets: Dict, size: int, faces: int, device: torch.device, w: float, classic: bool,
              repeats: int = 1) -> List[str]:
    """Each side ``repeats`` times, interleaved (ours, forward, end to end, classic, ...); best per stage."""
    frame_np = make_frame(size, faces)
    frame = to_tensor(frame_np, device)
    crops = align_faces(frame, *_landmarks(nets, frame, faces)).crops
    runs, cl_runs, fwds, e2es, mem, cmem = [], [], [], [], 0.0, 0.0
    for _ in range(repeats):
        peak_reset(device)
        runs.append(run_ours(nets, frame, faces, w))
        mem = max(mem, peak_mib(device))
        fwds.append(forward_alone(nets["model"], crops, w))
        e2es.append(end_to_end(nets, frame, faces, w))
        if classic:
            peak_reset(device)
            cl_runs.append(run_classic(nets, frame_np, frame, faces, w))
            cmem = max(cmem, peak_mib(device))
    ours, fwd, e2e = best_of(runs), min(fwds), min(e2es)
    n = int(ours["faces"])
    total = sum(ours[s] for s in STAGES)
    rows = [f"--- {size}x{size}, {n} face(s)   [{load_avg()}]",
            f"{'':10s}" + "".join(f"{s:>9s}" for s in STAGES) + f"{'sum':>9s}{'e2e':>9s}{'peak MiB':>10s}",
            "ours      " + "".join(f"{ours[s]:9.3f}" for s in STAGES) + f"{total:9.2f}{e2e:9.2f}{mem:10.0f}"]
    if classic:
        cl = best_of(cl_runs)
        ctotal = sum(cl.get(s, 0.0) for s in STAGES)
        rows.append("classic   " + "".join(f"{cl.get(s, 0.0):9.3f}" for s in STAGES)
                    + f"{ctotal:9.2f}{'':9s}{cmem:10.0f}")
        rows.append("ours/cls  " + "".join(f"{ours[s] / max(cl.get(s, 0.0), 1e-9):9.2f}" for s in STAGES)
                    + f"{total / ctotal:9.2f}")
    rows.append(f"forward alone {fwd:.2f} s ({fwd / max(n, 1):.2f} s/face); "
                f"pipeline e2e per face {e2e / max(n, 1):.2f} s "
                f"= {e2e / fwd:.2f}x the forward (target <= 1.25); without the parse mask (stage sum less parse) "
                f"{(total - ours['parse']) / fwd:.2f}x   [{load_avg()}]")
    return rows


def _landmarks(nets: Dict, frame: torch.Tensor, faces: int):
    dets = nets["detector"].detect(frame, conf_threshold=THRESHOLD, max_faces=faces)
    return dets.landmarks, dets.frame_index


def load_nets(device: torch.device, dtype: str, classic: bool) -> Dict:
    cf = synth_state_dict(contract(architecture("codeformer", "restoration")).items())
    det_sd = face_weights("retinaface_manifest_resnet50.json")
    parse_sd = face_weights("parsenet_manifest_parsenet.json")
    t0 = time.perf_counter()
    nets = {"model": load_model({"params_ema": cf}, device=device, dtype=dtype),
            "detector": FaceDetector(load_retinaface(det_sd, device=device)),
            "parser": load_parsenet(parse_sd, device=device)}
    nets["load_s"] = time.perf_counter() - t0
    if classic:  # the reference networks: unfolded BatchNorm, naive CodeFormer
        nets["classic_model"] = load_model({"params_ema": cf}, device=device, dtype="fp32", options=NAIVE)
        nets["classic_detector"] = FaceDetector(load_network(det_sd, "retinaface", device=device))
        nets["classic_parser"] = load_network(parse_sd, "parsenet", device=device)
    return nets


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--cases", default="512x1,512x4,1024x1,1024x4", help="SIZExFACES,... (FACES 1 or 4)")
    ap.add_argument("--w", type=float, default=0.5)
    ap.add_argument("--busy", action="store_true", help="then rerun the first case with one core kept busy")
    ap.add_argument("--no-classic", action="store_true")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved runs per case, best of (shared machines)")
    ap.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads (the command line's --threads)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cases = [tuple(int(v) for v in c.split("x")) for c in args.cases.split(",")]
    classic = not args.no_classic
    print(f"device {device}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, dtype {args.dtype}, "
          f"torch {torch.__version__}   [{load_avg()}]", flush=True)
    print(f"start-up (fresh interpreter, imports) {startup_seconds():.2f} s   [{load_avg()}]", flush=True)
    nets = load_nets(device, args.dtype, classic)
    print(f"load (CodeFormer + RetinaFace-R50 + ParseNet, from memory) {nets['load_s']:.2f} s   [{load_avg()}]",
          flush=True)
    run_ours(nets, to_tensor(make_frame(512, 1), device), 1, args.w)  # warm-up (allocator, kernels)
    for size, faces in cases:
        print("\n".join(case_rows(nets, size, faces, device, args.w, classic, args.repeats)), flush=True)
    if args.busy:
        size, faces = cases[0]
        frame = to_tensor(make_frame(size, faces), device)
        quiet, busy = [], []
        for _ in range(args.repeats):  # interleaved, best of each
            quiet.append(end_to_end(nets, frame, faces, args.w))
            quiet_load = load_avg()
            with busy_core():
                busy.append(end_to_end(nets, frame, faces, args.w))
                busy_load = load_avg()
        quiet, busy = min(quiet), min(busy)
        print(f"--- one core busy ({size}x{size}, {faces} face(s), end to end): {quiet:.2f} s without "
              f"[{quiet_load}], {busy:.2f} s with [{busy_load}]: {busy / quiet:.2f}x (target <= 1.5)")


if __name__ == "__main__":
    main()
