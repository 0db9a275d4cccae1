"""CodeFormer to ONNX with a live fidelity weight: inputs ``input`` [B,3,512,512] (-1..1) and ``w`` [B]
(per sample, 0..1), outputs ``output`` [B,3,512,512] (raw, unclamped, as the PyTorch model) and
``codes`` [B,256] (the code indices); the batch is dynamic. All three variants (the variant's
AdaIN default is built in). TensorRT: docs/onnx.md.

``fp16=True`` applies the pack's reduced-precision policy (precision.py) to the file: the
convolutions of the generator and fusion blocks store fp16 weights and compute in fp16 (their
input cast to fp16, their output back to float32); the encoder, transformer and codebook stay
float32, so the codes are those of the float32 file. Inputs and outputs stay float32.

``onnx`` is needed for ``fp16`` (the graph is rewritten) and ``onnxruntime`` to run the file;
both are the optional extra ``onnx``. Nothing here is imported when the nodes load.

The graph is traced from an instance with the plain operations (explicit attention, upsample
then conv: ``EXPORT_OPTIONS``), every fusion block always applied
(w = 0 adds exactly zero), so one graph serves every w.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Collection, Union

import torch
from torch import nn

from ..errors import MissingDependencyError
from .checkpoint import Source
from .codeformer import IMAGE_SIZE, CodeFormerOptions
from .loader import load_model
from .precision import reduced_convs

EXPORT_OPTIONS = CodeFormerOptions(use_sdpa=False, fold_upsample=False)
OPSET = 17
INPUT_NAMES = ("input", "w")
OUTPUT_NAMES = ("output", "codes")


class ExportForward(nn.Module):
    """``(input [B,3,512,512], w [B]) -> (output, codes)`` without data-dependent Python branches."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, w: torch.Tensor):
        m = self.model
        fuse = len(m.fuse_convs_dict) > 0
        lq_feat, taps = m.encode(x, keep_taps=fuse)
        _, idx = m.predict_codes(lq_feat)
        quant = m.lookup(idx, lq_feat, m.config.default_adain)
        return m.decode(quant, taps, w.to(torch.float32), fuse, all_active=True), idx


def export_onnx(source: Source, dest: Union[str, Path], fp16: bool = False) -> Path:
    """Write ``source`` (a CodeFormer checkpoint or state dict) as an ONNX file at ``dest``
    (written under a temporary name, then renamed: never a half-written file at ``dest``).
    Raises CheckpointError for a file that is not CodeFormer, MissingDependencyError for
    ``fp16`` without the ``onnx`` package."""
    if fp16:
        _import_onnx()
    model = load_model(source, device="cpu", dtype="fp32", options=EXPORT_OPTIONS)
    wrapper = ExportForward(model).eval()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    x = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    w = torch.full((1,), 0.5)
    try:
        with torch.no_grad():
            torch.onnx.export(wrapper, (x, w), str(tmp), input_names=list(INPUT_NAMES),
                              output_names=list(OUTPUT_NAMES),
                              dynamic_axes={name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES},
                              opset_version=OPSET, dynamo=False, do_constant_folding=True)
        if fp16:
            onnx = _import_onnx()
            proto = onnx.load(str(tmp))
            names = {m: n for n, m in wrapper.named_modules()}
            convs = [names[c] for c in reduced_convs(model)]
            done = convs_to_fp16(proto, {f"{n}.{p}" for n in convs for p in ("weight", "bias")})
            if done != len(convs):
                raise RuntimeError(f"fp16: {done} of the {len(convs)} decoder convolutions found in the graph")
            onnx.checker.check_model(proto)
            onnx.save(proto, str(tmp))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError("onnx", "the fp16 export rewrites the graph with the onnx package: "
                                             "pip install onnx (or the pack's [onnx] extra)") from None
    return onnx


def convs_to_fp16(proto, weight_names: Collection[str]) -> int:
    """Rewrite ``proto`` (an onnx ModelProto) in place: every Conv whose weight is one of
    ``weight_names`` stores its weight and bias in fp16 and computes in fp16, its input cast to
    fp16 and its output cast back to float32 under the old name. The rounding is that of
    ``precision.emulate_fp16`` (input, weights and output rounded to fp16). A tensor cast for
    several convolutions is cast once, and a conv output that feeds another conv directly is not
    cast back and forth (fp16 -> float32 -> fp16 is exact). Returns how many convs changed."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    halved, half_of = set(), {}  # half_of: float32 tensor name -> name of its fp16 copy
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "Conv" or node.input[1] not in weight_names:
            nodes.append(node)
            continue
        for name in node.input[1:]:
            if name and name not in halved:
                half = numpy_helper.to_array(inits[name]).astype(np.float16)
                inits[name].CopyFrom(numpy_helper.from_array(half, name))
                halved.add(name)
        x = node.input[0]
        if x not in half_of:
            half_of[x] = f"{x}/fp16"
            nodes.append(helper.make_node("Cast", [x], [half_of[x]], name=f"{node.name}/cast_in",
                                          to=TensorProto.FLOAT16))
        node.input[0] = half_of[x]
        y = node.output[0]
        node.output[0] = half_of[y] = f"{y}/fp16"
        nodes.extend([node, helper.make_node("Cast", [half_of[y]], [y], name=f"{node.name}/cast_out",
                                             to=TensorProto.FLOAT)])
        count += 1
    used = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(n for n in nodes if n.op_type != "Cast" or n.output[0] in used)  # casts back nobody reads
    return count
