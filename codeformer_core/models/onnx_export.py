"""CodeFormer to ONNX with a live fidelity weight: inputs ``input`` [B,3,512,512] (-1..1) and ``w`` [B]
(per sample, 0..1), outputs ``output`` [B,3,512,512] (raw, unclamped, as the PyTorch model) and
``codes`` [B,256] (the code indices); the batch is dynamic. All three variants (the variant's
AdaIN default is built in). TensorRT: docs/onnx.md.

``onnx`` is not needed to export (PyTorch writes the file) but ``onnxruntime`` is needed to run
it; both are the optional extra ``onnx``. Nothing here is imported when the nodes load.

The graph is traced from an instance with the plain operations (explicit attention, upsample
then conv, no float64 encoder tail: ``EXPORT_OPTIONS``), every fusion block always applied
(w = 0 adds exactly zero), so one graph serves every w.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch
from torch import nn

from .checkpoint import Source
from .codeformer import IMAGE_SIZE, CodeFormerOptions
from .loader import load_model

EXPORT_OPTIONS = CodeFormerOptions(use_sdpa=False, fold_upsample=False, precise_encoder_tail=False)
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


def export_onnx(source: Source, dest: Union[str, Path]) -> Path:
    """Write ``source`` (a CodeFormer checkpoint or state dict) as an ONNX file at ``dest``.
    Raises CheckpointError for a file that is not CodeFormer."""
    model = load_model(source, device="cpu", dtype="fp32", options=EXPORT_OPTIONS)
    wrapper = ExportForward(model).eval()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    w = torch.full((1,), 0.5)
    with torch.no_grad():
        torch.onnx.export(wrapper, (x, w), str(dest), input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                          dynamic_axes={name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES},
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    return dest
