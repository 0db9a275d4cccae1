"""Benchmark: ``python -m codeformer_core.dev.bench_model [--device cuda] [--dtype fp16]``.

Prints how long ``load_model`` takes for a full-size ``codeformer.pth`` (the official format,
``{'params_ema': state_dict}``) and for the same tensors as ``.safetensors``, then faces/s and
peak memory for batches 1, 4 and 8 with the default ``CodeFormerOptions``, and for a naive
baseline instance (one face at a time, float32, contiguous layout, explicit softmax attention,
upsample-then-conv) measured in the same run, plus the largest output
difference between the two; ``--onnx FILE`` (or ``--onnx export``: the synthetic weights exported
first) adds ONNX Runtime on CPU for an exported file, run through ``models.onnx_face.OnnxFaceModel``
at each batch size, and the CPU's model name is printed. ``--precise-logits-cost N`` instead
times one face with ``CodeFormerOptions.precise_logits`` on and off, interleaved, in float32 and
in the bf16 policy (CPU): the pieces it runs in float64 against their float32 selves (25N times),
the two parts it changes (``encode`` 4N times, ``predict_codes`` 20N times) and the whole
forward (N times), best of each. Weights are the
synthetic golden formula: speed does not depend on the values. The process keeps the default
allocator policy, as inside ComfyUI; ``--cli-memory`` measures with the one the ``codeformer``
command sets at its start instead.
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch

from ..models.checkpoint import save_safetensors
from ..models.codeformer import PRECISE_ENCODER_BLOCKS, PRECISE_TRANSFORMER_LAYERS, CodeFormerOptions
from ..models.registry import architecture, contract
from ..models.loader import load_model, resolve_device, resolve_dtype
from .synthetic import synth_state_dict

NAIVE = CodeFormerOptions(use_sdpa=False, fold_upsample=False)


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the process's peak RSS (VmHWM)


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model, x, batch, w, device, repeats):
    """Seconds per face over ``repeats`` timed passes (after one warm-up), and peak MiB."""
    with torch.inference_mode():
        xb = x[:batch]
        model(xb, w=w)  # warm-up (allocator, kernel selection)
        sync(device)
        peak_reset(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = model(xb, w=w)
        sync(device)
        dt = (time.perf_counter() - t0) / (repeats * batch)
    return dt, peak_mib(device), out


def load_times(state_dict) -> list:
    """(file, seconds) for load_model of codeformer.pth and codeformer.safetensors (CPU, float32).

    The .pth is loaded first, in a process that has not loaded a model yet, so its time includes
    the one-time work (the architectures' key/shape contracts); both files were just written, so
    they come from the page cache, like a second start of ComfyUI."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pth, st = Path(tmp) / "codeformer.pth", Path(tmp) / "codeformer.safetensors"
        torch.save({"params_ema": state_dict}, pth)
        save_safetensors(state_dict, st)
        for path in (pth, st):
            t0 = time.perf_counter()
            model = load_model(path, device="cpu", dtype="fp32")
            rows.append((f"{path.name} ({path.stat().st_size / 2 ** 20:.0f} MiB)", time.perf_counter() - t0))
            del model
    return rows


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; platform's guess elsewhere) and the cores torch uses."""
    import platform
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {torch.get_num_threads()} threads"


def onnx_rows(path, x, batches, w, t_naive, out_naive, repeats):
    """ONNX Runtime (CPU) on an exported file through the pipeline's runner (models/onnx_face.py,
    numpy in and out), one row per batch size, like the PyTorch ones."""
    from ..models.onnx_face import OnnxFaceModel
    model = OnnxFaceModel(path, "cpu", threads=torch.get_num_threads())
    rows = []
    for b in batches:
        xb, wb = x[:b].cpu(), torch.full((b,), w)
        out = model(xb, w=wb)  # warm-up
        peak_reset(torch.device("cpu"))
        t0 = time.perf_counter()
        for _ in range(max(repeats, 1)):
            out = model(xb, w=wb)
        t = (time.perf_counter() - t0) / (max(repeats, 1) * b)
        diff = float((out[:1] - out_naive[:1].cpu()).abs().max())
        rows.append((f"onnxruntime CPU (OnnxFaceModel) b={b}", b, t, peak_mib(torch.device("cpu")), t_naive / t, diff))
    return rows


def export_synthetic(state_dict, folder) -> Path:
    """The synthetic restoration weights exported as ``codeformer weights export --onnx`` does."""
    from ..models.onnx_export import export_onnx
    return export_onnx({"params_ema": state_dict}, Path(folder) / "codeformer.onnx")


def build(state_dict, device, dtype, channels_last, options=None):
    model = load_model({"params_ema": state_dict}, device=device, dtype=dtype, options=options)
    if channels_last:
        model.set_memory_format(torch.channels_last)
    return model


# -- figures for tools/gpu_check.py (functions returning numbers; the script prints the tables) -------
def event_times(fn, warmup: int, repeats: int) -> list:
    """Milliseconds per call of ``fn`` (CUDA events around each call) after ``warmup`` calls."""
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


def device_ceilings(device) -> dict:
    """The two ceilings of a CUDA device: bf16 matrix product rate (TFLOP/s, 8192^3 on random data)
    and device-to-device copy bandwidth (TB/s, 2 GiB). Empty off CUDA."""
    import statistics
    dev = torch.device(device)
    if dev.type != "cuda":
        return {}
    def matmul_ms():
        a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        return statistics.median(event_times(lambda: a @ b, 3, 10))

    def copy_ms():
        src = torch.randn(2 ** 29, device=dev, dtype=torch.float32)
        dst = torch.empty_like(src)
        return statistics.median(event_times(lambda: dst.copy_(src), 2, 10))

    res = {"bf16_matmul_tflops": round(2 * 8192 ** 3 / (matmul_ms() / 1e3) / 1e12, 1)}
    torch.cuda.empty_cache()
    res["copy_tb_s"] = round(2 * 2 ** 29 * 4 / (copy_ms() / 1e3) / 1e12, 2)
    torch.cuda.empty_cache()
    return res


def time_forward(model, x, batch: int, device, min_repeats: int = 3, target_s: float = 1.0, warmup: int = 2):
    """The forward at ``batch`` with a fresh per-sample w on every call ("live w"): median seconds
    per call (CUDA events on CUDA), peak MiB (CUDA; NaN elsewhere), the last output and the number
    of timed calls (at least ``min_repeats``, more until ``target_s``, at most 20)."""
    import statistics
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


def forward_grid(state_dict, device, dtypes, layouts, batches, quick: bool = False, keep_going=None,
                 log=print) -> list:
    """``time_forward`` over dtype x channels-last x batch (512x512 inputs): one dict per point
    (faces/s, s/call, peak MiB, finite output, or the out-of-memory error). ``keep_going()`` False
    skips the remaining points."""
    dev = torch.device(device)
    x = (torch.rand(max(batches), 3, 512, 512, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(dev)
    res = []
    for dtype in dtypes:
        model = build(state_dict, dev, dtype, channels_last=False)
        for cl in layouts:
            model.set_memory_format(torch.channels_last if cl else torch.contiguous_format)
            for b in batches:
                if keep_going is not None and not keep_going():
                    log(f"bench: time budget reached, skipping {dtype} cl={cl} b={b}")
                    continue
                try:
                    t, peak, out, n = time_forward(model, x, b, dev, min_repeats=1 if quick else 3,
                                                   target_s=0.0 if quick else 1.0, warmup=1 if quick else 2)
                    r = dict(dtype=dtype, channels_last=cl, batch=b, s_per_call=t, faces_s=b / t, peak_mib=peak,
                             repeats=n, finite=bool(torch.isfinite(out).all()))
                except torch.OutOfMemoryError as exc:
                    r = dict(dtype=dtype, channels_last=cl, batch=b, error=f"out of memory: {exc}"[:200])
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                res.append(r)
                log("bench", r)
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return res


def profile_forward(model, batch: int, device, calls: int = 3) -> dict:
    """torch.profiler over ``calls`` forwards (live w): the top 15 ops by self device time (CPU
    time off CUDA) per forward, wall and busy milliseconds per forward, and the profiler's table."""
    from torch.profiler import ProfilerActivity, profile
    dev = torch.device(device)
    x = (torch.rand(batch, 3, 512, 512, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch.inference_mode():
        model(x, w=torch.rand(batch, device=dev))
        sync(dev)
        with profile(activities=acts) as prof:
            t0 = time.perf_counter()
            for _ in range(calls):
                model(x, w=torch.rand(batch, device=dev) * 0.9 + 0.05)
            sync(dev)
            wall = time.perf_counter() - t0
    ka = prof.key_averages()
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    try:
        table = ka.table(sort_by=key, row_limit=15, max_name_column_width=60)
    except (AttributeError, KeyError):
        key = "self_cuda_time_total"
        table = ka.table(sort_by=key, row_limit=15, max_name_column_width=60)
    busy = sum(float(getattr(e, key, 0.0) or 0.0) for e in ka)
    top = sorted(ka, key=lambda e: -float(getattr(e, key, 0.0) or 0.0))[:15]
    ops = [dict(op=e.key[:60], calls=e.count // calls, ms=float(getattr(e, key, 0.0) or 0.0) / 1e3 / calls,
                share=100 * float(getattr(e, key, 0.0) or 0.0) / max(busy, 1e-9)) for e in top]
    return {"wall_ms_per_call": wall * 1e3 / calls, "busy_ms_per_call": busy / 1e3 / calls, "top": ops,
            "table": table}


def compile_forward(model, batch: int, device, backend: str = "inductor", quick: bool = False) -> dict:
    """torch.compile (default mode, dynamic=False) of the forward's body: compile + first call
    seconds, faces/s compiled (live w), peak MiB, and the largest difference from the eager model."""
    dev = torch.device(device)
    # compile the body of forward (its inference_mode decorator stays outside, around the call)
    body = getattr(type(model).forward, "__wrapped__", type(model).forward)
    fwd = torch.compile(lambda xb, w, _m=model: body(_m, xb, w), dynamic=False, backend=backend)
    x = (torch.rand(batch, 3, 512, 512, generator=torch.Generator().manual_seed(2)) * 2 - 1).to(dev)
    w0 = torch.full((batch,), 0.5, device=dev)
    t0 = time.perf_counter()
    with torch.inference_mode():
        got = fwd(x, w0)
        sync(dev)
        compile_s = time.perf_counter() - t0
        want = model(x, w=w0)
        diff = float((got.float() - want.float()).abs().max())
    t, peak, _, n = time_forward(lambda xb, w: fwd(xb, w), x, batch, dev, min_repeats=1 if quick else 3,
                                 target_s=0.0 if quick else 1.0, warmup=1)
    return dict(batch=batch, compile_s=compile_s, faces_s=batch / t, peak_mib=peak, max_diff=diff, repeats=n)


def interleaved_best(fns: dict, repeats: int, device) -> dict:
    """Best seconds of each of ``fns`` (name -> no-argument call), called in turn ``repeats`` times
    so that machine load falls on all alike."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: min(t) for name, t in times.items()}


def float64_pieces(model, x, repeats: int) -> dict:
    """Best seconds of the pieces the float64 logits path runs in float64 (``PRECISE_ENCODER_BLOCKS``,
    the token embedding and the first ``PRECISE_TRANSFORMER_LAYERS`` layers), one face, in the
    model's own dtype and as float64 copies: {piece: (best float32, best float64)}. Short pieces
    timed many times: the least noisy measure of the path's added arithmetic."""
    import copy
    pieces = {}
    with torch.inference_mode():
        h, inputs = x, {}
        for i, dtype in enumerate(model.encoder_dtypes):
            inputs[i] = h = h.to(dtype)
            h = model.encoder.run(h, i, i + 1)
        encoder64 = copy.deepcopy(model.encoder).double()
        for i in sorted(PRECISE_ENCODER_BLOCKS):
            h32, h64 = inputs[i].float(), inputs[i].double()
            best = interleaved_best({32: lambda h=h32, i=i: model.encoder.run(h, i, i + 1),
                                     64: lambda h=h64, i=i: encoder64.run(h, i, i + 1)}, repeats, x.device)
            pieces[f"encoder block {i}"] = (best[32], best[64])
        tokens = h.float().flatten(2).transpose(1, 2)
        head = torch.nn.ModuleList([model.feat_emb, *model.ft_layers[:PRECISE_TRANSFORMER_LAYERS]])
        head64 = copy.deepcopy(head).double()

        def run(mods, t, pos):
            t = mods[0](t)
            for layer in mods[1:]:
                t = layer(t, pos)
            return t
        pos32, pos64 = model.position_emb.unsqueeze(0), model.position_emb.unsqueeze(0).double()
        best = interleaved_best({32: lambda: run(head, tokens, pos32), 64: lambda: run(head64, tokens.double(), pos64)},
                                repeats, x.device)
        pieces[f"embedding + {PRECISE_TRANSFORMER_LAYERS} layers"] = (best[32], best[64])
    return pieces


def precise_logits_cost(state_dict, device, dtypes, rounds: int, w: float = 0.5) -> list:
    """The float64 logits path's cost per one-face forward: the pieces it runs in float64
    (``float64_pieces``), the two parts it changes (``encode``, ``predict_codes``) and the whole
    forward, off against on, each timed interleaved. Returns [(dtype, pieces, parts)], each a
    {name: (best off, best on)}; parts has "encode", "predict_codes" and "forward"."""
    x = (torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(device)
    rows = []
    for dtype in dtypes:
        models = {flag: build(state_dict, device, dtype, channels_last=False,
                              options=CodeFormerOptions(precise_logits=flag)) for flag in (False, True)}
        pieces, parts = float64_pieces(models[False], x, 25 * rounds), {}
        with torch.inference_mode():
            feats = {flag: m.encode(x.to(m.conv_dtype), True)[0] for flag, m in models.items()}  # makes the copies
            for part, fn, repeats in (("encode", lambda m, f: m.encode(x.to(m.conv_dtype), True), 4 * rounds),
                                      ("predict_codes", lambda m, f: m.predict_codes(f), 20 * rounds),
                                      ("forward", lambda m, f: m(x, w=w), rounds)):
                t = interleaved_best({flag: (lambda m=m, f=feats[flag], fn=fn: fn(m, f)) for flag, m in models.items()},
                                     repeats, device)
                parts[part] = (t[False], t[True])
        rows.append((str(dtype).replace("torch.", ""), pieces, parts))
        del models, feats
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    ap.add_argument("--dtype", default=None, help="auto, fp32, fp16, bf16 (default: auto)")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--repeats", type=int, default=1, help="timed passes per batch size")
    ap.add_argument("--w", type=float, default=0.5)
    ap.add_argument("--channels-last", action="store_true", help="channels-last convolutions (CUDA tensor cores)")
    ap.add_argument("--no-load-times", action="store_true", help="skip timing load_model on written files")
    ap.add_argument("--onnx", metavar="FILE", help="also time this exported file (codeformer weights export) with "
                    "ONNX Runtime on CPU through OnnxFaceModel, at each batch size; 'export': export the synthetic "
                    "weights first (needs the onnx extra)")
    ap.add_argument("--precise-logits-cost", type=int, default=0, metavar="N",
                    help="only time the float64 logits path: one face, its float64 pieces against float32, "
                         "and on vs off interleaved (the parts it changes, the whole forward), float32 and bf16")
    ap.add_argument("--cli-memory", action="store_true",
                    help="first set the command line's allocator policy (cli/memory.py), as `codeformer` does")
    args = ap.parse_args(argv)
    if args.cli_memory:
        from ..cli.memory import keep_freed_memory_for_reuse
        print(f"allocator policy of the command line set: {keep_freed_memory_for_reuse()}")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    batches = [int(b) for b in args.batches.split(",")]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(max(batches), 3, 512, 512, generator=gen) * 2 - 1).to(device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_model()}), "
          f"dtype {str(dtype).replace('torch.', '')}, w={args.w}, torch {torch.__version__}")

    state_dict = synth_state_dict(contract(architecture("codeformer", "restoration")).items())
    if args.precise_logits_cost:
        print(f"float64 logits path, one face, {args.precise_logits_cost} interleaved rounds "
              f"(threads {torch.get_num_threads()})")
        for name, pieces, parts in precise_logits_cost(state_dict, device, (torch.float32, torch.bfloat16),
                                                       args.precise_logits_cost, args.w):
            for part, (off, on) in [*((f"piece: {k}", v) for k, v in pieces.items()), *parts.items()]:
                print(f"{name:9s} {part:32s} off {off * 1e3:8.1f} ms  on {on * 1e3:8.1f} ms  "
                      f"+{(on - off) * 1e3:6.1f} ms")
            forward_off, forward_on = parts["forward"]
            changed = {k: v for k, v in parts.items() if k != "forward"}
            for what, times in (("pieces", pieces), ("parts", changed)):
                added = sum(on - off for off, on in times.values())
                print(f"{name:9s} cost from the {what}: +{added * 1e3:.1f} ms = {added / forward_off * 100:+.2f} % "
                      f"of a forward ({forward_off:.3f} s)")
            print(f"{name:9s} cost from the whole forward: {(forward_on / forward_off - 1) * 100:+.2f} %")
        return
    if not args.no_load_times:
        for name, seconds in load_times(state_dict):
            print(f"load_model {name:32s} {seconds:6.2f} s")
    naive = build(state_dict, device, torch.float32, channels_last=False, options=NAIVE)
    t_naive, mem_naive, out_naive = measure(naive, x, 1, args.w, device, max(args.repeats, 1))
    del naive
    model = build(state_dict, device, dtype, channels_last=args.channels_last)
    rows = [("naive baseline (b=1, fp32, no SDPA)", 1, t_naive, mem_naive, 1.0, 0.0)]
    for b in batches:
        t, mem, out = measure(model, x, b, args.w, device, args.repeats)
        diff = float((out[:1].float() - out_naive[:1]).abs().max())
        rows.append((f"codeformer_core b={b}", b, t, mem, t_naive / t, diff))
    if args.onnx:
        with tempfile.TemporaryDirectory() as tmp:
            path = export_synthetic(state_dict, tmp) if args.onnx == "export" else args.onnx
            rows += onnx_rows(path, x, batches, args.w, t_naive, out_naive, args.repeats)
    print(f"{'config':38s} {'faces/s':>8s} {'ms/face':>8s} {'peak MiB':>9s} {'vs naive':>9s} {'max|diff|':>10s}")
    for name, _b, t, mem, ratio, diff in rows:
        print(f"{name:38s} {1 / t:8.3f} {t * 1000:8.0f} {mem:9.0f} {ratio:8.2f}x {diff:10.2e}")


if __name__ == "__main__":
    main()
