"""The one loading path for every network: state dict -> architecture -> checked, ready module.

    read_state_dict (checkpoint.py: safe reading, canonical keys)
      -> detect: which family (``FAMILIES``, by key markers), then which published architecture
         of it (the one whose exact key/shape contract the tensors meet)
      -> finiteness: one screen over all tensors (a single batched norm), exact only on a hit
      -> build on the meta device and take the tensors (strict ``load_state_dict``)

``FAMILIES`` is the one table of (detect, build) pairs. Families this pack cannot build
(GFPGAN, Real-ESRGAN, BiSeNet ...) have no architectures: they are there so that a wrong file
is named in the error message. ``contract`` is the one key -> shape table of an architecture.
The thin loaders (loader.py: ``load_model``, ``load_retinaface``, ``load_parsenet``) call
``load_network`` with their kind; this module imports the network modules, never the reverse.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ..errors import CheckpointError
from .checkpoint import Source, StateDict, describe_source, read_state_dict, save_safetensors
from .codeformer import VARIANTS, CodeFormer
from .parsenet import ParseNet
from .retinaface import BACKBONES, RetinaFace

Tensor = torch.Tensor
Contract = Dict[str, Tuple[int, ...]]
OPTIONAL_SUFFIXES = ("num_batches_tracked",)  # BatchNorm counters, unused at inference: may be absent


@dataclass(frozen=True)
class Architecture:
    """One published network: ``build(**kwargs)`` makes it (uninitialised) for its state dict."""
    family: str      # the family's kind, e.g. "retinaface"
    name: str        # what tells it apart inside the family: "restoration", "resnet50", ...
    title: str       # how messages name it: "RetinaFace (resnet50)"
    build: Callable[..., nn.Module]

    @property
    def key(self) -> Tuple[str, str]:
        return self.family, self.name


@dataclass(frozen=True)
class Family:
    """A kind of checkpoint, recognised from its keys (``detect``); ``architectures`` empty for
    families this pack names but does not load."""
    kind: str
    looks_like: str                 # "a RetinaFace face detector", completing "it looks like ..."
    detect: Callable[[Iterable[str]], bool]
    noun: str = ""                  # "RetinaFace face-detector checkpoint", completing "is not a ..."
    expected: str = ""              # the files (and keys) a loader of this kind wants
    architectures: Tuple[Architecture, ...] = ()


def _has(*markers: str) -> Callable[[Iterable[str]], bool]:
    """A key equal to, or starting with, one of the markers."""
    return lambda keys: any(k == m or k.startswith(m) for k in keys for m in markers)


FAMILIES: Tuple[Family, ...] = (
    Family("codeformer", "a CodeFormer checkpoint", _has("quantize.embedding.weight"),
           "CodeFormer checkpoint",
           "codeformer.pth, codeformer_colorization.pth or codeformer_inpainting.pth "
           "(a state dict with 'quantize.embedding.weight')",
           tuple(Architecture("codeformer", v, f"CodeFormer ({v})",
                              partial(CodeFormer, v)) for v in VARIANTS)),
    Family("retinaface", "a RetinaFace face detector", _has("ClassHead.", "BboxHead.", "LandmarkHead.", "ssh1."),
           "RetinaFace face-detector checkpoint",
           "detection_Resnet50_Final.pth or detection_mobilenet0.25_Final.pth "
           "(keys body.*, fpn.*, ssh1-3.*, ClassHead/BboxHead/LandmarkHead.*)",
           tuple(Architecture("retinaface", b, f"RetinaFace ({b})", partial(RetinaFace, b)) for b in BACKBONES)),
    Family("parsenet", "a ParseNet face parser", _has("out_mask_conv."),
           "ParseNet face-parsing checkpoint",
           "parsing_parsenet.pth (keys encoder.*, body.*, decoder.*, out_img_conv.*, out_mask_conv.*)",
           (Architecture("parsenet", "parsenet", "ParseNet (19 classes, 512 px)", ParseNet),)),
    # Named in messages only.
    Family("gfpgan", "a GFPGAN checkpoint", _has("stylegan_decoder.", "conv_body_first.")),
    Family("esrgan", "a Real-ESRGAN / ESRGAN (RRDBNet) upscaler", _has("conv_first.", "model.0.weight")),
    Family("bisenet", "a BiSeNet face parser", _has("cp.resnet.")),
    Family("restoreformer", "a RestoreFormer checkpoint", _has("vqvae.")),
    Family("stable-diffusion", "a Stable Diffusion / LDM checkpoint", _has("model.diffusion_model.")),
)
KINDS = {f.kind: f for f in FAMILIES if f.architectures}


def family_of(state_dict: Mapping[str, object]) -> Optional[Family]:
    """The first family whose markers the keys show, or None."""
    return next((f for f in FAMILIES if f.detect(state_dict.keys())), None)


def describe(state_dict: Mapping[str, Tensor]) -> str:
    """What the tensors look like, for messages: "a GFPGAN checkpoint", "an unknown model (...)"."""
    family = family_of(state_dict)
    if family is not None:
        return family.looks_like
    keys = list(state_dict)
    n = sum(int(v.numel()) for v in state_dict.values() if isinstance(v, Tensor))
    return f"an unknown model ({len(keys)} tensors, {n:,} values, first key '{keys[0] if keys else ''}')"


# -- detecting the architecture -----------------------------------------------------------------
_CONTRACTS: Dict[Tuple[str, str], Contract] = {}


def architecture(kind: str, name: str) -> Architecture:
    """The published architecture ``name`` of a loadable family: ("codeformer", "inpainting"),
    ("retinaface", "resnet50"), ("parsenet", "parsenet")."""
    family = KINDS.get(kind)
    found = next((a for a in family.architectures if a.name == name), None) if family else None
    if found is None:
        known = ", ".join(f"{a.family}/{a.name}" for f in KINDS.values() for a in f.architectures)
        raise ValueError(f"unknown architecture {kind}/{name}; expected one of {known}")
    return found


def contract(arch: Architecture) -> Contract:
    """Key -> shape that a file of this architecture holds, read off the module built on the meta
    device (no memory, no init), once per process. The only place the contract is computed
    (synthetic weights in tests and benchmarks: ``contract(architecture("codeformer", v))``)."""
    if arch.key not in _CONTRACTS:
        with torch.device("meta"):
            module = arch.build()
        _CONTRACTS[arch.key] = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    return dict(_CONTRACTS[arch.key])  # a copy: the cached table stays as built


def _optional(key: str) -> bool:
    return key.endswith(OPTIONAL_SUFFIXES)


def _mismatch(state_dict: Mapping[str, Tensor], want: Contract):
    missing = [k for k in want if k not in state_dict and not _optional(k)]
    unexpected = [k for k in state_dict if k not in want]
    wrong = [(k, tuple(state_dict[k].shape), want[k]) for k in want
             if k in state_dict and tuple(state_dict[k].shape) != want[k]]
    return missing, unexpected, wrong


def _listed(items) -> str:
    more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
    return ", ".join(items[:3]) + more


def detect(state_dict: Mapping[str, Tensor], kind: Optional[str] = None,
           where: str = "the checkpoint") -> Architecture:
    """The published architecture whose exact key/shape contract ``state_dict`` meets.

    ``kind`` ("codeformer", "retinaface", "parsenet") restricts the search; without it any
    loadable family is accepted. Raises CheckpointError naming what the file looks like and,
    for a damaged or modified file, what differs from the closest architecture.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown network kind {kind!r}; expected one of {', '.join(KINDS)}")
    family = family_of(state_dict)
    wanted = KINDS[kind] if kind is not None else family
    if wanted is None or not wanted.architectures or family is not wanted:
        if wanted is None or not wanted.architectures:
            noun = "network this pack loads"
            expected = "; or ".join(f.expected for f in KINDS.values())
        else:
            noun, expected = wanted.noun, wanted.expected
        raise CheckpointError(f"{where} is not a {noun}: it looks like {describe(state_dict)}; expected {expected}")
    scored = []
    for arch in wanted.architectures:
        missing, unexpected, wrong = _mismatch(state_dict, contract(arch))
        if not (missing or unexpected or wrong):
            return arch
        scored.append((len(missing) + len(unexpected) + len(wrong), arch, missing, unexpected, wrong))
    _, arch, missing, unexpected, wrong = min(scored, key=lambda s: s[0])
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {_listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_listed(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} wrong shape: "
                     + _listed([f"{k} is {list(a)}, expected {list(b)}" for k, a, b in wrong]))
    raise CheckpointError(f"{where} is a {wanted.noun} that matches no published file; closest is {arch.title} "
                          f"but {'; '.join(parts)}. The file may be damaged or from a modified model: "
                          "download the official file again")


