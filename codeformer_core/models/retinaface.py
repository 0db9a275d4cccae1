"""RetinaFace face detector (ResNet-50 and MobileNet-0.25 backbones), as facexlib 0.3.0 builds it.

State-dict keys match the published ``detection_Resnet50_Final.pth`` /
``detection_mobilenet0.25_Final.pth`` files, so those load strictly. Everything after the
network (priors, decode, NMS) is batched: one call handles every frame of a chunk. The layout
rules that are easy to get wrong (activation per module, nearest resize by size, head row order)
are stated where they are coded and in docs/models.md.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

BACKBONES = ("resnet50", "mobilenet0.25")
_BACKBONE_ALIASES = {"resnet50": "resnet50", "resnet-50": "resnet50", "r50": "resnet50",
                     "mobilenet0.25": "mobilenet0.25", "mobile0.25": "mobilenet0.25",
                     "mobilenet": "mobilenet0.25", "mobile": "mobilenet0.25"}

# Prior-box layout shared by both backbones: (step, (min sizes)) per level, stride 8 first.
PRIOR_LEVELS: Tuple[Tuple[int, Tuple[int, int]], ...] = ((8, (16, 32)), (16, (64, 128)), (32, (256, 512)))
VARIANCES = (0.1, 0.2)
BGR_MEAN = (104.0, 117.0, 123.0)


# --------------------------------------------------------------------------- building blocks

def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
             slope: Optional[float] = None) -> nn.Sequential:
    """conv (no bias) -> BN [-> LeakyReLU(slope)]; slot indices give the published keys .0/.1."""
    layers: List[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out)]
    if slope is not None:
        layers.append(nn.LeakyReLU(slope))
    return nn.Sequential(*layers)


def _depthwise_separable(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """Keys .0 (depthwise) .1 (BN) .3 (pointwise) .4 (BN); slots 2 and 5 are the activations."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in), nn.LeakyReLU(0.1),
        nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1))


class MobileNetV1Body(nn.Module):
    """MobileNet-0.25 trunk: returns the /8, /16, /32 feature maps (64, 128, 256 ch)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, 3, 2, slope=0.1),
            _depthwise_separable(8, 16, 1),
            _depthwise_separable(16, 32, 2),
            _depthwise_separable(32, 32, 1),
            _depthwise_separable(32, 64, 2),
            _depthwise_separable(64, 64, 1))
        self.stage2 = nn.Sequential(_depthwise_separable(64, 128, 2),
                                    *[_depthwise_separable(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_depthwise_separable(128, 256, 2), _depthwise_separable(256, 256, 1))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        level1 = self.stage1(x)
        level2 = self.stage2(level1)
        return [level1, level2, self.stage3(level2)]


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck (stride on the 3x3 conv), keys conv1..3 / bn1..3 / downsample.0-1."""

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * 4
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet50Body(nn.Module):
    """ResNet-50 through layer4 (no avgpool / fc); returns layer2..4 outputs (512, 1024, 2048 ch)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = 64
        for name, width, blocks, stride in (("layer1", 64, 3, 1), ("layer2", 128, 4, 2),
                                            ("layer3", 256, 6, 2), ("layer4", 512, 3, 2)):
            layer = [Bottleneck(c_in, width, stride)] + [Bottleneck(width * 4, width, 1) for _ in range(blocks - 1)]
            setattr(self, name, nn.Sequential(*layer))
            c_in = width * 4

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        level1 = self.layer2(x)
        level2 = self.layer3(level1)
        return [level1, level2, self.layer4(level2)]


def _module_slope(out_channels: int) -> float:
    """FPN/SSH activation, chosen by the *module's* out channels (64 for MobileNet-0.25, 256 for
    ResNet-50), not by a single conv's width: LeakyReLU(0.1) up to 64, ReLU (slope 0) above. So the
    ResNet-50 SSH branch convs, 64 channels wide, still use ReLU."""
    return 0.1 if out_channels <= 64 else 0.0


class FPN(nn.Module):
    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        slope = _module_slope(out_channels)
        self.output1 = _conv_bn(in_channels[0], out_channels, 1, slope=slope)
        self.output2 = _conv_bn(in_channels[1], out_channels, 1, slope=slope)
        self.output3 = _conv_bn(in_channels[2], out_channels, 1, slope=slope)
        self.merge1 = _conv_bn(out_channels, out_channels, 3, slope=slope)
        self.merge2 = _conv_bn(out_channels, out_channels, 3, slope=slope)

    def forward(self, levels: List[torch.Tensor]) -> List[torch.Tensor]:
        o1, o2, o3 = self.output1(levels[0]), self.output2(levels[1]), self.output3(levels[2])
        # Size-based legacy 'nearest' (not 'nearest-exact'): odd sizes must floor like the reference.
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"))
        return [o1, o2, o3]


class SSH(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        slope = _module_slope(channels)
        self.conv3X3 = _conv_bn(channels, channels // 2, 3)
        self.conv5X5_1 = _conv_bn(channels, channels // 4, 3, slope=slope)
        self.conv5X5_2 = _conv_bn(channels // 4, channels // 4, 3)
        self.conv7X7_2 = _conv_bn(channels // 4, channels // 4, 3, slope=slope)
        self.conv7x7_3 = _conv_bn(channels // 4, channels // 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.conv5X5_1(x)
        branch7 = self.conv7x7_3(self.conv7X7_2(shared))
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(shared), branch7], dim=1))


class _Head(nn.Module):
    """1x1 conv; output rows ordered (y, x, anchor) to match the prior order."""

    def __init__(self, channels: int, per_anchor: int, anchors: int = 2) -> None:
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(channels, anchors * per_anchor, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.per_anchor)


class RetinaFace(nn.Module):
    """RetinaFace; ``forward`` takes BGR-minus-mean NCHW and returns (loc, softmax conf, landms)."""

    def __init__(self, backbone: str = "resnet50") -> None:
        super().__init__()
        key = _BACKBONE_ALIASES.get(str(backbone).lower())
        if key is None:
            raise ValueError(f"unknown RetinaFace backbone {backbone!r}; expected one of {BACKBONES}")
        self.backbone = key
        if key == "resnet50":
            self.body = ResNet50Body()
            in_channels, channels = (512, 1024, 2048), 256
        else:
            self.body = MobileNetV1Body()
            in_channels, channels = (64, 128, 256), 64
        self.fpn = FPN(in_channels, channels)
        self.ssh1, self.ssh2, self.ssh3 = SSH(channels), SSH(channels), SSH(channels)
        self.ClassHead = nn.ModuleList([_Head(channels, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(channels, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(channels, 10) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        levels = self.fpn(self.body(x))
        features = [self.ssh1(levels[0]), self.ssh2(levels[1]), self.ssh3(levels[2])]
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], dim=1)
        conf = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], dim=1)
        landms = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], dim=1)
        return loc, F.softmax(conf, dim=-1), landms


# --------------------------------------------------------------------------- pre / post processing

def preprocess_rgb01(frames: torch.Tensor) -> torch.Tensor:
    """RGB 0..1 [B,3,H,W] -> the detector's input: BGR 0..255 minus the per-channel mean, float32."""
    mean = torch.tensor(BGR_MEAN, dtype=torch.float32, device=frames.device).view(1, 3, 1, 1)
    return frames.float().flip(1) * 255.0 - mean


