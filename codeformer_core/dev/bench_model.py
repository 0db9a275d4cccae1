"""Benchmark: ``python -m codeformer_core.dev.bench_model [--device cuda] [--dtype fp16]``.

Prints how long ``load_model`` takes for a full-size ``codeformer.pth`` (the official format,
``{'params_ema': state_dict}``) and for the same tensors as ``.safetensors``, then faces/s and
peak memory for batches 1, 4 and 8 with the default ``CodeFormerOptions``, and for a naive
baseline instance (one face at a time, float32, contiguous layout, explicit softmax attention,
upsample-then-conv) measured in the same run, plus the largest output
difference between the two; ``--onnx FILE`` adds ONNX Runtime on CPU for an exported file. Weights are the synthetic golden formula: speed does not depend on
the values. The process keeps the default allocator policy, as inside ComfyUI; ``--cli-memory``
measures with the one the ``codeformer`` command sets at its start instead.
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch

from ..models.checkpoint import save_safetensors
from ..models.codeformer import CodeFormerOptions
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


def onnx_row(path, x, batches, w, t_naive, out_naive, repeats):
    """ONNX Runtime (CPU) on an exported file: a row like the PyTorch ones."""
    import numpy as np
    import onnxruntime as ort
    b = max(batches)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"input": x[:b].cpu().numpy(), "w": np.full(b, w, np.float32)}
    out = sess.run(None, feed)[0]  # warm-up
    peak_reset(torch.device("cpu"))
    t0 = time.perf_counter()
    for _ in range(max(repeats, 1)):
        out = sess.run(None, feed)[0]
    t = (time.perf_counter() - t0) / (max(repeats, 1) * b)
    diff = float(np.abs(out[:1] - out_naive[:1].cpu().numpy()).max())
    return (f"onnxruntime CPU b={b}", b, t, peak_mib(torch.device("cpu")), t_naive / t, diff)


def build(state_dict, device, dtype, channels_last, options=None):
    model = load_model({"params_ema": state_dict}, device=device, dtype=dtype, options=options)
    if channels_last:
        model.set_memory_format(torch.channels_last)
    return model


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
                    "ONNX Runtime on CPU, at the largest batch (needs the onnx extra)")
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
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'threads=%d' % torch.get_num_threads()}), "
          f"dtype {str(dtype).replace('torch.', '')}, w={args.w}, torch {torch.__version__}")

    state_dict = synth_state_dict(contract(architecture("codeformer", "restoration")).items())
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
        rows.append(onnx_row(args.onnx, x, batches, args.w, t_naive, out_naive, args.repeats))
    print(f"{'config':38s} {'faces/s':>8s} {'ms/face':>8s} {'peak MiB':>9s} {'vs naive':>9s} {'max|diff|':>10s}")
    for name, _b, t, mem, ratio, diff in rows:
        print(f"{name:38s} {1 / t:8.3f} {t * 1000:8.0f} {mem:9.0f} {ratio:8.2f}x {diff:10.2e}")


if __name__ == "__main__":
    main()
