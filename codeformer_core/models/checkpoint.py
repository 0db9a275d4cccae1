"""Weight files <-> state dicts: safe reading, canonical keys, writing .safetensors.

A checkpoint is only ever read as tensors: ``.pth``/``.ckpt`` through
``torch.load(weights_only=True)`` (a pickle that tries to build arbitrary objects is
refused before anything runs) or ``.safetensors``. ``read_state_dict`` then canonicalises
once: the tensors are unwrapped from ``params_ema``/``params``/``state_dict``/``model``
nesting and a training wrapper's prefix shared by every key (``module.``, ``_orig_mod.``) is
stripped. What the tensors *are* is decided by ``registry.py`` from keys and shapes, never
from the file name.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import torch

from ..errors import CheckpointError

Tensor = torch.Tensor
StateDict = Dict[str, Tensor]
Source = Union[str, os.PathLike, Mapping[str, Tensor]]

NESTING_KEYS = ("params_ema", "params", "state_dict", "model")
# Prefixes a training wrapper puts on every key: DataParallel/DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


# -- reading -----------------------------------------------------------------------------------
def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) == 0:
        return "empty"
    if head[:2] == b"PK":
        return "zip"  # torch.save's default format
    if head[:1] == b"\x80":
        return "pickle"  # legacy torch.save / plain pickle
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return "unknown"


def describe_source(source: Source) -> str:
    """How messages name a source: its path, or "the given state dict"."""
    return "the given state dict" if isinstance(source, Mapping) else str(Path(source))


def read_state_dict(source: Source) -> StateDict:
    """The canonical tensors of a checkpoint file or dict (see the module docstring)."""
    return canonicalize(_read(source), describe_source(source))


def canonicalize(obj, where: str) -> StateDict:
    """Unwrap the nesting, then strip the wrapper prefixes; ``where`` names the source in errors."""
    return strip_wrapper_prefixes(_unwrap(obj, where), where)


def strip_wrapper_prefixes(state_dict: Mapping[str, Tensor], where: str = "the state dict") -> StateDict:
    """Drop ``WRAPPER_PREFIXES`` from the keys that start with them, key by key, as the reference
    loaders (basicsr, facexlib) do with ``module.``."""
    out = dict(state_dict)
    for prefix in WRAPPER_PREFIXES:
        if not any(k.startswith(prefix) for k in out):
            continue
        stripped = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in out.items()}
        if len(stripped) != len(out):
            twice = next(k for k in out if k.startswith(prefix) and k[len(prefix):] in out)
            raise CheckpointError(f"{where} holds '{twice}' and '{twice[len(prefix):]}': the same weight twice, "
                                  f"with and without the '{prefix}' prefix; re-save it with one copy")
        out = stripped
    return out


def _read(source: Source):
    """What the source holds: a (possibly nested) mapping, not yet canonical."""
    if isinstance(source, Mapping):
        return _tensors_from_arrays(source)
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"weight file not found: {path}")
    kind = _sniff(path)
    if kind == "empty":
        raise CheckpointError(f"{path} is empty (0 bytes): the download was probably interrupted; "
                              "delete it and download it again")
    if kind == "safetensors" or path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    if kind == "unknown":
        raise CheckpointError(f"{path} is neither a PyTorch checkpoint nor a safetensors file "
                              f"(it starts with bytes {_head_hex(path)}); "
                              f"expected a .pth/.ckpt/.safetensors weight file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message
        raise CheckpointError(_explain_load_failure(path, kind, exc)) from None
    return obj


def _tensors_from_arrays(obj):
    """numpy arrays (e.g. weights built with numpy) become tensors; nesting is kept."""
    if isinstance(obj, Mapping):
        return {k: _tensors_from_arrays(v) for k, v in obj.items()}
    if type(obj).__module__ == "numpy" and hasattr(obj, "dtype") and hasattr(obj, "shape"):
        return torch.from_numpy(obj)
    return obj


def _read_safetensors(path: Path) -> StateDict:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:  # pragma: no cover - safetensors is a declared dependency
        raise CheckpointError(f"reading {path} needs the 'safetensors' package: pip install safetensors") from exc
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); it may be truncated: "
                              "delete it and download or convert it again") from None


def _head_hex(path: Path) -> str:
    with open(path, "rb") as f:
        return f.read(8).hex(" ")


def _explain_load_failure(path: Path, kind: str, exc: Exception) -> str:
    text = str(exc)
    if "Weights only load failed" in text or "Unsupported global" in text or "UnpicklingError" in type(exc).__name__:
        first = next((ln.strip() for ln in text.splitlines() if "Unsupported" in ln or "GLOBAL" in ln), "")
        return (f"{path} was refused: it contains Python objects, not only tensors ({first or type(exc).__name__}). "
                "Loading it would run code from the file, so it was not loaded. Use the official weight "
                "file, or convert a trusted file to .safetensors first")
    if "central directory" in text or "failed reading" in text or isinstance(exc, EOFError) or "truncated" in text:
        return (f"{path} is truncated or corrupted ({text.splitlines()[0] if text else type(exc).__name__}); "
                f"size {path.stat().st_size} bytes. Delete it and download it again")
    first = text.splitlines()[0] if text else ""
    return f"{path} could not be read as a PyTorch checkpoint ({type(exc).__name__}: {first})"


def _unwrap(obj, where: str) -> StateDict:
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in NESTING_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    if isinstance(obj, Mapping):
        keys = ", ".join(list(map(str, obj.keys()))[:8])
        raise CheckpointError(f"{where} holds no tensors where weights were expected (top-level keys: {keys}); "
                              "expected a state dict, optionally under 'params_ema' or 'params'")
    raise CheckpointError(f"{where} holds a {type(obj).__name__}, not a state dict of tensors")


# -- writing -------------------------------------------------------------------------------------
def save_safetensors(state_dict: Mapping[str, Tensor], path: Union[str, os.PathLike],
                     fp16: bool = False, metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write tensors as .safetensors (atomic: temp file then rename)."""
    from safetensors.torch import save_file
    path = Path(path)
    tensors = {k: (v.half() if fp16 and v.is_floating_point() else v).detach().contiguous().cpu()
               for k, v in state_dict.items()}
    tmp = path.with_name(path.name + ".part")
    save_file(tensors, str(tmp), metadata=metadata or {})
    os.replace(tmp, path)
    return path

