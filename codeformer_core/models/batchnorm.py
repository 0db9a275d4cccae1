"""BatchNorm folded into the convolution before it, at load (RetinaFace, ParseNet).

In eval mode a BatchNorm is a per-channel affine map, y = (x - mean) * gamma / sqrt(var + eps) + beta,
so ``BN(conv(x))`` equals one convolution with scaled weights and a bias. Folding removes one
elementwise pass over every feature map (53 of them in RetinaFace-ResNet50, 41 in ParseNet):
fewer, larger ops, which matters most when another process keeps a core busy.

Pairs are found by module structure: inside any module, a ``Conv2d`` child immediately followed
(in registration order, which is the forward order in these networks) by a ``BatchNorm2d`` child,
or by a wrapper whose only child is one (ParseNet's ``<layer>.norm.norm``). The BatchNorm is
replaced by ``nn.Identity``; its parameters and buffers are gone from the folded module's
state dict, and the conv gains a bias. The fold is computed in float64, then cast back.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def _batchnorm_of(module: nn.Module) -> Optional[nn.BatchNorm2d]:
    if isinstance(module, nn.BatchNorm2d):
        return module
    children = list(module.children())
    if len(children) == 1 and isinstance(children[0], nn.BatchNorm2d) and not list(module.parameters(recurse=False)):
        return children[0]
    return None


@torch.no_grad()
def fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Make ``conv`` compute ``bn(conv(x))`` (eval-mode statistics)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    dtype, device = conv.weight.dtype, conv.weight.device
    conv.weight = nn.Parameter((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(shift.to(dtype=dtype, device=device), requires_grad=False)


def fold_batchnorms(model: nn.Module) -> int:
    """Fold every conv -> BatchNorm pair of ``model`` (in eval mode) in place; returns how many."""
    if model.training:
        raise ValueError("fold BatchNorm only into a model in eval mode")
    folded = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())  # registration order; optional layers left None skipped
        for (_, conv), (second, nxt) in zip(children, children[1:]):
            if not isinstance(conv, nn.Conv2d):
                continue
            bn = _batchnorm_of(nxt)
            if bn is None or bn.num_features != conv.out_channels:
                continue
            fold_into_conv(conv, bn)
            setattr(parent, second, nn.Identity())
            folded += 1
    return folded
