"""ParseNet face parser (19 classes, 512 in / 512 out), as facexlib 0.3.0 builds it.

Keys match the published ``parsing_parsenet.pth``. The label maps feed the parse-mask
paste-back (faces/masks.py turns labels into blend weights); this module only produces labels.
Layout: every conv is 3x3 with reflection padding; encoder 512 -> 32 px, 10 residual blocks
with a long skip, decoder back to 512, two heads (docs/models.md).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


NUM_CLASSES = 19
INPUT_SIZE = 512


class _BatchNorm(nn.Module):
    """Wrapper so the BN parameters live at ``<layer>.norm.norm.*`` like the published keys."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class ConvLayer(nn.Module):
    """[nearest x2] -> reflection pad 1 -> 3x3 conv [stride 2] -> [BN] -> [LeakyReLU 0.2].

    The conv has a bias only when no BN follows (the published file has no such biases).
    """

    def __init__(self, c_in: int, c_out: int, scale: str = "none", norm: bool = False,
                 act: bool = False) -> None:
        super().__init__()
        self.upsample = scale == "up"
        self.pad = nn.ReflectionPad2d(1)
        self.conv2d = nn.Conv2d(c_in, c_out, 3, 2 if scale == "down" else 1, 0, bias=not norm)
        self.norm = _BatchNorm(c_out) if norm else None
        self.act = nn.LeakyReLU(0.2) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv2d(self.pad(x))
        if self.norm is not None:
            x = self.norm(x)
        return self.act(x) if self.act is not None else x


class ResidualBlock(nn.Module):
    """shortcut + (ConvLayer BN act [carries 'up'] -> ConvLayer BN [carries 'down'])."""

    def __init__(self, c_in: int, c_out: int, scale: str = "none") -> None:
        super().__init__()
        self.shortcut_func = None
        if scale != "none" or c_in != c_out:
            self.shortcut_func = ConvLayer(c_in, c_out, scale)
        self.conv1 = ConvLayer(c_in, c_out, "up" if scale == "up" else "none", norm=True, act=True)
        self.conv2 = ConvLayer(c_out, c_out, "down" if scale == "down" else "none", norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut_func is None else self.shortcut_func(x)
        return shortcut + self.conv2(self.conv1(x))


def _clip_channels(c: int) -> int:
    return max(32, min(c, 256))


class ParseNet(nn.Module):
    """Encoder (512 -> 32 px) / 10 residual blocks with a long skip / decoder; two heads.

    ``forward`` returns (parsing logits [N,19,H,W], image [N,3,H,W]) like the reference.
    """

    def __init__(self, in_size: int = 512, out_size: int = 512, parsing_ch: int = NUM_CLASSES,
                 base_ch: int = 64, res_depth: int = 10, min_feat_size: int = 32) -> None:
        super().__init__()
        min_feat_size = min(in_size, min_feat_size)
        down_steps = (in_size // min_feat_size).bit_length() - 1
        up_steps = (out_size // min_feat_size).bit_length() - 1
        encoder: List[nn.Module] = [ConvLayer(3, base_ch)]
        ch = base_ch
        for _ in range(down_steps):
            encoder.append(ResidualBlock(_clip_channels(ch), _clip_channels(ch * 2), "down"))
            ch *= 2
        self.encoder = nn.Sequential(*encoder)
        self.body = nn.Sequential(*[ResidualBlock(_clip_channels(ch), _clip_channels(ch))
                                    for _ in range(res_depth)])
        decoder: List[nn.Module] = []
        for _ in range(up_steps):
            decoder.append(ResidualBlock(_clip_channels(ch), _clip_channels(ch // 2), "up"))
            ch //= 2
        self.decoder = nn.Sequential(*decoder)
        self.out_img_conv = ConvLayer(_clip_channels(ch), 3)
        self.out_mask_conv = ConvLayer(_clip_channels(ch), parsing_ch)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        feat = self.encoder(x)
        feat = self.decoder(feat + self.body(feat))
        return self.out_mask_conv(feat), self.out_img_conv(feat)


# no_grad, not inference_mode: callers may edit the returned tensors in place.
@torch.no_grad()
def parse_faces(net: ParseNet, crops: torch.Tensor, chunk_size: Optional[int] = 8) -> torch.Tensor:
    """Aligned crops [N,3,S,S] RGB 0..1 -> label maps [N,512,512] int64 (argmax, first max on ties).

    Crops that are not 512 px are resized bilinearly first, as the helper does. Runs on the
    net's device and dtype in chunks (ParseNet keeps 64 channels at full resolution); labels are
    returned on the crops' device.
    """
    param = next(net.parameters())
    out_device = crops.device
    n = int(crops.shape[0])
    if n == 0:
        return torch.zeros(0, INPUT_SIZE, INPUT_SIZE, dtype=torch.int64, device=out_device)
    step = n if not chunk_size or chunk_size <= 0 else int(chunk_size)
    labels = []
    for start in range(0, n, step):
        x = crops[start:start + step].to(param.device, torch.float32)
        if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        logits, _ = net(((x - 0.5) / 0.5).to(param.dtype).contiguous(memory_format=torch.channels_last))
        labels.append(logits.argmax(dim=1).to(out_device))
    return torch.cat(labels)
