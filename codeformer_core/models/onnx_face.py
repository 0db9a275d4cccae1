"""ONNX face-restoration files (GPEN-BFR 256..2048, GFPGAN, RestoreFormer, CodeFormer, our own
``codeformer weights export --onnx``) run with ONNX Runtime where the pipeline expects a face network.

The files this reads follow one convention (FaceFusion's files and ours): an image input named
``input``, float32 [B,3,S,S] RGB in -1..1, S one of ``CROP_SIZES``; the first output [B,3,S,S] in
-1..1 (clamped by the caller); optionally a fidelity input, ``weight`` (FaceFusion's CodeFormer,
float64 [1]) or ``w`` (ours, float32 [B]); the batch fixed (usually 1) or dynamic. Faces are
aligned to the FFHQ 512 template scaled to S, except at S = 256 (GPEN-BFR-256), aligned to the
ArcFace 128 template scaled to 256 (``OnnxFaceModel.template``).

An ``OnnxFaceModel`` stands where ``pipeline.run_network`` calls CodeFormer: ``model(x, w=...,
adain=...)`` on crops in -1..1, ``parameters()`` (one empty tensor on the model's device, so the
pipeline's ``next(model.parameters()).device`` and ``element_size()`` work), ``variant``. The
batches, progress, interrupt checks and out-of-memory halving are the pipeline's; a fixed-batch
file is run ``fixed_batch`` faces at a time inside the call (``max_batch`` says so up front).

Untrusted files: before any ``InferenceSession`` exists the file is parsed with ``onnx`` (without
its external data) and checked (``check_onnx_file``): a truncated file does not parse or fails
the checker, and every tensor stored outside the file must lie in a regular file inside the
model's own folder (no absolute paths, no ``..``, no symlink leading out, in bounds). So both
``onnx`` and ``onnxruntime`` are needed: the optional extra ``onnx``. Neither is imported until an
``.onnx`` file is used.

Providers (``select_providers``): the torch device the caller computes on decides. On CUDA,
TensorRT when ONNX Runtime has it (engines cached in a folder the user can see, by default
``<model>.trt_cache`` next to the file), then CUDA, then CPU; inputs and outputs stay on the GPU
(I/O binding to torch tensors). On any other device, the CPU provider with numpy in and out.
"""
from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..errors import CheckpointError, MissingDependencyError, NotAFaceModelError, first_line
from ..templates import TEMPLATES

Tensor = torch.Tensor

CROP_SIZES = (256, 512, 1024, 2048)
IMAGE_INPUT = "input"
FIDELITY_INPUTS = ("w", "weight")   # ours, FaceFusion's CodeFormer
ONNX_EXTRA = ("the ONNX face models need the onnx and onnxruntime packages: pip install onnx onnxruntime "
              "(onnxruntime-gpu for CUDA / TensorRT), or the pack's [onnx] extra")


TENSORRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
ONNX_FLOAT, ONNX_DOUBLE, ONNX_FLOAT16 = 1, 11, 10   # onnx.TensorProto element types
_TYPE_NAMES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 2: "uint8", 16: "bfloat16"}


def import_onnx():
    """``(onnx, onnxruntime)``, or ``MissingDependencyError`` naming the extra (both are needed: the
    file is checked with ``onnx`` before ONNX Runtime opens it)."""
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError("onnx", ONNX_EXTRA) from None
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime", ONNX_EXTRA) from None
    return onnx, onnxruntime


