"""CUDA half precision against the golden vectors (runs where a GPU is present, skipped elsewhere)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from codeformer_core import load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_cuda_matches_golden(golden, dtype):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    g = golden("restoration")
    model = load_model({"params_ema": g.state_dict()}, device="cuda", dtype=dtype)
    x = torch.from_numpy(g.x).cuda()
    out, logits, idx = model(torch.cat([x, x.flip(-1)]), w=0.5, adain=True, return_codes=True)
    out = g.sample(out[:1].float().cpu().numpy())
    same_codes = (idx[:1].cpu().numpy() == g.arrays["idx"]).mean()
    err = np.abs(out - g.out(0.5))
    print(f"\ncuda {dtype}: out max {err.max():.2e} mean {err.mean():.2e}, codes equal {same_codes:.1%}")
    if dtype == "fp32":
        assert err.max() <= 1e-4 and err.mean() <= 5e-6 and same_codes == 1.0
    else:  # half-precision convolutions: same codes (norms and transformer stay float32), small error
        assert same_codes >= 0.98 and err.mean() < 2e-2


def test_out_of_memory_halves_the_network_batch_on_cuda(golden):
    """A real CUDA out-of-memory error (memory capped for this process) makes run_network halve
    its batch and retry; the result equals face-by-face runs."""
    from codeformer_core.pipeline import run_network
    model = load_model({"params_ema": golden("restoration").state_dict()}, device="cuda", dtype="fp16")
    crops = torch.rand(8, 3, 512, 512, generator=torch.Generator().manual_seed(0)).cuda()
    one = torch.cat([run_network(model, crops[i:i + 1], w=0.5, batch_size=1) for i in range(8)])
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run_network(model, crops[:1], w=0.5, batch_size=1)
    per_face = torch.cuda.max_memory_allocated() - base
    sizes = []
    hook = model.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[0]))
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    # room for about two faces' activations: eight cannot fit, one can
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved() + 2.5 * per_face) / total))
    try:
        out = run_network(model, crops, w=0.5, batch_size=8)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        hook.remove()
    assert sizes[0] == 8 and min(sizes) < 8, f"batch sizes tried: {sizes} (one face: {per_face / 2**20:.0f} MiB)"
    assert torch.isfinite(out).all()
    assert (out - one).abs().mean() < 2e-3


def test_aligned_pipeline_on_cuda_matches_cpu(golden):
    """restore_images end to end (aligned input, fp32 without TF32) on CUDA equals the CPU run."""
    from codeformer_core.pipeline import restore_images
    g = golden("restoration")
    sd = {"params_ema": g.state_dict()}
    # the golden input: its code margins are known, so both devices pick the same codes
    images = torch.from_numpy(g.x).permute(0, 2, 3, 1).add(1).div(2)
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        gpu = restore_images(images, load_model(sd, device="cuda", dtype="fp32"), has_aligned=True, w=0.5)
    finally:
        torch.backends.cudnn.allow_tf32 = old
    cpu = restore_images(images, load_model(sd, device="cpu"), has_aligned=True, w=0.5)
    assert gpu.images.device.type == "cpu" and gpu.face_counts == cpu.face_counts == [1]
    assert (gpu.images - cpu.images).abs().max() < 1e-3
