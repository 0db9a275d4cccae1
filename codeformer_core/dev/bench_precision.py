"""Benchmark: reduced-precision policies against float32 on the golden restoration input.

    python -m codeformer_core.dev.bench_precision [--device cpu] [--policies NAME,...] [--dtypes bf16,fp16]
                                                  [--repeats 1]

For each policy (``models.precision.CANDIDATES``: which encoder blocks run reduced; the generator
and fusion convolutions always do) and dtype: share of the golden code indices kept, largest and
mean absolute output error against the golden float32 output (w = 0.5, AdaIN, on the stored
4x-subsampled grid), and seconds per face, beside float32 in the same run. fp16 runs natively
where the device has fast fp16 convolutions (CUDA); on a CPU it is emulated (weights and
activations rounded to fp16 at each convolution, computed in float32: agreement and error only,
no speed).
"""
from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch

from ..models.loader import load_model, resolve_device
from ..models.precision import CANDIDATES, emulate_fp16
from .bench_model import sync
from .bench_pipeline import load_avg
from .golden import Golden

W = 0.5


def golden_case():
    """The golden restoration case (dev/golden.py): input, codes, output at w = 0.5 on the stored
    grid, synthetic weights."""
    g = Golden("restoration")
    return torch.from_numpy(g.x), g.arrays["idx"], g.out(W), g.state_dict(), g


def run(model, x, repeats: int):
    """Output, codes and seconds per face: the best of the measured pass and ``repeats`` more
    (with 0, the measured pass alone, warm-up included, times it)."""
    times = []
    with torch.inference_mode():
        for i in range(1 + repeats):
            sync(x.device)
            t0 = time.perf_counter()
            result = model(x, w=W, adain=True, return_codes=True)
            sync(x.device)
            times.append(time.perf_counter() - t0)
            if i == 0:
                out, _, idx = result
    return out.float().cpu().numpy(), idx.cpu().numpy(), min(times) / x.shape[0]


def speed_rows(sd, x, n: int) -> None:
    """float32 vs ``dtype="bf16"`` (the chosen policy), interleaved passes, best of each."""
    models = {d: load_model({"params_ema": sd}, device=x.device, dtype=d) for d in ("fp32", "bf16")}
    times = {d: [] for d in models}
    for _ in range(n):
        for d, model in models.items():
            times[d].append(run(model, x, 0)[2])
    t32, t16 = min(times["fp32"]), min(times["bf16"])
    print(f"speed, interleaved best of {n}: fp32 {t32:.2f} s/face ({1 / t32:.3f} faces/s), bf16 {t16:.2f} s/face "
          f"({1 / t16:.3f} faces/s): {t32 / t16:.2f}x   [{load_avg()}]", flush=True)


# -- figures for tools/gpu_check.py ------------------------------------------------------------------
@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 matmuls and convolutions on CUDA on or off for the duration (restored after)."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def golden_fidelity(g, state_dict, device, configs, ws) -> list:
    """A golden case ``g`` (dev/golden.Golden) through the model in each config (dtype, tf32,
    channels_last) at each w: share of golden codes kept, output max / mean error and logits max
    error against the float32 golden outputs, and the rule: float32 without TF32 must meet the
    golden README's (max 1e-4, mean 5e-6, every code); others tests/test_cuda.py's half rule
    (codes >= 98 %, mean < 2e-2, finite)."""
    dev = torch.device(device)
    adain = g.variant != "inpainting"
    x = torch.from_numpy(g.x).to(dev)
    res = []
    for dtype, use_tf32, cl in configs:
        with tf32(use_tf32):
            model = load_model({"params_ema": state_dict}, device=dev, dtype=dtype)
            if cl:
                model.set_memory_format(torch.channels_last)
            for w in ws:
                with torch.inference_mode():
                    out, logits, idx = model(x, w=w, adain=adain, return_codes=True)
                out = g.sample(out.float().cpu().numpy())
                err = np.abs(out.astype(np.float64) - g.out(w))
                lerr = np.abs(logits.float().cpu().numpy().astype(np.float64) - g.arrays["logits"])
                codes = float((idx.cpu().numpy() == g.arrays["idx"]).mean())
                strict = dtype == "fp32" and not use_tf32
                ok = (err.max() <= 1e-4 and err.mean() <= 5e-6 and codes == 1.0) if strict else \
                    (codes >= 0.98 and err.mean() < 2e-2 and bool(np.isfinite(out).all()))
                name = dtype + ("+tf32" if use_tf32 else "") + (" CL" if cl else "")
                res.append(dict(variant=g.variant, w=w, config=name, codes=codes, out_max=float(err.max()),
                                out_mean=float(err.mean()), logits_max=float(lerr.max()), ok=bool(ok)))
            del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--policies", default=",".join(CANDIDATES), help="comma-separated names of precision.CANDIDATES")
    ap.add_argument("--dtypes", default="bf16,fp16")
    ap.add_argument("--repeats", type=int, default=0, help="more timed passes after the measured one")
    ap.add_argument("--speed", type=int, default=0, metavar="N",
                    help="also time float32 and the chosen bf16 policy N times each, interleaved (best of)")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    x, idx_ref, out_ref, sd, g = golden_case()
    x = x.to(device)
    rows = []

    def row(name, dtype, model, timed=True):
        out, idx, dt = run(model, x, args.repeats if timed else 0)
        err = np.abs(g.sample(out) - out_ref)
        rows.append((name, dtype, float((idx == idx_ref).mean()), float(err.max()), float(err.mean()),
                     dt if timed else float("nan")))
        print(f"{name:26s} {dtype:10s} codes {rows[-1][2] * 100:6.2f} %  out max {rows[-1][3]:.2e} "
              f"mean {rows[-1][4]:.2e}  {rows[-1][5]:.2f} s/face  [{load_avg()}]", flush=True)

    row("float32", "fp32", load_model({"params_ema": sd}, device=device, dtype="fp32"))
    for name in args.policies.split(","):
        blocks = CANDIDATES[name]
        for dtype in args.dtypes.split(","):
            emulate = dtype == "fp16" and device.type == "cpu"
            model = load_model({"params_ema": sd}, device=device, dtype="fp32")
            if emulate:
                emulate_fp16(model, blocks)
            else:
                model.set_dtype({"bf16": torch.bfloat16, "fp16": torch.float16}[dtype], blocks)
            row(name, dtype + (" (emul.)" if emulate else ""), model, timed=not emulate)
            del model
    if args.speed:
        speed_rows(sd, x, args.speed)
    t32 = rows[0][5]
    print(f"\n{'policy':26s} {'dtype':12s} {'codes kept':>10s} {'out max':>9s} {'out mean':>9s} "
          f"{'s/face':>7s} {'vs fp32':>8s}")
    for name, dtype, agree, emax, emean, dt in rows:
        print(f"{name:26s} {dtype:12s} {agree * 100:9.2f}% {emax:9.2e} {emean:9.2e} {dt:7.2f} {t32 / dt:7.2f}x")


if __name__ == "__main__":
    main()
