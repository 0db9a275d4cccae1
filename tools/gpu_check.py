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

The figures come from the benchmarks in codeformer_core/dev/ (bench_model: ceilings, forward grid,
profile, compile; bench_precision: golden fidelity; bench_pipeline: pipeline cases and stages; golden:
the golden loader); this script picks the plan, keeps the time budget and prints the tables. Weights are
the golden synthetic formula (codeformer_core/dev/synthetic.py): speed does not depend on the values,
and synthetic detectors need conf_threshold 0.7. Everything is printed and also written
under --out (default $OUT or ./gpu_out): gpu_check.log, results.json, tables.md, pytest.log, profile.txt,
comfy.json, compile.log (scratch files, the weight cache and the ComfyUI log, go to $GPU_CHECK_CACHE).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from codeformer_core.dev import bench_model, bench_pipeline, bench_precision  # noqa: E402
from codeformer_core.dev.golden import Golden, face_state_dict  # noqa: E402

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
    """The golden case (codeformer_core/dev/golden.py: the repository copy or CODEFORMER_GOLDEN_DIR)."""
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


def load_cf(device, dtype, variant="restoration", channels_last=False):
    return bench_model.build(codeformer_sd(variant), device, dtype, channels_last)


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
        info.update(bench_model.device_ceilings(dev))  # the two ceilings (METHOD.md): bf16 matmul, copy
    run.results["env"] = info
    run.log("env:", json.dumps(info))


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
    res = []
    for variant in variants:
        ws = (0.5,) if args.quick else GOLDEN_CASES[variant]
        res += bench_precision.golden_fidelity(golden_case(variant), codeformer_sd(variant), dev, configs, ws)
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


def bench_plan(args):
    if args.quick:
        return ["fp32"], [False, True], [1]
    return ["fp32", "fp16", "bf16"], [False, True], [1, 8, 32, 64]


def section_bench(run: Run, args):
    dev = torch.device(args.device)
    dtypes, layouts, batches = bench_plan(args)
    res = bench_model.forward_grid(codeformer_sd(), dev, dtypes, layouts, batches, quick=args.quick,
                                   keep_going=lambda: run.left() >= args.reserve_s,
                                   log=lambda *p: run.log(*(json.dumps(x) if isinstance(x, dict) else x for x in p)))
    rows = [(r["dtype"], "on" if r["channels_last"] else "off", r["batch"], fmt(r.get("faces_s"), ".3g"),
             fmt(r.get("s_per_call", float("nan")) * 1e3, ".1f"), fmt(r.get("peak_mib"), ".0f"),
             "" if r.get("finite", True) and "error" not in r else r.get("error", "NaN/inf")) for r in res]
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
    model = load_cf(dev, best["dtype"], channels_last=best["channels_last"])
    b = best["batch"]
    prof = bench_model.profile_forward(model, b, dev, calls=1 if args.quick else 3)
    (run.out / "profile.txt").write_text(prof.pop("table"))
    run.results["profile"] = {"config": best, **prof}
    rows = [(o["op"], o["calls"], f"{o['ms']:.2f}", f"{o['share']:.1f}") for o in prof["top"]]
    run.table(f"Profiler top ops, {best['dtype']} channels-last={best['channels_last']} batch {b} "
              f"(self {'GPU' if dev.type == 'cuda' else 'CPU'} time per call)",
              ("op", "calls/forward", "ms/forward", "% of busy"), rows,
              f"Wall {prof['wall_ms_per_call']:.1f} ms per forward, busy (sum of self times) "
              f"{prof['busy_ms_per_call']:.1f} ms; full table in profile.txt.")
    del model
    free(dev)


def restore(images, nets, max_faces, batch, w):
    """The one call of ``pipeline.restore_images`` (the end-to-end path the pipeline figures time):
    (output images, faces restored)."""
    from codeformer_core import pipeline as P
    from codeformer_core.faces.detect import DetectOptions
    result = P.restore_images(images, nets["model"], nets["detector"], w=w,
                              detect=DetectOptions(conf_threshold=bench_pipeline.THRESHOLD, max_faces=max_faces),
                              paste=P.PasteSettings(parser=nets["parser"]), run=P.RunOptions(batch_size=batch))
    return result.images, result.total_faces


def section_pipeline(run: Run, args):
    from codeformer_core.faces.detect import load_detector
    from codeformer_core.models.loader import load_parsenet
    dev = torch.device(args.device)
    dtype = "fp16" if dev.type == "cuda" else "fp32"
    nets = {"model": load_cf(dev, dtype),
            "detector": load_detector(face_state_dict("retinaface_manifest_resnet50.json"), device=dev),
            "parser": load_parsenet(face_state_dict("parsenet_manifest_parsenet.json"), device=dev)}
    face = bench_pipeline.face_frame()
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
        repeats = 1 if args.quick or images.shape[0] > 8 else 3
        r = bench_pipeline.pipeline_case(nets, images, restore, max_faces, batch, w=0.5, repeats=repeats,
                                         warmup_frames=1 if args.quick else 2)
        r = dict(case=name, dtype=dtype, **r)
        res.append(r)
        run.log("pipeline", json.dumps(r))
        rows.append((name, dtype, r["frames"], r["faces"], batch, f"{r['seconds']:.3f}", f"{r['faces_s']:.3g}",
                     f"{r['frames_s']:.3g}"))
        st = r["stages_s"]
        total = sum(st.values())
        stage_rows.append((name, *(f"{1e3 * v:.0f} ({100 * v / total:.0f}%)" for v in st.values()),
                           f"{1e3 * total:.0f}"))
        free(dev)
    run.results["pipeline"] = res
    run.table(f"Pipeline benchmark (restore_images, {dev.type}, CodeFormer {dtype}, RetinaFace-R50 + ParseNet fp32)",
              ("case", "dtype", "frames", "faces", "net batch", "seconds", "faces/s", "frames/s"), rows,
              "Synthetic weights: conf_threshold 0.7 finds spurious 'faces'; max_faces keeps 4 per 1024 frame and "
              "1 per video frame, so every case restores a known number of crops through the full path.")
    run.table("Pipeline stage times, ms (share)", ("case", "upload", *bench_pipeline.STAGES, "total"), stage_rows,
              "Each public step run alone and synchronised (bench_pipeline.run_ours, one chunk holding every "
              "frame; paste = paste_bands with the parse masks).")
    del nets
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
        r = dict(dtype=dtype, channels_last=cl,
                 **bench_model.compile_forward(models[dtype], b, dev, args.compile_backend, quick=args.quick))
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
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall-clock budget; later work is skipped (default 380 s; none with --quick)")
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
    if args.budget_s is None:  # the smoke test runs every section, however slow the machine
        args.budget_s = 1e6 if args.quick else 380
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