# -- the file: complete, self-contained ---------------------------------------------------------
def _all_tensors(graph):
    """Every TensorProto of a graph: initializers, sparse ones, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _attribute_tensors(node.attribute)


def _attribute_tensors(attributes):
    for a in attributes:
        if a.HasField("t"):
            yield a.t
        yield from a.tensors
        if a.HasField("g"):
            yield from _all_tensors(a.g)
        for g in a.graphs:
            yield from _all_tensors(g)


def _external_location(tensor) -> Tuple[Optional[str], int, Optional[int]]:
    info = {e.key: e.value for e in tensor.external_data}
    offset = int(info.get("offset") or 0)
    length = info.get("length")
    return info.get("location"), offset, None if length in (None, "") else int(length)


def check_external_data(proto, folder: Union[str, Path], name: str) -> int:
    """Refuse (``CheckpointError``) any tensor of ``proto`` stored outside the file whose data is not
    a regular file inside ``folder`` (the model file's folder): an absolute path, a ``..`` part, a
    symlink leading out, a missing file, an offset/length past its end. Returns how many tensors
    are stored outside."""
    root = Path(os.path.realpath(folder))
    tensors = list(_all_tensors(proto.graph))
    for f in proto.functions:
        for node in f.node:
            tensors.extend(_attribute_tensors(node.attribute))
    count = 0
    for t in tensors:
        if t.data_location != 1:   # TensorProto.EXTERNAL
            continue
        count += 1
        location, offset, length = _external_location(t)
        where = f"{name}: tensor {t.name!r} is stored outside the file"
        if not location:
            raise CheckpointError(f"{where} without a location; the file is not usable")
        parts = location.replace("\\", "/").split("/")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
            raise CheckpointError(f"{where}, at the absolute path {location!r}; refused: an ONNX file may only "
                                  f"use data files in its own folder")
        if ".." in parts:
            raise CheckpointError(f"{where}, at {location!r}, outside its folder; refused: an ONNX file may only "
                                  f"use data files in its own folder")
        target = Path(os.path.realpath(root / location))
        if target != root and root not in target.parents:
            raise CheckpointError(f"{where}, at {location!r}, a link leading outside its folder; refused: an ONNX "
                                  f"file may only use data files in its own folder")
        try:
            st = os.stat(target)
        except OSError:
            raise CheckpointError(f"{where}, in {location!r}, which is missing next to it; put the data file "
                                  f"beside the model") from None
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{where}, in {location!r}, which is not a regular file; refused")
        if offset < 0 or offset > st.st_size or (length is not None and (length < 0 or offset + length > st.st_size)):
            raise CheckpointError(f"{where}, in {location!r}, past the end of that file "
                                  f"({st.st_size} bytes); the data file is truncated")
    return count


def check_onnx_file(path: Union[str, Path]):
    """Parse and check an ONNX file WITHOUT opening an ONNX Runtime session: the ``onnx.ModelProto``
    (external data not loaded) for a complete file whose external data stays in its folder;
    ``CheckpointError`` for a file that is truncated, not ONNX, or reaches for other files."""
    path = Path(path)
    onnx, _ = import_onnx()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path.name}: the file is empty")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise CheckpointError(f"{path.name}: not a complete ONNX file ({size} bytes; it does not parse: "
                              f"{first_line(e)}); a truncated download? Fetch it again") from None
    if not proto.HasField("graph") or not proto.graph.node or not proto.graph.output:
        raise CheckpointError(f"{path.name}: not a complete ONNX model (no graph, nodes or outputs; "
                              f"{size} bytes); a truncated download? Fetch it again")
    check_external_data(proto, path.parent, path.name)
    try:
        onnx.checker.check_model(str(path))   # by path: its external data is looked for beside it
    except Exception as e:
        raise CheckpointError(f"{path.name}: not a valid ONNX model ({first_line(e)}); a truncated or damaged "
                              f"file? Fetch it again") from None
    return proto


# -- what the file is ---------------------------------------------------------------------------
@dataclass(frozen=True)
class OnnxFaceSignature:
    """What an ONNX face-restoration file takes and gives (``read_signature``)."""
    input_name: str
    output_name: str
    crop_size: int                    # S: input and output [B,3,S,S]
    fixed_batch: Optional[int]        # None: dynamic batch
    fidelity_name: Optional[str]      # "w" / "weight", None without a fidelity input
    fidelity_type: Optional[str]      # "float32" / "float64"
    fidelity_per_face: bool           # shape [B] (one per face) rather than [1]
    template: str                     # "ffhq" / "arcface_128" (key of TEMPLATES)
    extra_outputs: Tuple[str, ...] = ()
    fidelity_rank: int = 1            # 0: a scalar fidelity input

    @property
    def has_fidelity(self) -> bool:
        return self.fidelity_name is not None

    def describe(self) -> str:
        s = self.crop_size
        batch = "dynamic batch" if self.fixed_batch is None else f"fixed batch {self.fixed_batch}"
        if self.fidelity_name is None:
            fid = "no fidelity input"
        else:
            shape = "[B]" if self.fidelity_per_face else ("[1]" if self.fidelity_rank else "scalar")
            fid = f"fidelity input {self.fidelity_name} {self.fidelity_type} {shape}"
        align = "FFHQ" if self.template == "ffhq" else "ArcFace 128"
        return (f"ONNX face restorer, {s} px crops ({align} alignment), input {self.input_name} "
                f"[{'B' if self.fixed_batch is None else self.fixed_batch},3,{s},{s}] float32, {fid}, {batch}")


def _dims(value_info) -> Optional[List[Union[int, str, None]]]:
    """A graph input/output's shape: int for a fixed dim, its name (or None) for a dynamic one;
    None when the rank is unknown."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _elem(value_info) -> int:
    return int(value_info.type.tensor_type.elem_type)


def _shape_text(dims) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


def read_signature(proto, name: str = "the file") -> OnnxFaceSignature:
    """The face-model signature of a parsed ONNX file, or ``NotAFaceModelError`` saying what the
    file is instead (not an image model, not square, not RGB, an upscaler, unsupported size)."""
    def refuse(what: str):
        raise NotAFaceModelError(name, "ONNX", None, 1, f"{name} is {what}, not a face-restoration model "
                                                        f"(input {IMAGE_INPUT} [B,3,S,S], S in {CROP_SIZES})")
    graph = proto.graph
    init_names = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    by_name = {i.name: i for i in inputs}
    image = by_name.get(IMAGE_INPUT)
    if image is None:
        rank4 = [i for i in inputs if (_dims(i) or []).__len__() == 4]
        if len(rank4) != 1:
            refuse(f"an ONNX model with inputs {', '.join(i.name for i in inputs) or 'none'} "
                   f"(no image input named {IMAGE_INPUT!r})")
        image = rank4[0]
    dims = _dims(image)
    if dims is None or len(dims) != 4:
        refuse(f"an ONNX model whose input {image.name} has rank {'unknown' if dims is None else len(dims)} "
               f"({_shape_text(dims or [])}), not an image batch [B,3,S,S]")
    b, c, h, w = dims
    if c != 3:
        refuse(f"an ONNX model for {c if c is not None else 'any number of'} channels "
               f"(input {image.name} {_shape_text(dims)}), not RGB")
    if not isinstance(h, int) or not isinstance(w, int) or h <= 0 or w <= 0:
        refuse(f"an ONNX model with a free image size (input {image.name} {_shape_text(dims)}): an image-to-image "
               f"network such as an upscaler, not a face restorer with a fixed crop size")
    if h != w:
        refuse(f"an ONNX model for {w}x{h} images (input {image.name} {_shape_text(dims)}), not square face crops")
    if _elem(image) != ONNX_FLOAT:
        refuse(f"an ONNX model whose input {image.name} is {_TYPE_NAMES.get(_elem(image), _elem(image))} "
               f"(this pack gives float32)")
    out = graph.output[0]
    odims = _dims(out)
    if odims is not None and len(odims) == 4 and isinstance(odims[2], int) and isinstance(odims[3], int) \
            and odims[2] > 0 and odims[2] != h:
        if odims[2] > h and odims[2] % h == 0 and odims[3] == odims[2] * w // h:
            refuse(f"a {odims[2] // h}x upscaler ({h} px in, {odims[2]} px out)")
        refuse(f"an ONNX model that turns {h} px images into {_shape_text(odims)}")
    if odims is None or len(odims) != 4 or (isinstance(odims[1], int) and odims[1] not in (0, 3)):
        refuse(f"an ONNX model whose output {out.name} is {_shape_text(odims or [])}, not an image batch [B,3,S,S]")
    if h not in CROP_SIZES:
        refuse(f"an ONNX model for {h} px crops (this pack aligns faces at {', '.join(map(str, CROP_SIZES))} px)")
    fid_name = fid_type = None
    per_face = False
    fdims: list = []
    for i in inputs:
        if i is image:
            continue
        if i.name not in FIDELITY_INPUTS:
            refuse(f"an ONNX model that also needs an input {i.name!r} {_shape_text(_dims(i) or [])} "
                   f"(a face restorer takes {IMAGE_INPUT} and at most a fidelity {' or '.join(FIDELITY_INPUTS)})")
        fdims = _dims(i) or []
        if _elem(i) not in (ONNX_FLOAT, ONNX_DOUBLE) or len(fdims) > 1:
            refuse(f"an ONNX model whose input {i.name!r} is {_TYPE_NAMES.get(_elem(i), _elem(i))} "
                   f"{_shape_text(fdims)}, not a fidelity weight (float or double, [1] or [B])")
        fid_name, fid_type = i.name, _TYPE_NAMES[_elem(i)]
        per_face = len(fdims) == 1 and fdims[0] != 1
    fixed = b if isinstance(b, int) and b > 0 else None
    return OnnxFaceSignature(input_name=image.name, output_name=out.name, crop_size=int(h), fixed_batch=fixed,
                             fidelity_name=fid_name, fidelity_type=fid_type, fidelity_per_face=per_face,
                             template="arcface_128" if h == 256 else "ffhq",
                             extra_outputs=tuple(o.name for o in graph.output[1:]),
                             fidelity_rank=len(fdims) if fid_name is not None else 1)


def inspect_onnx_face_model(path: Union[str, Path]) -> OnnxFaceSignature:
    """``check_onnx_file`` then ``read_signature``: what the file is, no session opened (for
    ``codeformer weights verify``)."""
    path = Path(path)
    return read_signature(check_onnx_file(path), path.name)


# -- providers ----------------------------------------------------------------------------------
ProviderList = List[Tuple[str, Dict[str, object]]]


def select_providers(device: Union[str, torch.device], available: Sequence[str], *,
                     tensorrt: bool = True, trt_cache_dir: Union[str, Path, None] = None,
                     trt_fp16: bool = True) -> ProviderList:
    """ONNX Runtime providers with their options, best first, for computing on ``device`` (a torch
    device) given the provider names ONNX Runtime has (``onnxruntime.get_available_providers()``).

    CUDA device k: TensorRT (when present and ``tensorrt``; engines cached in ``trt_cache_dir``
    when given, fp16 kernels allowed when ``trt_fp16``), then CUDA, each on device k, then CPU.
    Any other device, or a CUDA device without a GPU provider: CPU only (``OnnxFaceModel`` warns
    about the latter).
    """
    device = torch.device(device)
    chosen: ProviderList = []
    if device.type == "cuda":
        index = 0 if device.index is None else int(device.index)
        if tensorrt and TENSORRT in available:
            opts: Dict[str, object] = {"device_id": index, "trt_fp16_enable": bool(trt_fp16)}
            if trt_cache_dir is not None:
                opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache_dir),
                            trt_timing_cache_enable=True, trt_timing_cache_path=str(trt_cache_dir))
            chosen.append((TENSORRT, opts))
        if CUDA in available:
            chosen.append((CUDA, {"device_id": index}))
    chosen.append((CPU, {}))
    return chosen


