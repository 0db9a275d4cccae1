"""Reading weight files safely and recognising what they hold.

A checkpoint is only ever read as tensors: ``.pth``/``.ckpt`` through
``torch.load(weights_only=True)`` (a pickle that tries to build arbitrary objects is
refused before anything runs) or ``.safetensors``. What a file *is* is decided from its
keys and shapes, never from its name.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import torch

from .codeformer import VARIANTS, expected_shapes
from ..errors import CheckpointError

Tensor = torch.Tensor
StateDict = Dict[str, Tensor]
Source = Union[str, os.PathLike, Mapping[str, Tensor]]

NESTING_KEYS = ("params_ema", "params", "state_dict", "model")


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


def read_state_dict(source: Source) -> StateDict:
    """Tensors of a checkpoint file or dict, unwrapped from ``params_ema``/``params``/... nesting."""
    if isinstance(source, Mapping):
        return _unwrap(_tensors_from_arrays(source), "the given state dict")
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"weight file not found: {path}")
    kind = _sniff(path)
    if kind == "empty":
        raise CheckpointError(f"{path} is empty (0 bytes): the download was probably interrupted; "
                              "delete it and download it again")
    if kind == "safetensors" or path.suffix.lower() == ".safetensors":
        return _unwrap(_read_safetensors(path), str(path))
    if kind == "unknown":
        raise CheckpointError(f"{path} is neither a PyTorch checkpoint nor a safetensors file "
                              f"(it starts with bytes {_head_hex(path)}); expected a .pth/.ckpt/.safetensors weight file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message
        raise CheckpointError(_explain_load_failure(path, kind, exc)) from None
    return _unwrap(obj, str(path))


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
    return f"{path} could not be read as a PyTorch checkpoint ({type(exc).__name__}: {text.splitlines()[0] if text else ''})"


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


# -- recognising ---------------------------------------------------------------------------------
_FAMILIES = (  # (what it looks like, a key prefix or name that gives it away)
    ("a CodeFormer checkpoint", "quantize.embedding.weight"),
    ("a GFPGAN checkpoint", "stylegan_decoder."),
    ("a GFPGAN checkpoint", "conv_body_first."),
    ("a Real-ESRGAN / ESRGAN (RRDBNet) upscaler", "conv_first."),
    ("a Real-ESRGAN / ESRGAN (RRDBNet) upscaler", "model.0.weight"),
    ("a RetinaFace face detector", "ClassHead."),
    ("a RetinaFace face detector", "body.conv1."),
    ("a ParseNet face parser", "out_mask_conv."),
    ("a BiSeNet face parser", "cp.resnet."),
    ("a RestoreFormer checkpoint", "vqvae."),
    ("a Stable Diffusion / LDM checkpoint", "model.diffusion_model."),
)


def describe(state_dict: Mapping[str, Tensor]) -> str:
    """Best guess of the model family, for error messages."""
    keys = list(state_dict)
    for name, marker in _FAMILIES:
        if any(k == marker or k.startswith(marker) or k.startswith("module." + marker) for k in keys):
            return name
    n = sum(int(v.numel()) for v in state_dict.values() if isinstance(v, Tensor))
    return f"an unknown model ({len(keys)} tensors, {n:,} values, first key '{keys[0] if keys else ''}')"


_EXPECTED_CACHE: Dict[str, Dict[str, Tuple[int, ...]]] = {}


def _expected(variant: str) -> Dict[str, Tuple[int, ...]]:
    if variant not in _EXPECTED_CACHE:
        _EXPECTED_CACHE[variant] = expected_shapes(variant)
    return _EXPECTED_CACHE[variant]


def _mismatch(state_dict: Mapping[str, Tensor], variant: str) -> Tuple[list, list, list]:
    exp = _expected(variant)
    missing = [k for k in exp if k not in state_dict]
    extra = [k for k in state_dict if k not in exp]
    wrong = [(k, tuple(state_dict[k].shape), exp[k]) for k in exp
             if k in state_dict and tuple(state_dict[k].shape) != exp[k]]
    return missing, extra, wrong


def detect_variant(state_dict: Mapping[str, Tensor], where: str = "the checkpoint") -> str:
    """The CodeFormer variant whose exact key/shape contract the state dict meets."""
    if "quantize.embedding.weight" not in state_dict:
        raise CheckpointError(f"{where} looks like {describe(state_dict)}, not CodeFormer; expected "
                              f"codeformer.pth, codeformer_colorization.pth or codeformer_inpainting.pth "
                              "(a state dict with 'quantize.embedding.weight')")
    scores = {}
    for variant in VARIANTS:
        missing, extra, wrong = _mismatch(state_dict, variant)
        if not (missing or extra or wrong):
            return variant
        scores[variant] = (len(missing) + len(extra) + len(wrong), missing, extra, wrong)
    best = min(scores, key=lambda v: scores[v][0])
    _, missing, extra, wrong = scores[best]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if extra:
        parts.append(f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})")
    if wrong:
        parts.append("wrong shapes: " + "; ".join(f"{k} is {list(a)}, expected {list(b)}" for k, a, b in wrong[:3]))
    raise CheckpointError(f"{where} is a CodeFormer-like state dict that matches no published variant; "
                          f"closest is '{best}' but {', '.join(parts)}. The file may be damaged or "
                          "from a modified model; re-download the official file")


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


def convert_to_safetensors(source: Source, dest: Union[str, os.PathLike, None] = None,
                           fp16: bool = False) -> Path:
    """Convert a CodeFormer checkpoint to .safetensors; the variant is checked first."""
    state_dict = read_state_dict(source)
    variant = detect_variant(state_dict, str(source) if not isinstance(source, Mapping) else "the state dict")
    if dest is None:
        if isinstance(source, Mapping):
            raise ValueError("dest is required when converting an in-memory state dict")
        stem = Path(source).with_suffix("")
        dest = stem.with_name(stem.name + ("_fp16" if fp16 else "") + ".safetensors")
    return save_safetensors(state_dict, dest, fp16=fp16, metadata={"variant": variant, "format": "codeformer"})
