"""codeformer_core: a self-contained PyTorch implementation of CodeFormer face restoration.

No ComfyUI, basicsr or facexlib imports; no network access except the explicit downloader.
Nothing process-wide is changed by a library call.

Main API
--------
``load_model(source, device=None, dtype=None, options=None) -> CodeFormer``
    ``source`` is a checkpoint path (.pth/.ckpt read with ``weights_only=True``, or
    .safetensors) or an in-memory state dict. The variant (restoration, colorization,
    inpainting) is detected from keys and shapes and exposed as ``model.variant``;
    ``options`` (``CodeFormerOptions``) choose how the instance computes.
``model(x, w=None, adain=None, return_codes=False)``
    ``x`` [B,3,512,512] in [-1, 1]; ``w`` fidelity (0 = strongest restoration, 1 = closest
    to the input), a float or a per-sample [B] tensor; ``None`` = the variant's default.
    Returns the raw output [B,3,512,512], or ``(out, logits [B,256,K], idx [B,256])``.
``load_network(source, kind=None)``, ``load_retinaface``, ``load_parsenet``
    The one loading path every network goes through (models/registry.py; the thin loaders in models/loader.py).
``read_state_dict``, ``detect_variant``, ``convert_to_safetensors``, ``save_safetensors``
    Safe reading, recognition and conversion of weight files.
``VARIANTS``
    Per-variant configuration (codebook size, fusion resolutions, default ``w``/AdaIN).
``FaceBatch``
    Detected faces of a batch of frames, with their alignment (faces/batch.py).
Errors
    ``CodeFormerError`` is the base of every error raised on purpose; ``CheckpointError``,
    ``WrongVariantError(have, want)``, ``InputError`` ... (errors.py).

Submodules are imported lazily so that importing the package stays cheap.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_ERRORS = ("CodeFormerError", "CheckpointError", "WrongVariantError", "InputError", "ImageReadError",
           "VideoError", "WeightsError", "UnknownWeightError", "MissingWeightError", "CorruptWeightError",
           "DownloadError")
_EXPORTS = {
    "load_model": "models.loader", "resolve_device": "models.loader", "resolve_dtype": "models.loader",
    "CodeFormer": "models.codeformer", "CodeFormerOptions": "models.codeformer",
    "VARIANTS": "models.codeformer", "VariantConfig": "models.codeformer",
    "load_network": "models.registry", "detect_variant": "models.registry",
    "convert_to_safetensors": "models.registry",
    "load_retinaface": "models.loader", "load_parsenet": "models.loader",
    "read_state_dict": "models.checkpoint", "save_safetensors": "models.checkpoint",
    "FaceBatch": "faces.batch",
    **{name: "errors" for name in _ERRORS},
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'codeformer_core' has no attribute {name!r}")
