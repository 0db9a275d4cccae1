#!/usr/bin/env python3
"""CUDA verification and benchmarks of the pack (issue 12), in one run, short tables at the end.

    tools/gpu_check.sh                                   # a CUDA machine: every section (~6 min, H200)
    python tools/gpu_check.py --device cpu --quick       # smoke test of this script (no GPU needed)

Sections (``--sections``, comma separated; default all):
  env       torch/CUDA/driver, measured bf16 matmul rate and device copy bandwidth
  pytest    ``pytest tests/test_cuda.py`` (the CUDA tests) in a subprocess
  golden    golden vectors on the device in fp32 (TF32 off / on), fp16, bf16, each layout:
            code-index agreement and output error against the fp32 golden outputs
  bench     CodeFormer forward at batch 1/8/32/64 x fp32/fp16/bf16 x channels-last off/on, with a
            fresh per-sample w on every call ("live w"); CUDA events, warm-up, median; peak memory
  profile   torch.profiler top ops (by GPU time) of the fastest bench configuration
  pipeline  ``pipeline.restore_images`` (synthetic RetinaFace-R50 + ParseNet + CodeFormer) on one
            1024x1024 frame (2x2 tile of a face, 4 faces kept per frame) and on 64 video frames
            (shifted copies of a 512x512 face frame, 1 face kept per frame), with stage times
  comfy     the all-in-one node in a real ComfyUI server on the GPU (tools/gpu_comfy.py), VRAM before
            and after the run and after ComfyUI's /free
  compile   torch.compile (default mode) of the forward for fp16/bf16 at batch 32/64, time-capped

Weights are the golden synthetic formula (codeformer_core/dev/synthetic.py): speed does not depend on
the values, and synthetic detectors need conf_threshold 0.7. Everything is printed and also written
under --out (default $OUT or ./gpu_out): gpu_check.log, results.json, tables.md, pytest.log, profile.txt,
comfy.json, compile.log (scratch files, the weight cache and the ComfyUI log, go to $GPU_CHECK_CACHE).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

DATA = ROOT / "tests" / "data"
FACE = DATA / "face_golden"
SCRATCH = Path(os.environ.get("GPU_CHECK_CACHE", "/tmp/gpu_check_cache"))  # files that need not come back
ALL_SECTIONS = ("env", "pytest", "golden", "bench", "profile", "pipeline", "comfy", "compile")


# -- output --------------------------------------------------------------------------------------
class Run:
    def __init__(self, out: Path, budget_s: float):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.log_f = open(out / "gpu_check.log", "a", buffering=1)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget_s
        self.results: dict = {"sections": {}, "errors": {}}
        self.tables: list = []  # (title, markdown)

    def log(self, *parts):
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.log_f.write(line + "\n")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def table(self, title: str, header, rows, note: str = ""):
        md = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        md += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        text = "\n".join(md) + (f"\n\n{note}" if note else "")
        self.tables.append((title, text))
        self.log(f"\n### {title}\n{text}\n")

    def save(self):
        self.results["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1, default=str))
        (self.out / "tables.md").write_text("\n\n".join(f"### {t}\n\n{m}" for t, m in self.tables) + "\n")


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def fmt(v, spec=".3g"):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


# -- weights (cached; the synthetic formula is slow in numpy) ------------------------------------------
_SD: dict = {}


def golden_case(variant: str):
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import Golden  # the tests' own golden loader (repository copy or CODEFORMER_GOLDEN_DIR)
    key = ("golden", variant)
    if key not in _SD:
        _SD[key] = Golden(variant)
    return _SD[key]


def codeformer_sd(variant: str = "restoration"):
    key = ("sd", variant)
    if key not in _SD:
        salt = os.environ.get("CODEFORMER_GOLDEN_SALT", "0")
        cache = SCRATCH / f"{variant}_salt{salt}.pt"
        if cache.exists():  # the compile worker (a subprocess) reuses the parent's weights
            _SD[key] = torch.load(cache, weights_only=True)
        else:
            _SD[key] = golden_case(variant).state_dict()
            with contextlib.suppress(OSError):
                cache.parent.mkdir(parents=True, exist_ok=True)
                torch.save(dict(_SD[key]), cache)
    return _SD[key]


def face_sd(manifest: str):
    from codeformer_core.dev.synthetic import synth_state_dict
    key = ("face", manifest)
    if key not in _SD:
        _SD[key] = synth_state_dict(json.loads((FACE / manifest).read_text()), face=True)
    return _SD[key]


def load_cf(device, dtype, variant="restoration", channels_last=False):
    from codeformer_core import load_model
    model = load_model({"params_ema": codeformer_sd(variant)}, device=device, dtype=dtype)
    if channels_last:
        model.set_memory_format(torch.channels_last)
    return model


def free(device):
    import gc
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# -- sections -------------------------------------------------------------------------------------
def section_env(run: Run, args):
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "device": args.device, "cpu_threads": torch.get_num_threads()}
    dev = torch.device(args.device)
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(name=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2 ** 30, 1),
                    sms=p.multi_processor_count)
        with contextlib.suppress(Exception):
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.max.sm,power.limit,memory.used",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
        # the two ceilings (METHOD.md): bf16 matrix product on random data, device-to-device copy
        a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        ms = event_times(lambda: a @ b, 3, 10)
        info["bf16_matmul_tflops"] = round(2 * 8192 ** 3 / (statistics.median(ms) / 1e3) / 1e12, 1)
        src = torch.randn(2 ** 29, device=dev, dtype=torch.float32)  # 2 GiB
        dst = torch.empty_like(src)
        ms = event_times(lambda: dst.copy_(src), 2, 10)
        info["copy_tb_s"] = round(2 * src.numel() * 4 / (statistics.median(ms) / 1e3) / 1e12, 2)
        del a, b, src, dst
        free(dev)
    run.results["env"] = info
    run.log("env:", json.dumps(info))


def event_times(fn, warmup: int, repeats: int):
    """Milliseconds per call (CUDA events around each call) after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return times


