"""Shared fixtures: golden data and CodeFormer models with synthetic weights built in memory."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from codeformer_core.dev.synthetic import synth_state_dict

DATA = Path(__file__).parent / "data"
VARIANT_NAMES = ("restoration", "colorization", "inpainting")

torch.set_grad_enabled(False)


class Golden:
    """One golden case, from the repository's subsampled copy or a full set given by
    ``CODEFORMER_GOLDEN_DIR`` (same format as ``shared/golden``; ``CODEFORMER_GOLDEN_SALT``)."""

    def __init__(self, variant: str):
        full_dir = os.environ.get("CODEFORMER_GOLDEN_DIR")
        self.variant = variant
        self.salt = int(os.environ.get("CODEFORMER_GOLDEN_SALT", "0"))
        if full_dir:
            z = np.load(Path(full_dir) / f"{variant}.npz")
            self.arrays = {k: z[k] for k in z.files}
            self.x = self.arrays["x"]
            self.stride = 1
            self.manifest = json.loads((Path(full_dir) / f"manifest_{variant}.json").read_text())
        else:
            z = np.load(DATA / "golden" / f"{variant}.npz")
            self.arrays = {k.replace("_s4", ""): z[k] for k in z.files}
            # x is stored as the uint8 image it was made from; this is bit-exact.
            u8 = self.arrays.pop("x_u8")
            self.x = ((u8 / 255).astype(np.float32) - np.float32(0.5)) / np.float32(0.5)
            self.stride = 4
            self.manifest = json.loads((DATA / "golden" / f"manifest_{variant}.json").read_text())

    @property
    def ws(self):
        return sorted(float(k[5:]) for k in self.arrays if k.startswith("out_w"))

    def out(self, w: float) -> np.ndarray:
        return self.arrays[f"out_w{w}"]

    def sample(self, out: np.ndarray) -> np.ndarray:
        """Bring a full-size model output onto the stored grid."""
        return out[..., :: self.stride, :: self.stride]

    def state_dict(self):
        return synth_state_dict(self.manifest, salt=self.salt)


TOLERANCE = {  # golden README, section 7: (max abs, mean abs)
    "lq_feat": (1e-4, 5e-6), "logits": (3e-4, 3e-5), "quant_feat": (1e-4, 5e-6), "out": (1e-4, 5e-6),
}


def assert_close(name: str, got, want, tol=None):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert np.isfinite(got).all(), f"{name}: non-finite values"
    max_tol, mean_tol = tol or TOLERANCE[name.split("[")[0]]
    diff = np.abs(got - want)
    assert diff.max() <= max_tol and diff.mean() <= mean_tol, \
        f"{name}: max {diff.max():.3g} (<= {max_tol}), mean {diff.mean():.3g} (<= {mean_tol})"
    return float(diff.max()), float(diff.mean())


@pytest.fixture(scope="session")
def golden():
    cache = {}

    def get(variant):
        if variant not in cache:
            cache[variant] = Golden(variant)
        return cache[variant]
    return get


@pytest.fixture(scope="session")
def synthetic_model(golden):
    """``synthetic_model(variant)``: a CPU float32 model with the golden synthetic weights."""
    from codeformer_core import load_model
    cache = {}

    def get(variant):
        if variant not in cache:
            cache[variant] = load_model({"params_ema": golden(variant).state_dict()}, device="cpu")
        return cache[variant]
    return get


# Node-layer fixtures (the real ComfyUI, loaded headless; synthetic models folder); see tests/node_fixtures.py.
from node_fixtures import astronaut_image, comfy_base, comfyui, progress  # noqa: E402,F401