_PRIOR_CACHE: Dict[Tuple[int, int, str], torch.Tensor] = {}


def prior_boxes(height: int, width: int, device=None) -> torch.Tensor:
    """[P,4] (cx, cy, w, h) normalised priors for an HxW input, cached per size and device.

    Order: level (stride 8 first), row, column, size - the same order the heads emit.
    Computed in float64 and cast once, like the reference (so it is exact to float32).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = (int(height), int(width), str(device))
    cached = _PRIOR_CACHE.get(key)
    if cached is not None:
        return cached
    per_level = []
    for step, sizes in PRIOR_LEVELS:
        rows, cols = -(-height // step), -(-width // step)
        i = torch.arange(rows, dtype=torch.float64).view(rows, 1, 1).expand(rows, cols, len(sizes))
        j = torch.arange(cols, dtype=torch.float64).view(1, cols, 1).expand(rows, cols, len(sizes))
        s = torch.tensor(sizes, dtype=torch.float64).view(1, 1, -1).expand(rows, cols, len(sizes))
        cx = (j + 0.5) * step / width
        cy = (i + 0.5) * step / height
        per_level.append(torch.stack([cx, cy, s / width, s / height], dim=-1).reshape(-1, 4))
    priors = torch.cat(per_level).to(torch.float32).to(device)
    if len(_PRIOR_CACHE) > 64:  # many distinct frame sizes: keep memory bounded
        _PRIOR_CACHE.clear()
    _PRIOR_CACHE[key] = priors
    return priors


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """loc [...,P,4] -> x1,y1,x2,y2 normalised to the input (float32, variances 0.1 / 0.2)."""
    centre = priors[..., :2] + loc[..., :2] * VARIANCES[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp(loc[..., 2:] * VARIANCES[1])
    top_left = centre - size / 2
    return torch.cat([top_left, top_left + size], dim=-1)


def decode_landmarks(landms: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """landms [...,P,10] -> [...,P,5,2] (x, y) normalised to the input."""
    offsets = landms.reshape(*landms.shape[:-1], 5, 2)
    return priors[..., None, :2] + offsets * VARIANCES[0] * priors[..., None, 2:]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """Greedy NMS run independently per group (frame) in one torchvision call.

    A box is dropped when its IoU with a kept, higher-scored box of its group is > threshold.
    Groups are moved apart by integer offsets in float64, where that shift is exact for
    detector-sized coordinates, so a frame gets the same result alone or in a batch
    (torchvision's batched_nms shifts in float32 and loses bits on later frames). IoU is then
    evaluated in float64 instead of the reference's float32: only an IoU within ~1e-7 of the
    threshold can decide differently. Boxes with non-finite coordinates are never kept.
    Returns kept indices in descending score order.
    """
    from torchvision.ops import nms

    empty = torch.zeros(0, dtype=torch.int64, device=boxes.device)
    if boxes.numel() == 0:
        return empty
    work_device = boxes.device if boxes.device.type in ("cpu", "cuda") else torch.device("cpu")
    boxes64 = boxes.to(work_device, torch.float64)
    candidates = None
    finite = torch.isfinite(boxes64).all(dim=1)
    if not bool(finite.all()):
        candidates = torch.nonzero(finite).flatten()
        if candidates.numel() == 0:
            return empty
        boxes64 = boxes64[candidates]
        scores, groups = scores.to(work_device)[candidates], groups.to(work_device)[candidates]
    if bool((groups != groups[0]).any()):
        span = torch.ceil(boxes64.max() - boxes64.min()) + 1.0
        boxes64 = boxes64 + (groups.to(work_device, torch.float64) * span)[:, None]
    keep = nms(boxes64, scores.to(work_device, torch.float64), float(iou_threshold))
    if candidates is not None:
        keep = candidates[keep]
    return keep.to(boxes.device)