def section_pytest(run: Run, args):
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(30, min(240, run.left() - 60)))
    (run.out / "pytest.log").write_text(p.stdout + p.stderr)
    summary = [ln for ln in p.stdout.splitlines() if ln.strip()][-1:] or ["(no output)"]
    prints = [ln for ln in p.stdout.splitlines() if ln.startswith("cuda ")]
    run.results["pytest"] = {"rc": p.returncode, "summary": summary[0], "lines": prints,
                             "seconds": round(time.monotonic() - t0, 1)}
    run.log(f"pytest tests/test_cuda.py: rc={p.returncode} {summary[0]}")
    for ln in prints:
        run.log("  " + ln)
    if p.returncode != 0:
        run.log(p.stdout[-4000:] + p.stderr[-2000:])


GOLDEN_CASES = {"restoration": (0.0, 0.5, 1.0), "colorization": (0.0, 0.5), "inpainting": (1.0,)}


def section_golden(run: Run, args):
    dev = torch.device(args.device)
    configs = [("fp32", False, False), ("fp32", True, False), ("fp32", False, True),
               ("fp16", False, False), ("fp16", False, True), ("bf16", False, False), ("bf16", False, True)]
    if dev.type != "cuda":
        configs = [c for c in configs if not c[1]]
    variants = ["restoration"] if args.quick else list(GOLDEN_CASES)
    if args.quick:
        configs = [("fp32", False, False), ("bf16", False, True)]
    rows, res = [], []
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        for variant in variants:
            g = golden_case(variant)
            adain = variant != "inpainting"
            x = torch.from_numpy(g.x).to(dev)
            for dtype, tf32, cl in configs:
                torch.backends.cuda.matmul.allow_tf32 = tf32
                torch.backends.cudnn.allow_tf32 = tf32
                model = load_cf(dev, dtype, variant, channels_last=cl)
                for w in (0.5,) if args.quick else GOLDEN_CASES[variant]:
                    out, logits, idx = model(x, w=w, adain=adain, return_codes=True)
                    out = g.sample(out.float().cpu().numpy())
                    err = np.abs(out.astype(np.float64) - g.out(w))
                    lerr = np.abs(logits.float().cpu().numpy().astype(np.float64) - g.arrays["logits"])
                    codes = float((idx.cpu().numpy() == g.arrays["idx"]).mean())
                    strict = dtype == "fp32" and not tf32
                    ok = (err.max() <= 1e-4 and err.mean() <= 5e-6 and codes == 1.0) if strict else \
                        (codes >= 0.98 and err.mean() < 2e-2 and np.isfinite(out).all())
                    name = dtype + ("+tf32" if tf32 else "") + (" CL" if cl else "")
                    rows.append((variant, w, name, f"{codes:.1%}", f"{err.max():.2e}", f"{err.mean():.2e}",
                                 f"{lerr.max():.2e}", "ok" if ok else "FAIL"))
                    res.append(dict(variant=variant, w=w, config=name, codes=codes, out_max=float(err.max()),
                                    out_mean=float(err.mean()), logits_max=float(lerr.max()), ok=bool(ok)))
                del model
                free(dev)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    run.results["golden"] = res
    short = {}  # one row per variant and config: the worst over the w values
    for r in res:
        short.setdefault((r["variant"], r["config"]), []).append(r)
    rows = [(v, c, ",".join(str(r["w"]) for r in rs), f"{min(r['codes'] for r in rs):.1%}",
             f"{max(r['out_max'] for r in rs):.2e}", f"{max(r['out_mean'] for r in rs):.2e}",
             f"{max(r['logits_max'] for r in rs):.2e}", "ok" if all(r["ok"] for r in rs) else "FAIL")
            for (v, c), rs in short.items()]
    run.table(f"Golden vectors on {dev.type} (vs the fp32 golden outputs; worst over w)",
              ("variant", "config", "w", "codes equal", "out max err", "out mean err", "logits max err", "rule"),
              rows, "Rule: fp32 without TF32 = golden rule (max 1e-4, mean 5e-6, all codes); others = "
                    "tests/test_cuda.py's half rule (codes >= 98 %, mean < 2e-2). CL = channels-last.")


