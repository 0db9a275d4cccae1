"""Deterministic synthetic weights (the golden-vector formula, SALT configurable).

Real checkpoints cannot be downloaded on test machines, so tests and benchmarks build
weights from this formula. It reproduces, bit for bit, the tensors that the golden vectors
(``tests/data/golden``, ``tests/data/face_golden``) were computed with: for each entry, a
splitmix64-style hash of (crc32(name) XOR salt, element index) mapped to [-1, 1), scaled by the
rules in ``synth_tensor`` and the per-name gains below (docs/models.md, "Golden data").
"""
from __future__ import annotations

import re
import zlib
from typing import Iterable, Mapping, Sequence

import numpy as np

_MASK64 = 0xFFFFFFFFFFFFFFFF

# (regex full-matched against the entry name, gain); first match wins.
CODEFORMER_GAINS = (
    (r"encoder\.blocks\.0\.(weight|bias)", 0.01),
    (r"feat_emb\.(weight|bias)", 0.01),
    (r"quantize\.embedding\.weight", 0.01),
    (r".*\.in_proj_weight", 2.0),
    (r"fuse_convs_dict\.\d+\.(scale|shift)\.2\.(weight|bias)", 0.3),
    (r"generator\.blocks\.24\.(weight|bias)", 0.5),
)
FACE_GAINS = (
    (r"body\.conv1\.weight", 2.0 ** -6),
    (r"out_mask_conv\.conv2d\.weight", 2.0 ** -4),
)


def uniform_stream(name: str, n: int, salt: int = 0) -> np.ndarray:
    """splitmix64-style hash of (name, index) mapped to float64 in [-1, 1)."""
    u64 = np.uint64
    seed = u64((zlib.crc32(name.encode("utf-8")) ^ int(salt)) & _MASK64)
    with np.errstate(over="ignore"):
        h = np.arange(n, dtype=u64) * u64(0x9E3779B97F4A7C15) + seed * u64(0xBF58476D1CE4E5B9)
        h ^= h >> u64(30)
        h *= u64(0xBF58476D1CE4E5B9)
        h ^= h >> u64(27)
        h *= u64(0x94D049BB133111EB)
        h ^= h >> u64(31)
    return (h >> u64(11)).astype(np.float64) / 2.0 ** 53 * 2.0 - 1.0


def _gain(name: str, table) -> float:
    return next((g for pattern, g in table if re.fullmatch(pattern, name)), 1.0)


def synth_tensor(name: str, shape: Sequence[int], salt: int = 0, face: bool = False) -> np.ndarray:
    """One state-dict entry. ``face=True`` adds the BatchNorm-buffer rules and face gains."""
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if face and name.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    u = uniform_stream(name, n, salt).reshape(shape)
    if face and name.endswith("running_var"):
        return (1.0 + 0.1 * np.abs(u)).astype(np.float32)
    if name == "quantize.embedding.weight":
        v = u
    elif name == "position_emb":
        v = np.sqrt(3.0) * u
    elif len(shape) >= 2:
        v = u * np.sqrt(3.0 / int(np.prod(shape[1:])))
    elif name.endswith("weight"):
        v = 1.0 + 0.1 * u
    else:
        v = 0.1 * u
    v = (_gain(name, CODEFORMER_GAINS) * v).astype(np.float32)
    if face:
        g = _gain(name, FACE_GAINS)
        if g != 1.0:
            v = (np.float64(g) * v.astype(np.float64)).astype(np.float32)
    return v


def synth_state_dict(manifest: Iterable[Sequence], salt: int = 0, face: bool = False,
                     as_torch: bool = True) -> Mapping[str, object]:
    """``manifest``: iterable of ``(name, shape[, dtype])``; returns name -> tensor (or ndarray)."""
    out = {}
    for entry in manifest:
        arr = synth_tensor(entry[0], entry[1], salt, face)
        if as_torch:
            import torch
            arr = torch.from_numpy(arr)
        out[entry[0]] = arr
    return out
