"""Throughput benchmark: ``python -m codeformer_core.bench [--device cuda] [--dtype fp16]``.

Prints faces/s and peak memory for batches 1, 4 and 8 with the project's settings, and for a
naive baseline (one face at a time, float32, contiguous layout, explicit softmax attention)
measured in the same run, plus the largest output difference between the two.
Weights are the synthetic golden formula: speed does not depend on the values.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from ..models.codeformer import AttnBlock, CodeFormer, Upsample, expected_shapes
from ..cpu_memory import retain_freed_memory
from ..models.loader import resolve_device, resolve_dtype
from .synthetic import synth_state_dict


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the process's peak RSS (VmHWM)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def naive_mode():
    """Explicit softmax attention, upsample-then-conv, plain float32 everywhere and the default
    allocator policy: the model as a straightforward port would run it."""
    switches = ((AttnBlock, "use_sdpa"), (Upsample, "fold"), (CodeFormer, "retain_cpu_memory"),
                (CodeFormer, "precise_encoder_tail"))
    for owner, name in switches:
        setattr(owner, name, False)
    try:
        yield
    finally:
        for owner, name in switches:
            setattr(owner, name, True)


def measure(model, x, batch, w, device, repeats, naive=False):
    """Seconds per face over ``repeats`` timed passes (after one warm-up), and peak MiB."""
    # ours keeps freed memory across the warm-up and timed passes, as run_network does across batches
    ctx = naive_mode() if naive else retain_freed_memory()
    with ctx, torch.inference_mode():
        xb = x[:batch]
        model(xb, w=w)  # warm-up (allocator, kernel selection)
        _sync(device)
        _peak_reset(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = model(xb, w=w)
        _sync(device)
        dt = (time.perf_counter() - t0) / (repeats * batch)
    return dt, _peak_mib(device), out


def build(variant, device, dtype, channels_last):
    sd = synth_state_dict(expected_shapes(variant).items())
    model = CodeFormer(variant)
    model.load_state_dict(sd)
    model.eval().requires_grad_(False).to(device)
    if dtype != torch.float32:
        model.set_dtype(dtype)
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
    args = ap.parse_args(argv)
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

    naive = build("restoration", device, torch.float32, channels_last=False)
    t_naive, mem_naive, out_naive = measure(naive, x, 1, args.w, device, max(args.repeats, 1), naive=True)
    del naive
    model = build("restoration", device, dtype, channels_last=args.channels_last)
    rows = [("naive baseline (b=1, fp32, no SDPA)", 1, t_naive, mem_naive, 1.0, 0.0)]
    for b in batches:
        t, mem, out = measure(model, x, b, args.w, device, args.repeats)
        diff = float((out[:1].float() - out_naive[:1]).abs().max())
        rows.append((f"codeformer_core b={b}", b, t, mem, t_naive / t, diff))
    print(f"{'config':38s} {'faces/s':>8s} {'ms/face':>8s} {'peak MiB':>9s} {'vs naive':>9s} {'max|diff|':>10s}")
    for name, _b, t, mem, ratio, diff in rows:
        print(f"{name:38s} {1 / t:8.3f} {t * 1000:8.0f} {mem:9.0f} {ratio:8.2f}x {diff:10.2e}")


if __name__ == "__main__":
    main()