def detect_variant(state_dict: Mapping[str, Tensor], where: str = "the checkpoint") -> str:
    """The CodeFormer variant ("restoration", "colorization", "inpainting") of a state dict."""
    return detect(state_dict, "codeformer", where).name


# -- checking and building -----------------------------------------------------------------------
def first_non_finite(state_dict: Mapping[str, Tensor]) -> Optional[str]:
    """The first key holding NaN or infinity, or None.

    One batched reduction screens everything: the 2-norm of each floating tensor is finite
    exactly when its values are, unless the squares overflow, so a non-finite norm is then
    confirmed element-wise on that tensor only. (A loop of one reduction per tensor costs 0.1 s
    on a quiet machine and seconds when another process keeps a core busy.)
    """
    keys = [k for k, v in state_dict.items() if v.is_floating_point() and v.numel()]
    if not keys:
        return None
    tensors = [state_dict[k] for k in keys]
    if hasattr(torch, "_foreach_norm"):
        norms = torch.stack([n.float() for n in torch._foreach_norm(tensors)])
    else:  # pragma: no cover - every supported torch has it
        norms = torch.stack([torch.linalg.vector_norm(t).float() for t in tensors])
    if bool(torch.isfinite(norms).all()):
        return None
    suspects = torch.nonzero(~torch.isfinite(norms)).flatten().tolist()
    return next((keys[i] for i in suspects if not bool(torch.isfinite(tensors[i]).all())), None)


