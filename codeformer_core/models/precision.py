"""Reduced precision that keeps the code indices: which parts of CodeFormer run in bf16/fp16.

The code indices are the argmax of the transformer's logits, and the logits depend only on the
encoder. Measured on the golden inputs (docs/precision.md), the encoder in bf16 or fp16 keeps too
few of the float32 codes (the logits' top-2 gaps are small), and so does a float32 encoder with
TF32 convolutions on CUDA (96 %). So ``dtype="bf16"`` / ``"fp16"`` mean, on every device:

    encoder (every block)               float32   (exactly the codes of a float32 run)
    transformer, codebook, norms        float32
    generator and fusion convolutions   the reduced dtype

``REDUCED_ENCODER_BLOCKS`` is how many leading encoder blocks may run reduced (0: none); the
benchmark ``python -m codeformer_core.dev.bench_precision`` measures the candidates.
``emulate_reduced`` (``emulate_fp16``) rounds weights and activations to fp16 or bf16 at each
convolution's boundaries while computing in float32, for measuring a reduced dtype on CPUs without
native kernels for it.
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

REDUCED_ENCODER_BLOCKS = 0
# Candidate policies: name -> leading encoder blocks in the reduced dtype (None: all of them).
CANDIDATES = {"all reduced": None, "encoder 512px reduced": 3, "encoder >=256px reduced": 6,
              "encoder fp32 (chosen)": 0}


def reduced_convs(model, reduced_encoder_blocks: int = REDUCED_ENCODER_BLOCKS) -> List[nn.Conv2d]:
    """The convolutions a policy runs in the reduced dtype (generator, fusion, leading encoder blocks)."""
    blocks = list(model.encoder.blocks)
    n = len(blocks) if reduced_encoder_blocks is None else int(reduced_encoder_blocks)
    stacks = [model.generator, model.fuse_convs_dict] + blocks[:n]
    return [m for s in stacks for m in s.modules() if isinstance(m, nn.Conv2d)]


def _rounder(dtype: torch.dtype):
    return lambda t: t.to(dtype).to(t.dtype)


def emulate_reduced(model, dtype: torch.dtype = torch.float16,
                    reduced_encoder_blocks=REDUCED_ENCODER_BLOCKS) -> list:
    """Make a float32 model compute as if the policy's convolutions ran in ``dtype`` (fp16 or bf16):
    their weights are rounded to ``dtype`` and their inputs and outputs rounded at each call, the
    arithmetic itself float32 (as native half-precision convolutions accumulate). For measuring a
    reduced dtype on a CPU without native kernels for it (fp16 on most CPUs; bf16 without
    avx512_bf16 / amx_bf16, where PyTorch's bf16 convolution is a slow emulation).
    Returns the hook handles."""
    round_ = _rounder(dtype)
    handles = []
    with torch.no_grad():
        for conv in reduced_convs(model, reduced_encoder_blocks):
            # new tensors, never in place: a loaded model may share its tensors with the caller's state dict
            conv.weight = nn.Parameter(round_(conv.weight), requires_grad=False)
            if conv.bias is not None:
                conv.bias = nn.Parameter(round_(conv.bias), requires_grad=False)
            handles.append(conv.register_forward_pre_hook(lambda m, args: (round_(args[0]),) + args[1:]))
            handles.append(conv.register_forward_hook(lambda m, args, out: round_(out)))
    return handles


def emulate_fp16(model, reduced_encoder_blocks=REDUCED_ENCODER_BLOCKS) -> list:
    """``emulate_reduced`` in fp16."""
    return emulate_reduced(model, torch.float16, reduced_encoder_blocks)
