"""Golden data for benchmarks, tools and tests (a development helper: nothing at run time imports it).

``Golden(variant)`` is one golden CodeFormer case: the repository's 4x-subsampled copy under
``tests/data/golden``, or a full set given by ``CODEFORMER_GOLDEN_DIR`` (the format of
``shared/golden``; ``CODEFORMER_GOLDEN_SALT`` picks its synthetic weights). The golden README's
rules (tolerances) are applied by the callers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .synthetic import synth_state_dict

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"          # the repository's test data (golden copies, face manifests, images)
GOLDEN_DIR = DATA / "golden"
FACE_DIR = DATA / "face_golden"
VARIANTS = ("restoration", "colorization", "inpainting")


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
            z = np.load(GOLDEN_DIR / f"{variant}.npz")
            self.arrays = {k.replace("_s4", ""): z[k] for k in z.files}
            # x is stored as the uint8 image it was made from; this is bit-exact.
            u8 = self.arrays.pop("x_u8")
            self.x = ((u8 / 255).astype(np.float32) - np.float32(0.5)) / np.float32(0.5)
            self.stride = 4
            self.manifest = json.loads((GOLDEN_DIR / f"manifest_{variant}.json").read_text())

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


def face_state_dict(manifest: str):
    """Synthetic RetinaFace / ParseNet weights from a manifest in tests/data/face_golden."""
    return synth_state_dict(json.loads((FACE_DIR / manifest).read_text()), face=True)