def build_strict(arch: Architecture, state_dict: Mapping[str, Tensor], **build_kwargs) -> nn.Module:
    """``arch`` built on the meta device, taking the given tensors (no wasted init); float32, eval
    mode, no autograd. The state dict must meet ``contract(arch)`` (``detect`` checks that)."""
    with torch.device("meta"):
        model = arch.build(**build_kwargs)
    given = dict(state_dict)
    for key in contract(arch):
        if key not in given and _optional(key):
            given[key] = torch.zeros((), dtype=torch.int64)
    model.load_state_dict(given, strict=True, assign=True)
    return model.float().eval().requires_grad_(False)


def check_network(source: Source, kind: Optional[str] = None) -> Tuple[Architecture, StateDict]:
    """Every check ``load_network`` makes before building (safe read, architecture from keys and
    shapes, finiteness): (architecture, state dict) of a file that loads, else CheckpointError
    with the message loading gives. ``codeformer weights verify`` uses it."""
    where = describe_source(source)
    state_dict = read_state_dict(source)
    arch = detect(state_dict, kind, where)
    bad = first_non_finite(state_dict)
    if bad is not None:
        raise CheckpointError(f"{where} ({arch.title}) contains NaN or infinite values (e.g. in {bad}); "
                              "the file is damaged: download it again")
    return arch, state_dict


def load_network(source: Source, kind: Optional[str] = None, device: Union[str, torch.device, None] = None,
                 **build_kwargs) -> nn.Module:
    """Any network of this pack from a weight file or state dict, its architecture detected from
    keys and shapes (never from the file name). ``kind`` restricts what is accepted;
    ``build_kwargs`` go to the architecture (CodeFormer: ``options``). Raises CheckpointError."""
    arch, state_dict = check_network(source, kind)
    model = build_strict(arch, state_dict, **build_kwargs)
    return model.to(device) if device is not None else model


# -- converting ----------------------------------------------------------------------------------
def convert_to_safetensors(source: Source, dest: Union[str, Path, None] = None, fp16: bool = False) -> Path:
    """Convert a CodeFormer checkpoint to .safetensors (canonical keys); the variant is checked first."""
    state_dict = read_state_dict(source)
    variant = detect_variant(state_dict, describe_source(source))
    if dest is None:
        if isinstance(source, Mapping):
            raise ValueError("dest is required when converting an in-memory state dict")
        stem = Path(source).with_suffix("")
        dest = stem.with_name(stem.name + ("_fp16" if fp16 else "") + ".safetensors")
    return save_safetensors(state_dict, dest, fp16=fp16, metadata={"variant": variant, "format": "codeformer"})