def default_trt_cache_dir(path: Union[str, Path]) -> Path:
    """Where TensorRT engines for ``path`` are kept unless the caller says: ``<name>.trt_cache``
    beside the model file (visible, deletable; engines are rebuilt when it is gone)."""
    path = Path(path)
    return path.with_name(path.stem + ".trt_cache")


# -- the runner ---------------------------------------------------------------------------------
_ORT_OUT_OF_MEMORY = ("failed to allocate memory", "bad_alloc", "bad allocation", "out of memory",
                      "cudaerrormemoryallocation")


def is_onnxruntime_out_of_memory(e: BaseException) -> bool:
    """Whether an ONNX Runtime error is an allocation failure (its CPU arena's "Failed to allocate
    memory", std::bad_alloc, CUDA's "out of memory"), which ONNX Runtime raises as a plain exception."""
    return isinstance(e, MemoryError) or any(m in str(e).lower() for m in _ORT_OUT_OF_MEMORY)


class OnnxFaceModel:
    """An ONNX face-restoration file as the pipeline's restore model (see the module notes).

    ``device``: the torch device the caller computes on; it picks the providers
    (``select_providers``). ``trt_cache_dir``: the TensorRT engine folder (default
    ``default_trt_cache_dir``; made only when TensorRT is used). ``trt_fp16``: allow TensorRT
    fp16 kernels (None: yes, except for files with a ``codes`` output, our CodeFormer export,
    whose encoder flips codes in fp16: docs/onnx.md). ``available_providers``: the provider
    names to choose from (default: what ONNX Runtime has). Raises ``MissingDependencyError``,
    ``CheckpointError`` (unsafe or damaged file), ``NotAFaceModelError`` (another kind of model).
    """

    variant = "restoration"   # the task it serves (pipeline.check_variant)

    def __init__(self, path: Union[str, Path], device: Union[str, torch.device] = "cpu", *,
                 trt_cache_dir: Union[str, Path, None] = None, trt_fp16: Optional[bool] = None,
                 tensorrt: bool = True, available_providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None):
        path = Path(path)
        _, ort = import_onnx()
        proto = check_onnx_file(path)
        self.signature = read_signature(proto, path.name)
        del proto
        self.path, self.name = path, path.name
        self._device = torch.device(device)
        if self._device.type == "cuda" and self._device.index is None:
            self._device = torch.device("cuda", torch.cuda.current_device())
        available = list(ort.get_available_providers() if available_providers is None else available_providers)
        if trt_fp16 is None:
            trt_fp16 = "codes" not in self.signature.extra_outputs
        cache = None
        if self._device.type == "cuda" and tensorrt and TENSORRT in available:
            cache = Path(trt_cache_dir) if trt_cache_dir is not None else default_trt_cache_dir(path)
            try:
                cache.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                warnings.warn(f"{path.name}: TensorRT engines will not be cached ({cache}: {first_line(e)})",
                              stacklevel=2)
                cache = None
        self.trt_cache_dir = cache
        providers = select_providers(self._device, available, tensorrt=tensorrt, trt_cache_dir=cache,
                                     trt_fp16=trt_fp16)
        if self._device.type == "cuda" and providers[0][0] == CPU:
            warnings.warn(f"{path.name}: ONNX Runtime has no CUDA provider here (install onnxruntime-gpu); "
                          f"the face model runs on the CPU", stacklevel=2)
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=[p for p, _ in providers],
                                                provider_options=[o for _, o in providers])
        except Exception as e:
            raise CheckpointError(f"{path.name}: ONNX Runtime cannot open it ({first_line(e)})") from None
        self.providers = list(self.session.get_providers())
        self._on_gpu = self._device.type == "cuda" and self.providers[0] in (TENSORRT, CUDA)
        # the device the inputs are bound on; a CPU fallback on a CUDA device computes on the CPU
        self._anchor = torch.empty(0, device=self._device if self._on_gpu or self._device.type == "cpu" else "cpu")

    # what the pipeline reads
    @property
    def crop_size(self) -> int:
        return self.signature.crop_size

    @property
    def has_fidelity(self) -> bool:
        return self.signature.has_fidelity

    @property
    def fixed_batch(self) -> Optional[int]:
        return self.signature.fixed_batch

    @property
    def max_batch(self) -> Optional[int]:
        """Faces per session run (a fixed-batch file's batch; None: any)."""
        return self.signature.fixed_batch

    @property
    def template_name(self) -> str:
        return self.signature.template

    def template(self, dtype=torch.float32, device=None) -> Tensor:
        """The five-point alignment template [5,2] in this model's crop pixels."""
        return (TEMPLATES[self.signature.template] * float(self.crop_size)).to(dtype=dtype, device=device)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def parameters(self):
        """One empty float32 tensor on the device the file computes on (the pipeline reads the
        device and the element size from a model's first parameter)."""
        return iter((self._anchor,))

    def buffers(self):
        return iter(())

    def __call__(self, x: Tensor, w: Union[None, float, Tensor] = None, adain=None) -> Tensor:
        """Crops [N,3,S,S] in -1..1 -> restored crops [N,3,S,S] float32 (unclamped, as the file gives),
        on ``x``'s device. ``w``: fidelity, a number or one per face (default 0.5; ignored by files
        without a fidelity input); ``adain`` applies to none of these files and is accepted so the
        pipeline calls every model alike."""
        s = self.crop_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, s, s):
            raise ValueError(f"{self.name} takes crops [N,3,{s},{s}], got {tuple(x.shape)}")
        n = int(x.shape[0])
        out = torch.empty(n, 3, s, s, device=x.device, dtype=torch.float32)
        if n == 0:
            return out
        w_all = self._fidelity(w, n)
        step = self.fixed_batch or n
        if not self.signature.fidelity_per_face and w_all is not None and step > 1 \
                and not bool((w_all == w_all[0]).all()):
            step = 1   # the file takes one w per run: faces with different w run one by one
        for start in range(0, n, step):
            stop = min(n, start + step)
            xb, wb = x[start:stop], None if w_all is None else w_all[start:stop]
            pad = self.fixed_batch - (stop - start) if self.fixed_batch else 0
            if pad:   # the last run of a fixed-batch file: fill with copies, keep the real ones
                xb = torch.cat([xb, xb[-1:].expand(pad, -1, -1, -1)])
                wb = None if wb is None else torch.cat([wb, wb[-1:].expand(pad)])
            try:
                y = self._run_gpu(xb, wb) if self._on_gpu else self._run_cpu(xb, wb)
            except Exception as e:
                if not is_onnxruntime_out_of_memory(e):
                    raise
                # as a MemoryError the pipeline's chunk loop halves the batch (chunks.is_out_of_memory)
                raise MemoryError(f"{self.name}: ONNX Runtime ran out of memory for {stop - start} faces "
                                  f"of {s} px ({first_line(e)})") from e
            out[start:stop] = y[:stop - start].to(out.device)
        return out

    def _fidelity(self, w, n: int) -> Optional[Tensor]:
        """Per-face fidelity [N] float64 on the CPU (tiny), or None for a file without the input."""
        if not self.has_fidelity:
            return None
        if w is None:
            w = 0.5
        t = torch.as_tensor(w, dtype=torch.float64).detach().cpu().reshape(-1)
        if t.numel() == 1:
            return t.expand(n).clone()
        if t.numel() != n:
            raise ValueError(f"{t.numel()} fidelity values for {n} faces")
        return t

    def _fidelity_feed(self, wb: Tensor):
        """The fidelity input as the file declares it: [B] per face, else [1] (the first face's)."""
        import numpy as np
        dtype = np.float64 if self.signature.fidelity_type == "float64" else np.float32
        values = wb.numpy() if self.signature.fidelity_per_face else wb[:1].numpy()
        if self.signature.fidelity_rank == 0:
            values = values.reshape(())
        return np.ascontiguousarray(values, dtype=dtype)

    def _run_cpu(self, xb: Tensor, wb: Optional[Tensor]) -> Tensor:
        sig = self.signature
        feed = {sig.input_name: xb.detach().to("cpu", torch.float32).contiguous().numpy()}
        if wb is not None:
            feed[sig.fidelity_name] = self._fidelity_feed(wb)
        y = self.session.run([sig.output_name], feed)[0]
        self._check_output(y.shape, xb.shape[0])
        return torch.from_numpy(y)

    def _run_gpu(self, xb: Tensor, wb: Optional[Tensor]) -> Tensor:
        """I/O binding to torch CUDA tensors: no host copies of the images."""
        import numpy as np
        sig = self.signature
        dev = self._device
        x = xb.detach().to(dev, torch.float32).contiguous()
        b, s = int(x.shape[0]), self.crop_size
        binding = self.session.io_binding()
        binding.bind_input(sig.input_name, "cuda", dev.index, np.float32, tuple(x.shape), x.data_ptr())
        wt = None
        if wb is not None:
            fw = self._fidelity_feed(wb)
            wt = torch.from_numpy(fw).to(dev)
            binding.bind_input(sig.fidelity_name, "cuda", dev.index, fw.dtype, tuple(wt.shape), wt.data_ptr())
        y = torch.empty(b, 3, s, s, device=dev, dtype=torch.float32)
        binding.bind_output(sig.output_name, "cuda", dev.index, np.float32, tuple(y.shape), y.data_ptr())
        for extra in sig.extra_outputs:   # e.g. our export's codes: left on the device, unread
            binding.bind_output(extra, "cuda", dev.index)
        # ONNX Runtime computes on its own stream: the inputs torch wrote must be complete first;
        # the run synchronises its stream before it returns, so y is ready after it.
        torch.cuda.current_stream(dev).synchronize()
        self.session.run_with_iobinding(binding)
        del x, wt
        return y

    def _check_output(self, shape, batch: int) -> None:
        s = self.crop_size
        if tuple(shape) != (batch, 3, s, s):
            raise NotAFaceModelError(self.name, "ONNX", None, 1,
                                     f"{self.name} gave {list(shape)} for {batch} crops of {s} px, not restored "
                                     f"crops [{batch},3,{s},{s}]: not a face-restoration model")

    def __repr__(self) -> str:
        return f"OnnxFaceModel({self.name}, {self.crop_size} px, {self.providers[0]})"


def load_onnx_face_model(path: Union[str, Path], device: Union[str, torch.device] = "cpu", **kwargs) -> OnnxFaceModel:
    """An ONNX face-restoration file as an ``OnnxFaceModel`` (see there for the keyword arguments)."""
    return OnnxFaceModel(path, device, **kwargs)


def is_onnx_file(path: Union[str, Path]) -> bool:
    """Whether a model file is to be run with ONNX Runtime (by its extension)."""
    return str(path).lower().endswith(".onnx")