def measure_forward(model, x, batch, device, min_repeats=3, target_s=1.0, warmup=2):
    """Median seconds per call (live per-sample w each call), peak MiB, and the output of the last call."""
    dev = torch.device(device)
    xb = x[:batch]
    gen = torch.Generator(device=dev).manual_seed(batch)

    def w_live():
        return torch.rand(batch, device=dev, generator=gen) * 0.9 + 0.05

    with torch.inference_mode():
        for _ in range(warmup):
            out = model(xb, w=w_live())
        sync(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        times = []
        t_start = time.perf_counter()
        while len(times) < min_repeats or (time.perf_counter() - t_start < target_s and len(times) < 20):
            w = w_live()
            if dev.type == "cuda":
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                out = model(xb, w=w)
                e.record()
                e.synchronize()
                times.append(s.elapsed_time(e) / 1e3)
            else:
                t0 = time.perf_counter()
                out = model(xb, w=w)
                times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(dev) / 2 ** 20 if dev.type == "cuda" else float("nan")
    return statistics.median(times), peak, out, len(times)


def bench_plan(args):
    if args.quick:
        return ["fp32"], [False, True], [1]
    return ["fp32", "fp16", "bf16"], [False, True], [1, 8, 32, 64]


def section_bench(run: Run, args):
    dev = torch.device(args.device)
    dtypes, layouts, batches = bench_plan(args)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(max(batches), 3, 512, 512, generator=gen) * 2 - 1).to(dev)
    rows, res = [], []
    for dtype in dtypes:
        model = load_cf(dev, dtype)
        for cl in layouts:
            model.set_memory_format(torch.channels_last if cl else torch.contiguous_format)
            for b in batches:
                if run.left() < args.reserve_s:
                    run.log(f"bench: time budget reached, skipping {dtype} cl={cl} b={b}")
                    continue
                try:
                    t, peak, out, n = measure_forward(model, x, b, dev, min_repeats=1 if args.quick else 3,
                                                      target_s=0.0 if args.quick else 1.0,
                                                      warmup=1 if args.quick else 2)
                    finite = bool(torch.isfinite(out).all())
                    r = dict(dtype=dtype, channels_last=cl, batch=b, s_per_call=t, faces_s=b / t, peak_mib=peak,
                             repeats=n, finite=finite)
                except torch.OutOfMemoryError as exc:
                    r = dict(dtype=dtype, channels_last=cl, batch=b, error=f"out of memory: {exc}"[:200])
                    free(dev)
                res.append(r)
                run.log("bench", json.dumps(r))
                rows.append((dtype, "on" if cl else "off", b, fmt(r.get("faces_s"), ".1f"),
                             fmt(r.get("s_per_call", float("nan")) * 1e3, ".1f"), fmt(r.get("peak_mib"), ".0f"),
                             "" if r.get("finite", True) and "error" not in r else r.get("error", "NaN/inf")))
        del model
        free(dev)
    run.results["bench"] = res
    tf32 = torch.backends.cudnn.allow_tf32 if dev.type == "cuda" else None
    run.table(f"Model benchmark, 512x512, live per-sample w ({dev.type})",
              ("dtype", "channels-last", "batch", "faces/s", "ms/call", "peak MiB", "note"), rows,
              f"Median of >= 3 timed calls (CUDA events) after 2 warm-ups; w drawn afresh per call and face. "
              f"cudnn.allow_tf32={tf32} (PyTorch default), cudnn.benchmark={torch.backends.cudnn.benchmark}.")


