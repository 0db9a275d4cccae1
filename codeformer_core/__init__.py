"""codeformer_core: a self-contained PyTorch implementation of CodeFormer face restoration.

No ComfyUI, basicsr or facexlib imports; no network access except the explicit downloader.

Main API
--------
``load_model(source, device=None, dtype=None) -> CodeFormer``
    ``source`` is a checkpoint path (.pth/.ckpt read with ``weights_only=True``, or
    .safetensors) or an in-memory state dict. The variant (restoration, colorization,
    inpainting) is detected from keys and shapes and exposed as ``model.variant``.
``model(x, w=None, adain=None, return_codes=False)``
    ``x`` [B,3,512,512] in [-1, 1]; ``w`` fidelity (0 = strongest restoration, 1 = closest
    to the input), a float or a per-sample [B] tensor; ``None`` = the variant's default.
    Returns the raw output [B,3,512,512], or ``(out, logits [B,256,K], idx [B,256])``.
``read_state_dict``, ``detect_variant``, ``convert_to_safetensors``, ``CheckpointError``
    Safe reading, recognition and conversion of weight files.
``VARIANTS``
    Per-variant configuration (codebook size, fusion resolutions, default ``w``/AdaIN).

Submodules are imported lazily so that importing the package stays cheap.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "models.loader", "resolve_device": "models.loader", "resolve_dtype": "models.loader",
    "CodeFormer": "models.codeformer", "VARIANTS": "models.codeformer", "VariantConfig": "models.codeformer",
    "read_state_dict": "models.checkpoint", "detect_variant": "models.checkpoint", "CheckpointError": "models.checkpoint",
    "convert_to_safetensors": "models.checkpoint", "save_safetensors": "models.checkpoint",
    "FaceBatch": "faces.batch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'codeformer_core' has no attribute {name!r}")
