"""The thin loaders, one per network kind, on top of the one loading path (``registry.load_network``):
``load_model`` (CodeFormer on the chosen device and precision), ``load_retinaface``, ``load_parsenet``.

Imports point one way in ``models/``: checkpoint.py / batchnorm.py / precision.py at the bottom,
the network modules (codeformer.py, retinaface.py, parsenet.py) next, registry.py, then this module
on top. No network module imports the registry or this module.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

import torch

from .batchnorm import fold_batchnorms
from .checkpoint import Source
from .codeformer import CodeFormer, CodeFormerOptions
from .parsenet import ParseNet
from .precision import REDUCED_ENCODER_BLOCKS
from .registry import load_network
from .retinaface import RetinaFace

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
          "float16": torch.float16, "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """``None``/"auto": CUDA, then MPS, then CPU."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # Linux /proc/cpuinfo flags of native bf16 arithmetic


def cpu_flags(cpuinfo: Optional[str] = None) -> Tuple[str, ...]:
    """The CPU's feature flags: the first ``flags`` line of ``cpuinfo`` (the text of /proc/cpuinfo,
    read when not given); empty where there is none (not Linux, no such line)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return ()
    line = next((ln for ln in cpuinfo.splitlines() if ln.split(":", 1)[0].strip() == "flags"), "")
    return tuple(line.split(":", 1)[1].split()) if ":" in line else ()


def cpu_has_native_bf16(flags: Union[str, Sequence[str], None] = None) -> bool:
    """Whether a CPU with these feature flags (a string "fpu avx2 ..." or a sequence; this CPU's
    when not given) computes bf16 natively: avx512_bf16 or amx_bf16. Without them bf16
    convolutions are emulated and no faster than float32."""
    if flags is None:
        flags = cpu_flags()
    elif isinstance(flags, str):
        flags = flags.split()
    return any(f in NATIVE_BF16_FLAGS for f in flags)


def resolve_dtype(dtype: Union[str, torch.dtype, None], device: torch.device) -> torch.dtype:
    """``None``/"auto": half precision on CUDA, float32 elsewhere (CPU half is slow). For any
    network; ``codeformer_dtype`` adds CodeFormer's CPU bf16 choice. A reduced dtype for CodeFormer
    always means the policy of ``precision.py`` (encoder and transformer float32: the codes are kept)."""
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype '{dtype}'; use one of auto, fp32, fp16, bf16") from None


def codeformer_dtype(dtype: Union[str, torch.dtype, None], device: torch.device,
                     flags: Union[str, Sequence[str], None] = None) -> torch.dtype:
    """CodeFormer's precision: "auto" is bf16 on a CPU that runs bf16 natively (``cpu_has_native_bf16``
    of ``flags``, this CPU's when not given; with the policy of precision.py the codes are those of
    float32), otherwise ``resolve_dtype``. ``None`` (the library default) stays float32 on CPU.
    Other networks (spandrel face models) are not vetted in bf16 and keep ``resolve_dtype``."""
    if dtype == "auto" and device.type == "cpu" and cpu_has_native_bf16(flags):
        return torch.bfloat16
    return resolve_dtype(dtype, device)


def load_model(source: Source, device: Union[str, torch.device, None] = None,
               dtype: Union[str, torch.dtype, None] = None,
               options: Optional[CodeFormerOptions] = None) -> CodeFormer:
    """Load any published CodeFormer variant, detected from the state dict's keys and shapes.

    Returns the model in eval mode, without autograd state, with ``.variant`` set; ``options``
    choose how it computes (default: the fast, precise settings). Raises CheckpointError.
    """
    model = load_network(source, "codeformer", options=options)
    device = resolve_device(device)
    model.to(device)
    target = codeformer_dtype(dtype, device)
    if target != torch.float32:
        model.set_dtype(target, REDUCED_ENCODER_BLOCKS)  # encoder (the codes) float32: precision.py
    model.source = None if isinstance(source, Mapping) else str(Path(source))
    return model


def load_retinaface(source: Source, device: Union[str, torch.device, None] = None) -> RetinaFace:
    """RetinaFace in eval mode from a file path or state dict; the backbone comes from the keys
    (``module.`` prefixes stripped, ``num_batches_tracked`` optional). Raises CheckpointError."""
    net = load_network(source, "retinaface")
    fold_batchnorms(net)  # BatchNorm folded into the convs: fewer, larger ops (models/batchnorm.py)
    return net.to(device) if device is not None else net


def load_parsenet(source: Source, device: Union[str, torch.device, None] = None) -> ParseNet:
    """ParseNet in eval mode from a file path or state dict (strict, ``num_batches_tracked`` optional).
    Raises CheckpointError. The weights are channels-last (oneDNN's and the tensor cores' layout:
    a 512 px parse took 1.85 s instead of 2.42 s on CPU, logits within 3e-5, labels equal);
    ``parsenet.parse_faces`` feeds it channels-last input."""
    net = load_network(source, "parsenet")
    fold_batchnorms(net)  # BatchNorm folded into the convs: fewer, larger ops (models/batchnorm.py)
    net = net.to(memory_format=torch.channels_last)
    return net.to(device) if device is not None else net