def best_bench(run: Run):
    ok = [r for r in run.results.get("bench", []) if "faces_s" in r and r.get("finite")]
    return max(ok, key=lambda r: r["faces_s"]) if ok else None


def section_profile(run: Run, args):
    dev = torch.device(args.device)
    best = best_bench(run)
    if best is None:
        run.log("profile: no bench result to profile")
        return
    from torch.profiler import ProfilerActivity, profile
    model = load_cf(dev, best["dtype"], channels_last=best["channels_last"])
    b = best["batch"]
    x = (torch.rand(b, 3, 512, 512, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    calls = 1 if args.quick else 3
    with torch.inference_mode():
        model(x, w=torch.rand(b, device=dev))
        sync(dev)
        with profile(activities=acts) as prof:
            t0 = time.perf_counter()
            for _ in range(calls):
                model(x, w=torch.rand(b, device=dev) * 0.9 + 0.05)
            sync(dev)
            wall = time.perf_counter() - t0
    ka = prof.key_averages()
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    try:
        table = ka.table(sort_by=key, row_limit=15, max_name_column_width=60)
    except (AttributeError, KeyError):
        key = "self_cuda_time_total"
        table = ka.table(sort_by=key, row_limit=15, max_name_column_width=60)
    (run.out / "profile.txt").write_text(table)
    rows, busy = [], 0.0
    for e in ka:
        busy += float(getattr(e, key, 0.0) or 0.0)
    top = sorted(ka, key=lambda e: -float(getattr(e, key, 0.0) or 0.0))[:15]
    for e in top:
        t = float(getattr(e, key, 0.0) or 0.0)
        rows.append((e.key[:60], e.count // calls, f"{t / 1e3 / calls:.2f}", f"{100 * t / max(busy, 1e-9):.1f}"))
    run.results["profile"] = {"config": best, "wall_ms_per_call": wall * 1e3 / calls,
                              "busy_ms_per_call": busy / 1e3 / calls,
                              "top": [dict(op=r[0], calls=r[1], ms=float(r[2]), share=float(r[3])) for r in rows]}
    run.table(f"Profiler top ops, {best['dtype']} channels-last={best['channels_last']} batch {b} "
              f"(self {'GPU' if dev.type == 'cuda' else 'CPU'} time per call)",
              ("op", "calls/forward", "ms/forward", "% of busy"), rows,
              f"Wall {wall * 1e3 / calls:.1f} ms per forward, busy (sum of self times) {busy / 1e3 / calls:.1f} ms; "
              f"full table in profile.txt.")
    del model
    free(dev)


def face_frame():
    from PIL import Image
    rgb = np.asarray(Image.open(FACE / "astronaut_rgb.png").convert("RGB"))
    return torch.from_numpy(rgb.copy()).float() / 255  # [512,512,3] ComfyUI IMAGE layout


def section_pipeline(run: Run, args):
    from codeformer_core import pipeline as P
    from codeformer_core.faces.detect import load_detector
    from codeformer_core.faces.paste import paste_faces
    from codeformer_core.models.loader import load_parsenet
    dev = torch.device(args.device)
    dtype = "fp16" if dev.type == "cuda" else "fp32"
    model = load_cf(dev, dtype)
    detector = load_detector(face_sd("retinaface_manifest_resnet50.json"), device=dev)
    parser = load_parsenet(face_sd("parsenet_manifest_parsenet.json"), device=dev)
    face = face_frame()
    tile = face.repeat(2, 2, 1)[None]                               # [1,1024,1024,3]: four faces
    n_video = 2 if args.quick else 64
    video = torch.stack([torch.roll(face, shifts=2 * i, dims=1) for i in range(n_video)])  # [64,512,512,3]
    cases = [("1024x1024 frame, 4 faces", tile, 1 if args.quick else 4, 8),
             (f"{n_video} video frames 512x512, 1 face each", video, 1, 8)]
    if not args.quick:
        cases.append((f"{n_video} video frames, network batch 32", video, 1, 32))
    rows, stage_rows, res = [], [], []
    for name, images, max_faces, batch in cases:
        if run.left() < args.reserve_s:
            run.log(f"pipeline: time budget reached, skipping {name}")
            continue
        kw = dict(w=0.5, parser=parser, conf_threshold=0.7, max_faces=max_faces, batch_size=batch)
        P.restore_images(images[:1 if args.quick else 2], model, detector, **kw)  # warm-up (kernels, allocator)
        sync(dev)
        times, result = [], None
        for _ in range(1 if args.quick or images.shape[0] > 8 else 3):
            t0 = time.perf_counter()
            result = P.restore_images(images, model, detector, **kw)
            sync(dev)
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        faces = result.total_faces
        r = dict(case=name, dtype=dtype, frames=int(images.shape[0]), faces=faces, seconds=t,
                 faces_s=faces / t, frames_s=images.shape[0] / t, network_batch=batch,
                 finite=bool(torch.isfinite(result.images).all()))
        # stage times: the public steps restore_images runs, one after another, synchronised
        st = {}
        frames_cpu = images
        t0 = time.perf_counter()
        frames = P.to_frames(frames_cpu).to(dev)
        sync(dev)
        st["upload"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fb = P.detect_faces(frames, detector, conf_threshold=0.7, max_faces=max_faces)
        sync(dev)
        st["detect+align"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fb = P.restore_faces(model, fb, w=0.5, batch_size=batch)
        sync(dev)
        st["codeformer"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        parse = P.parse_masks_for(parser, fb.crops)
        sync(dev)
        st["parse"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        pasted, mask = paste_faces(frames, fb, parse_masks=parse)
        sync(dev)
        st["paste"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        P.from_frames(pasted)
        sync(dev)
        st["download"] = time.perf_counter() - t0
        r["stages_s"] = st
        res.append(r)
        run.log("pipeline", json.dumps(r))
        rows.append((name, dtype, r["frames"], faces, batch, f"{t:.3f}", f"{r['faces_s']:.1f}", f"{r['frames_s']:.1f}"))
        total = sum(st.values())
        stage_rows.append((name, *(f"{1e3 * v:.0f} ({100 * v / total:.0f}%)" for v in st.values()),
                           f"{1e3 * total:.0f}"))
        free(dev)
    run.results["pipeline"] = res
    run.table(f"Pipeline benchmark (restore_images, {dev.type}, CodeFormer {dtype}, RetinaFace-R50 + ParseNet fp32)",
              ("case", "dtype", "frames", "faces", "net batch", "seconds", "faces/s", "frames/s"), rows,
              "Synthetic weights: conf_threshold 0.7 finds spurious 'faces'; max_faces keeps 4 per 1024 frame and "
              "1 per video frame, so every case restores a known number of crops through the full path.")
    run.table("Pipeline stage times, ms (share)", ("case", "upload", "detect+align", "codeformer", "parse",
                                                 "paste", "download", "total"), stage_rows,
              "Each public step run alone and synchronised (one chunk holding every frame).")
    del model, detector, parser
    free(dev)


def section_comfy(run: Run, args):
    if not args.comfy_tgz:
        run.log("comfy: no --comfy-tgz given, skipped")
        return
    out_json = run.out / "comfy.json"
    SCRATCH.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.site:
        env["PYTHONPATH"] = args.site + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, str(ROOT / "tools" / "gpu_comfy.py"), "--comfy-tgz", args.comfy_tgz, "--pack", str(ROOT),
           "--out", str(out_json), "--log", str(SCRATCH / "comfyui.log"),
           "--frames", "2" if args.quick else "16", "--selection", "largest" if args.quick else "all"]
    if torch.device(args.device).type != "cuda":
        cmd.append("--cpu")
    t0 = time.monotonic()
    budget = max(90, min(240, run.left() - args.reserve_s / 2))
    cmd += ["--timeout", str(int(budget - 75))]  # the prompt's share; it stops its own server in time
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=budget + 30)
    run.log(p.stdout[-3000:] + p.stderr[-3000:])
    rep = json.loads(out_json.read_text()) if out_json.exists() else {"error": "no report", "rc": p.returncode}
    rep["seconds"] = round(time.monotonic() - t0, 1)
    run.results["comfy"] = rep
    rows = [(k, rep.get(k)) for k in ("status", "pack_loaded", "server_start_s", "frames", "faces", "run_s",
                                      "images_saved", "error") if k in rep]
    for stage in ("before", "after_run", "after_free"):
        v = rep.get("vram", {}).get(stage)
        if v:
            rows.append((f"VRAM {stage}", f"torch allocated {fmt(v.get('torch_allocated_mib'), '.0f')} MiB, "
                                          f"reserved {fmt(v.get('torch_reserved_mib'), '.0f')} MiB, "
                                          f"GPU used {v.get('gpu_used_mib', '-')} MiB"))
    run.table("ComfyUI 0.3.64 on the device: all-in-one node on a frame batch", ("item", "value"), rows)


COMPILE_PLAN = [("fp16", 32), ("bf16", 32), ("fp16", 64), ("bf16", 64)]


def section_compile(run: Run, args):
    """Runs the worker in a subprocess with a hard time cap; keeps whatever configs finished."""
    if torch.device(args.device).type != "cuda" and args.compile_backend == "inductor":
        run.log("compile: inductor runs on CUDA only here (use --compile-backend eager to check tracing)")
        return
    cap = min(args.compile_cap_s, run.left() - 15)
    if cap < 60:
        run.log(f"compile: only {cap:.0f} s left, skipped")
        return
    layouts = {}
    for r in run.results.get("bench", []):
        if "faces_s" in r:
            best = layouts.get(r["dtype"])
            if best is None or r["faces_s"] > best[1]:
                layouts[r["dtype"]] = (r["channels_last"], r["faces_s"])
    lines = SCRATCH / "compile.jsonl"
    SCRATCH.mkdir(parents=True, exist_ok=True)
    lines.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--sections", "compile_worker", "--device", args.device, "--out", str(run.out),
           "--compile-out", str(lines), "--compile-backend", args.compile_backend,
           "--compile-layouts", json.dumps({k: v[0] for k, v in layouts.items()})]
    if args.quick:
        cmd.append("--quick")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=cap)
        (run.out / "compile.log").write_text(p.stdout + p.stderr)
        if p.returncode:
            run.log("compile worker failed:", (p.stdout + p.stderr)[-3000:])
    except subprocess.TimeoutExpired as exc:
        (run.out / "compile.log").write_text(str(exc.stdout or "") + str(exc.stderr or ""))
        run.log(f"compile: capped at {cap:.0f} s")
    res = [json.loads(ln) for ln in lines.read_text().splitlines()] if lines.exists() else []
    run.results["compile"] = res
    eager = {(r["dtype"], r["batch"], r["channels_last"]): r.get("faces_s") for r in run.results.get("bench", [])}
    rows = [(r["dtype"], "on" if r["channels_last"] else "off", r["batch"], f"{r['compile_s']:.0f}",
             fmt(r.get("faces_s"), ".1f"), fmt(eager.get((r["dtype"], r["batch"], r["channels_last"])), ".1f"),
             fmt(r.get("max_diff"), ".2e")) for r in res]
    run.table(f"torch.compile (backend {args.compile_backend}, default mode, dynamic=False), live w",
              ("dtype", "channels-last", "batch",
              "compile+warm-up s", "faces/s compiled", "faces/s eager", "max |compiled - eager|"), rows,
              f"Configs tried in order {COMPILE_PLAN}, capped at {cap:.0f} s in all; missing rows did not finish.")


def compile_worker(args):
    dev = torch.device(args.device)
    layouts = json.loads(args.compile_layouts or "{}")
    plan = [("bf16", 1)] if args.quick else COMPILE_PLAN
    models = {}
    for dtype, b in plan:
        cl = bool(layouts.get(dtype, True))
        if dtype not in models:
            models[dtype] = load_cf(dev, dtype, channels_last=cl)
        model = models[dtype]
        # compile the body of forward (its inference_mode decorator stays outside, around the call)
        body = getattr(type(model).forward, "__wrapped__", type(model).forward)
        fwd = torch.compile(lambda xb, w, _m=model: body(_m, xb, w), dynamic=False, backend=args.compile_backend)
        x = (torch.rand(b, 3, 512, 512, generator=torch.Generator().manual_seed(2)) * 2 - 1).to(dev)
        w0 = torch.full((b,), 0.5, device=dev)
        t0 = time.perf_counter()
        with torch.inference_mode():
            got = fwd(x, w0)
            sync(dev)
            compile_s = time.perf_counter() - t0
            want = model(x, w=w0)
            diff = float((got.float() - want.float()).abs().max())

        class Compiled:  # model-like wrapper for measure_forward
            def __call__(self, xb, w):
                return fwd(xb, w)
        t, peak, out, n = measure_forward(Compiled(), x, b, dev, min_repeats=1 if args.quick else 3,
                                          target_s=0.0 if args.quick else 1.0, warmup=1)
        r = dict(dtype=dtype, batch=b, channels_last=cl, compile_s=compile_s, faces_s=b / t, peak_mib=peak,
                 max_diff=diff, repeats=n)
        with open(args.compile_out, "a") as f:
            f.write(json.dumps(r) + "\n")
        print(json.dumps(r), flush=True)


SECTIONS = {"env": section_env, "pytest": section_pytest, "golden": section_golden, "bench": section_bench,
            "profile": section_profile, "pipeline": section_pipeline, "comfy": section_comfy,
            "compile": section_compile}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sections", default=",".join(ALL_SECTIONS))
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu_out"))
    ap.add_argument("--budget-s", type=float, default=380, help="wall-clock budget; later work is skipped")
    ap.add_argument("--reserve-s", type=float, default=100, help="time kept for the comfy and compile sections")
    ap.add_argument("--compile-cap-s", type=float, default=150)
    ap.add_argument("--comfy-tgz", default=None, help="ComfyUI source tarball for the comfy section")
    ap.add_argument("--site", default=None, help="extra site dir (carried wheels) for the ComfyUI server only")
    ap.add_argument("--compile-backend", default="inductor", help="'eager' checks tracing only (CPU smoke test)")
    ap.add_argument("--compile-out", default=None)
    ap.add_argument("--compile-layouts", default=None)
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    if args.sections == "compile_worker":
        return compile_worker(args)
    run = Run(Path(args.out), args.budget_s)
    run.results["command"] = " ".join([os.path.basename(sys.executable)] + sys.argv)
    run.results["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    names = [s for s in args.sections.split(",") if s]
    for name in names:
        if name not in SECTIONS:
            raise SystemExit(f"unknown section {name}; use {','.join(ALL_SECTIONS)}")
    for name in names:
        t0 = time.monotonic()
        run.log(f"\n== {name} (t={t0 - run.t0:.0f}s, {run.left():.0f}s left)")
        try:
            SECTIONS[name](run, args)
            status = "ok"
        except Exception as exc:  # a failing section must not cost the others' figures
            status = f"error: {type(exc).__name__}: {exc}"[:300]
            run.results["errors"][name] = traceback.format_exc()
            run.log(traceback.format_exc())
            free(args.device)
        run.results["sections"][name] = {"status": status, "seconds": round(time.monotonic() - t0, 1)}
        run.save()
    run.log("\n\n######## SUMMARY ########")
    run.log(json.dumps(run.results.get("env", {})))
    for title, md in run.tables:
        run.log(f"\n### {title}\n{md}")
    run.log("\nsections: " + ", ".join(f"{k} {v['status']} ({v['seconds']}s)"
                                      for k, v in run.results["sections"].items()))
    run.save()
    return 1 if run.results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
