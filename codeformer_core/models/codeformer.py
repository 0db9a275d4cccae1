"""CodeFormer (Zhou et al., NeurIPS 2022): VQGAN encoder/decoder, code-prediction Transformer
and controllable feature transformation, written from the published architecture.

State-dict names and shapes match the official checkpoints exactly, so ``load_state_dict``
is strict. The three published variants differ only in data (``VARIANTS``); how an instance
computes (fused attention, folded upsampling, float64 logits path on CPU) is its ``CodeFormerOptions``.
Block-by-block layout and the numeric conventions: docs/models.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..tasks import task_for_variant
from .precision import reduced_convs

Tensor = torch.Tensor

GROUPNORM_EPS = 1e-6
LAYERNORM_EPS = 1e-5
ADAIN_EPS = 1e-5


@dataclass(frozen=True)
class VariantConfig:
    """What distinguishes the published checkpoints, and how their entry points call them."""
    name: str
    codebook_size: int
    fusion_resolutions: Tuple[int, ...]
    description: str

    @property
    def default_w(self) -> float:
        """The fidelity weight its original entry point uses (``tasks.TASKS``, kept there once)."""
        return task_for_variant(self.name).default_w

    @property
    def default_adain(self) -> bool:
        """Whether its original entry point re-applies the input's colour statistics (``tasks.TASKS``)."""
        return task_for_variant(self.name).adain


@dataclass(frozen=True)
class CodeFormerOptions:
    """How one instance computes. Every combination gives the same result up to float rounding
    (all pass the golden rule); the defaults are the fast and precise ones. The benchmark's naive
    baseline is an instance built with the first two off."""
    use_sdpa: bool = True              # fused scaled_dot_product_attention, else explicit softmax(q k^T) v
    fold_upsample: bool = True         # nearest-2x + 3x3 conv as four 2x2 convs (see Upsample)
    precise_logits: bool = True        # CPU float32: the blocks that carry the logits' margin in float64 (_Float64Path)


VARIANTS: Dict[str, VariantConfig] = {
    "restoration": VariantConfig("restoration", 1024, (32, 64, 128, 256), "face restoration (codeformer.pth)"),
    "colorization": VariantConfig("colorization", 1024, (32, 64, 128),
                                  "colorization of gray faces (codeformer_colorization.pth)"),
    "inpainting": VariantConfig("inpainting", 512, (32, 64, 128),
                                "inpainting of white-masked faces (codeformer_inpainting.pth)"),
}

# VQGAN layout shared by all variants.
BASE_CHANNELS = 64
CHANNEL_MULT = (1, 2, 2, 4, 4, 8)
RES_BLOCKS_PER_LEVEL = 2
IMAGE_SIZE = 512
LATENT_SIZE = 16
EMBED_DIM = 256
TRANSFORMER_DIM = 512
TRANSFORMER_HEADS = 8
TRANSFORMER_LAYERS = 9
# resolution -> index of the encoder block whose output feeds that fusion,
# and index of the generator block after which the fusion is applied.
ENCODER_TAPS = {256: 5, 128: 8, 64: 11, 32: 14}
GENERATOR_FUSION_AFTER = {32: 9, 64: 12, 128: 15, 256: 18}
# The float64 logits path on CPU (see _Float64Path): these encoder blocks, then the transformer's
# token embedding and its first layers, run in float64. Chosen by measured error per millisecond
# (docs/models.md): ~1 % of a CPU forward for most of the margin the whole tail in float64 gave.
PRECISE_ENCODER_BLOCKS = frozenset({12, 15, 23, 24})
PRECISE_TRANSFORMER_LAYERS = 2


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=GROUPNORM_EPS, affine=True)


def _norm_float32(norm: nn.Module, x: Tensor) -> Tensor:
    """Normalise with accurate float32 statistics, in the caller's layout and dtype.

    PyTorch's channels-last GroupNorm kernel on CPU is ~30x less accurate than the contiguous one
    (outside the golden tolerance), so channels-last float32 input goes through
    ``_group_norm_channels_last``. Contiguous bf16 on CPU goes straight to PyTorch's kernel, which
    accumulates in float32 (measured: the same error against float32 as a float32 copy, 8 % faster
    per bf16 forward); other half-precision input is normalised from a float32 copy.
    """
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    if x.dtype in (torch.float32, torch.float64) and not channels_last:
        return norm(x)
    if (x.dtype == torch.bfloat16 and x.device.type == "cpu" and not channels_last
            and isinstance(norm, nn.GroupNorm)):
        return norm(x)
    if isinstance(norm, nn.GroupNorm):
        if x.dtype == torch.float32:
            return _group_norm_channels_last(x, norm)
        y = F.group_norm(x.float().contiguous(), norm.num_groups, norm.weight.float(), norm.bias.float(), norm.eps)
    else:
        y = F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)
    y = y.to(x.dtype)
    return y.to(memory_format=torch.channels_last) if channels_last else y


def _group_norm_channels_last(x: Tensor, norm: nn.GroupNorm) -> Tensor:
    """GroupNorm on a channels-last tensor without a layout round trip.

    Per-channel mean/variance (a stable reduction over positions, contiguous in memory) are
    combined into group statistics with the law of total variance, then one fused
    multiply-add applies normalisation and affine together.
    """
    b, c, h, w = x.shape
    g = norm.num_groups
    flat = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view: channels-last memory is [B,H,W,C]
    var_c, mean_c = torch.var_mean(flat, dim=1, unbiased=False)
    var_c, mean_c = var_c.view(b, g, c // g), mean_c.view(b, g, c // g)
    mean_g = mean_c.mean(-1, keepdim=True)
    var_g = var_c.mean(-1, keepdim=True) + (mean_c - mean_g).square().mean(-1, keepdim=True)
    rstd = torch.rsqrt(var_g + norm.eps)
    weight, bias = norm.weight.view(1, g, c // g), norm.bias.view(1, g, c // g)
    scale = (rstd * weight).view(b, 1, c)
    shift = (bias - mean_g * rstd * weight).view(b, 1, c)
    return torch.addcmul(shift, flat, scale).view(b, h, w, c).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: Optional[int] = None):
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.conv_out = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        # in-place activations and sum: the norm/conv outputs are fresh tensors (fewer passes)
        h = self.conv1(F.silu(_norm_float32(self.norm1, x), inplace=True))
        h = self.conv2(F.silu(_norm_float32(self.norm2, h), inplace=True))
        return h.add_(self.conv_out(x) if hasattr(self, "conv_out") else x)


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all positions (scale 1/sqrt(C))."""

    def __init__(self, channels: int, use_sdpa: bool = True):
        super().__init__()
        self.use_sdpa = use_sdpa
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        hn = _norm_float32(self.norm, x)
        q, k, v = (conv(hn).reshape(b, c, h * w).transpose(1, 2) for conv in (self.q, self.k, self.v))
        if self.use_sdpa:
            o = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        else:
            attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1)
            o = attn @ v
        o = o.transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(o)


class Downsample(nn.Module):
    """Zero pad right/bottom only, then a stride-2 3x3 conv (asymmetric, as in VQGAN)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 then conv3x3, computed as four 2x2 convolutions on the low-resolution input.

    After a nearest-neighbour upsample, each of the four output phases sees only 2x2 distinct
    input pixels, so the 3x3 kernel folds into four 2x2 kernels: 16/36 of the multiply-adds,
    and the 4x larger upsampled tensor is never built. Same result up to float rounding.
    """

    def __init__(self, channels: int, fold: bool = True):
        super().__init__()
        self.fold = fold
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if not self.fold:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        b, _, h, w = x.shape
        c = self.conv.out_channels
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), _fold_nearest2x(self.conv.weight), self.conv.bias.repeat(4))
        y = y.view(b, 2, 2, c, h + 1, w + 1)
        out = torch.empty(b, c, 2 * h, 2 * w, dtype=y.dtype, device=y.device)
        interleaved = out.view(b, c, h, 2, w, 2)
        for a in (0, 1):  # phase (a, e) at low-res (i, j) is output pixel (2i+a, 2j+e)
            for e in (0, 1):
                interleaved[:, :, :, a, :, e] = y[:, a, e, :, a:a + h, e:e + w]
        return out.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
            memory_format=torch.channels_last) and not x.is_contiguous() else out


def _fold_nearest2x(weight: Tensor) -> Tensor:
    """[O,I,3,3] -> [4O,I,2,2]: phase 0 of an axis uses taps (k0, k1+k2), phase 1 (k0+k1, k2)."""
    w64 = weight.double()
    rows = [torch.stack([w64[:, :, 0], w64[:, :, 1] + w64[:, :, 2]], 2),
            torch.stack([w64[:, :, 0] + w64[:, :, 1], w64[:, :, 2]], 2)]
    kernels = [torch.stack([r[..., 0], r[..., 1] + r[..., 2]], -1) if col == 0 else
               torch.stack([r[..., 0] + r[..., 1], r[..., 2]], -1)
               for r in rows for col in (0, 1)]
    return torch.cat(kernels, 0).to(weight.dtype)


def _block_dtype(block: nn.Module) -> torch.dtype:
    """The dtype a block computes in: its convolutions' (the reduced one under a precision policy),
    else its parameters' (a bare GroupNorm: float32, or float64 in a model converted with ``.double()``)."""
    conv = next((m.weight.dtype for m in block.modules() if isinstance(m, nn.Conv2d)), None)
    return conv or next((p.dtype for p in block.parameters()), torch.float32)


def _encoder_blocks(options: CodeFormerOptions) -> nn.ModuleList:
    blocks = [nn.Conv2d(3, BASE_CHANNELS, 3, padding=1)]
    channels = [BASE_CHANNELS * m for m in (1,) + CHANNEL_MULT]
    res = IMAGE_SIZE
    for level in range(len(CHANNEL_MULT)):
        cin, cout = channels[level], channels[level + 1]
        for _ in range(RES_BLOCKS_PER_LEVEL):
            blocks.append(ResBlock(cin, cout))
            cin = cout
            if res == LATENT_SIZE:
                blocks.append(AttnBlock(cin, options.use_sdpa))
        if level != len(CHANNEL_MULT) - 1:
            blocks.append(Downsample(cin))
            res //= 2
    top = channels[-1]
    blocks += [ResBlock(top), AttnBlock(top, options.use_sdpa), ResBlock(top), nn.GroupNorm(32, top, eps=GROUPNORM_EPS),
               nn.Conv2d(top, EMBED_DIM, 3, padding=1)]
    return nn.ModuleList(blocks)


def _generator_blocks(options: CodeFormerOptions) -> nn.ModuleList:
    channels = [BASE_CHANNELS * m for m in CHANNEL_MULT]
    top = channels[-1]
    blocks = [nn.Conv2d(EMBED_DIM, top, 3, padding=1), ResBlock(top), AttnBlock(top, options.use_sdpa), ResBlock(top)]
    cin, res = top, LATENT_SIZE
    for level in reversed(range(len(CHANNEL_MULT))):
        cout = channels[level]
        for _ in range(RES_BLOCKS_PER_LEVEL):
            blocks.append(ResBlock(cin, cout))
            cin = cout
            if res == LATENT_SIZE:
                blocks.append(AttnBlock(cin, options.use_sdpa))
        if level != 0:
            blocks.append(Upsample(cin, options.fold_upsample))
            res *= 2
    blocks += [nn.GroupNorm(32, cin, eps=GROUPNORM_EPS), nn.Conv2d(cin, 3, 3, padding=1)]
    return nn.ModuleList(blocks)


class _Stack(nn.Module):
    """``blocks.i`` container; GroupNorm blocks are normalised in float32."""

    def __init__(self, blocks: nn.ModuleList):
        super().__init__()
        self.blocks = blocks

    def run(self, x: Tensor, start: int = 0, stop: Optional[int] = None,
            params: Optional[Dict[int, Dict[str, Tensor]]] = None) -> Tensor:
        """Blocks ``start:stop``; ``params`` (block index -> its tensors) replaces a block's own
        (the float64 copies of ``_Float64Path``: the module and its hooks are used as they are)."""
        for i, block in enumerate(self.blocks[start:stop], start):
            if params is not None:
                x = torch.func.functional_call(block, params[i], (x,))
            else:
                x = _norm_float32(block, x) if isinstance(block, nn.GroupNorm) else block(x)
        return x


def _version(t: Tensor) -> int:
    """The in-place edit counter (an inference tensor has none: it cannot be edited outside inference mode)."""
    return -1 if t.is_inference() else t._version


class _Float64Path:
    """Float64 copies of the weights that decide the code logits, made once per model.

    On CPU float32 the encoder blocks ``PRECISE_ENCODER_BLOCKS`` (the cheap ones at 32x32 and
    16x16 whose rounding reaches the logits most per millisecond), the token embedding and the
    first ``PRECISE_TRANSFORMER_LAYERS`` transformer layers run in float64: the transformer
    amplifies the float32 rounding of its input into the logits, and its first layers carry most
    of that (docs/models.md has the measured margins and costs). The copies are made at the first
    forward that uses them and kept; they are made again only if a weight they copy changes
    (another tensor, an in-place edit, dtype, device).
    """

    def __init__(self):
        self.key = None
        self.blocks: Dict[int, Dict[str, Tensor]] = {}
        self.feat_emb: Dict[str, Tensor] = {}
        self.layers: list = []                             # per leading transformer layer
        self.position_emb: Optional[Tensor] = None

    @staticmethod
    def _sources(model: "CodeFormer"):
        blocks = {i: model.encoder.blocks[i] for i in sorted(PRECISE_ENCODER_BLOCKS)}
        return blocks, [model.feat_emb, *model.ft_layers[:PRECISE_TRANSFORMER_LAYERS]]

    def get(self, model: "CodeFormer") -> "_Float64Path":
        blocks, modules = self._sources(model)
        tensors = [t for m in list(blocks.values()) + modules for t in m.parameters()]
        tensors.append(model.position_emb)
        key = tuple((t.data_ptr(), _version(t), t.dtype, t.device) for t in tensors)
        if key != self.key:
            with torch.no_grad():
                copy = lambda m: {k: v.detach().double() for k, v in m.named_parameters()}  # noqa: E731
                self.blocks = {i: copy(b) for i, b in blocks.items()}
                self.feat_emb, *self.layers = [copy(m) for m in modules]
                self.position_emb = model.position_emb.detach().double()
            self.key = key
        return self


class FuseBlock(nn.Module):
    """Controllable feature transformation: dec + w * (dec * scale + shift)."""

    def __init__(self, channels: int):
        super().__init__()
        self.encode_enc = ResBlock(2 * channels, channels)
        self.scale = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.2, True),
                                   nn.Conv2d(channels, channels, 3, padding=1))
        self.shift = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.2, True),
                                   nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, enc: Tensor, dec: Tensor, w: Tensor) -> Tensor:
        h = self.encode_enc(torch.cat([enc, dec], dim=1))
        residual = self.scale(h).mul_(dec).add_(self.shift(h))  # dec * scale + shift, in place
        return residual.mul_(w).add_(dec)


class PackedSelfAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s packed parameter names."""

    def __init__(self, dim: int, heads: int, use_sdpa: bool = True):
        super().__init__()
        self.heads = heads
        self.use_sdpa = use_sdpa
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, qk_in: Tensor, v_in: Tensor) -> Tensor:
        b, n, d = v_in.shape
        qk = F.linear(qk_in, self.in_proj_weight[: 2 * d], self.in_proj_bias[: 2 * d])
        v = F.linear(v_in, self.in_proj_weight[2 * d:], self.in_proj_bias[2 * d:])
        split = lambda t: t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k = qk.chunk(2, dim=-1)
        if self.use_sdpa:
            o = F.scaled_dot_product_attention(split(q), split(k), split(v))
        else:
            q, k, v = split(q), split(k), split(v)
            o = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1) @ v
        return self.out_proj(o.transpose(1, 2).reshape(b, n, d))


class TransformerLayer(nn.Module):
    """Pre-norm layer; the position table is added to queries and keys only."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, use_sdpa: bool = True):
        super().__init__()
        self.self_attn = PackedSelfAttention(dim, heads, use_sdpa)
        self.linear1 = nn.Linear(dim, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=LAYERNORM_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=LAYERNORM_EPS)

    def forward(self, t: Tensor, pos: Tensor) -> Tensor:
        h = self.norm1(t)
        t = t + self.self_attn(h + pos, h)
        return t + self.linear2(F.gelu(self.linear1(self.norm2(t))))


class _Codebook(nn.Module):
    """Only the code table of the VQ quantizer; nearest-neighbour search is never used."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        # Given an (uninitialised) table, nn.Embedding skips its random init; the table always
        # comes from a checkpoint, and normal_ on the meta device costs ~1.5 s of imports on first use.
        self.embedding = nn.Embedding(size, dim, _weight=torch.empty(size, dim))


WeightArg = Union[float, Sequence[float], Tensor, None]


class CodeFormer(nn.Module):
    """CodeFormer for one published variant.

    Call ``model(x, w=None, adain=None, return_codes=False)`` with ``x`` [B,3,512,512] in
    [-1, 1]. ``w`` is the fidelity weight (0 = strongest restoration, 1 = closest to the
    input), a float or a per-sample [B] tensor; ``None`` and ``adain=None`` mean the
    variant's defaults. Returns the raw (unclamped) output, or ``(out, logits, idx)``.
    ``forward`` is ``encode_faces`` (up to the code logits), argmax, ``decode_faces``: a caller
    that chooses the codes otherwise (``faces.temporal``) calls the two halves itself.
    ``options`` (fixed at construction) choose how this instance computes.
    """

    def __init__(self, variant: Union[str, VariantConfig] = "restoration",
                 options: Optional[CodeFormerOptions] = None):
        super().__init__()
        self.config = VARIANTS[variant] if isinstance(variant, str) else variant
        self.options = options if options is not None else CodeFormerOptions()
        self.variant = self.config.name
        self.memory_format = torch.contiguous_format
        self.position_emb = nn.Parameter(torch.empty(LATENT_SIZE * LATENT_SIZE, TRANSFORMER_DIM))
        self.encoder = _Stack(_encoder_blocks(self.options))
        self.quantize = _Codebook(self.config.codebook_size, EMBED_DIM)
        self.generator = _Stack(_generator_blocks(self.options))
        self.feat_emb = nn.Linear(EMBED_DIM, TRANSFORMER_DIM)
        self.ft_layers = nn.Sequential(*[TransformerLayer(TRANSFORMER_DIM, TRANSFORMER_HEADS, 2 * TRANSFORMER_DIM,
                                                          self.options.use_sdpa)
                                         for _ in range(TRANSFORMER_LAYERS)])
        self.idx_pred_layer = nn.Sequential(nn.LayerNorm(TRANSFORMER_DIM, eps=LAYERNORM_EPS),
                                            nn.Linear(TRANSFORMER_DIM, self.config.codebook_size, bias=False))
        channels = {r: BASE_CHANNELS * CHANNEL_MULT[int(math.log2(IMAGE_SIZE // r))] for r in ENCODER_TAPS}
        self.fuse_convs_dict = nn.ModuleDict({str(r): FuseBlock(channels[r])
                                              for r in self.config.fusion_resolutions})

    # -- precision ---------------------------------------------------------------------------
    def set_dtype(self, dtype: torch.dtype, reduced_encoder_blocks: Optional[int] = 0) -> "CodeFormer":
        """Convolutions of the generator and fusion blocks run in ``dtype``, and those of the
        first ``reduced_encoder_blocks`` encoder blocks (None: all); the rest of the encoder (what decides
        the code indices), the transformer, codebook and norms stay float32. The policy that
        ``dtype="bf16"/"fp16"`` mean is ``precision.REDUCED_ENCODER_BLOCKS`` (docs/precision.md)."""
        for conv in reduced_convs(self, reduced_encoder_blocks):
            conv.to(dtype)
        return self

    def set_memory_format(self, memory_format: torch.memory_format) -> "CodeFormer":
        """``torch.channels_last`` speeds up convolutions on CPU (oneDNN) and tensor cores."""
        self.memory_format = memory_format
        return self.to(memory_format=memory_format)

    @property
    def conv_dtype(self) -> torch.dtype:
        """The generator's convolution dtype (the reduced one when a precision was set)."""
        return self.generator.blocks[0].weight.dtype

    @property
    def encoder_dtypes(self) -> Tuple[torch.dtype, ...]:
        """Per encoder block, the dtype its convolutions run in (float32 for a bare GroupNorm)."""
        return tuple(_block_dtype(b) for b in self.encoder.blocks)

    # -- forward -----------------------------------------------------------------------------
    def _weights(self, w: WeightArg, batch: int, device) -> Tuple[Optional[Tensor], bool]:
        if w is None:
            w = self.config.default_w
        w_t = torch.as_tensor(w, dtype=torch.float32, device=device).flatten()
        if w_t.numel() == 1:
            w_t = w_t.expand(batch)
        if w_t.numel() != batch:
            raise ValueError(f"w has {w_t.numel()} values for a batch of {batch}")
        if not torch.isfinite(w_t).all() or (w_t < 0).any() or (w_t > 1).any():
            raise ValueError(f"fidelity weight w must be in [0, 1], got {w_t.tolist()}")
        return w_t, bool((w_t > 0).any())

    def encode(self, x: Tensor, keep_taps: bool) -> Tuple[Tensor, Dict[int, Tensor]]:
        """Encoder output (in the transformer's dtype: float32, or float64 for a model converted
        with ``.double()``) and the taps the fusion blocks need."""
        tap_at = {ENCODER_TAPS[r]: r for r in self.config.fusion_resolutions} if keep_taps else {}
        dtypes = self.encoder_dtypes
        precise = self._float64_path(x.device)
        changes = {i for i in range(1, len(dtypes)) if dtypes[i] != dtypes[i - 1]}  # mixed-precision bounds
        in_float64 = PRECISE_ENCODER_BLOCKS if precise is not None else frozenset()
        bounds = sorted({i + 1 for i in tap_at} | changes | in_float64 | {i + 1 for i in in_float64})
        taps: Dict[int, Tensor] = {}
        h = x.contiguous(memory_format=self.memory_format)
        start = 0
        for stop in [b for b in bounds if 0 < b < len(self.encoder.blocks)] + [len(self.encoder.blocks)]:
            if start in in_float64:     # one block per segment (its bounds are i and i + 1)
                h = self.encoder.run(h.double().contiguous(), start, stop, precise.blocks)
            else:
                h = self.encoder.run(h.to(dtypes[start]), start, stop)
            if stop - 1 in tap_at:
                taps[tap_at[stop - 1]] = h.to(self.conv_dtype).contiguous(memory_format=self.memory_format)
            start = stop
        return h.to(torch.float64 if precise is not None else self.feat_emb.weight.dtype).contiguous(), taps

    def _float64_path(self, device: torch.device) -> Optional[_Float64Path]:
        """The float64 copies when this call takes the float64 logits path: ``precise_logits``,
        CPU, those weights float32 (not a reduced or float64 model), and not being traced for
        export (an exported graph stays float32)."""
        if (not self.options.precise_logits or device.type != "cpu" or torch.jit.is_tracing()
                or torch.onnx.is_in_onnx_export()):
            return None
        if (self.feat_emb.weight.dtype != torch.float32
                or any(self.encoder_dtypes[i] != torch.float32 for i in PRECISE_ENCODER_BLOCKS)):
            return None
        path = self.__dict__.get("_float64")
        if path is None:
            path = self.__dict__["_float64"] = _Float64Path()  # not a submodule: no state-dict entry
        return path.get(self)

    def predict_codes(self, lq_feat: Tensor) -> Tuple[Tensor, Tensor]:
        """Code logits and indices (their argmax). On the float64 path the token embedding and the
        first layers run with their float64 copies, the rest in float32."""
        precise = self._float64_path(lq_feat.device)
        tokens = lq_feat.flatten(2).transpose(1, 2)
        layers = list(self.ft_layers)
        if precise is None:
            t = self.feat_emb(tokens)
        else:
            call = torch.func.functional_call
            t = call(self.feat_emb, precise.feat_emb, (tokens.double(),))
            pos64 = precise.position_emb.unsqueeze(0)
            for layer, params in zip(layers, precise.layers):
                t = call(layer, params, (t, pos64))
            t, layers = t.float(), layers[len(precise.layers):]
        pos = self.position_emb.unsqueeze(0)
        for layer in layers:
            t = layer(t, pos)
        logits = self.idx_pred_layer(t)
        return logits, logits.argmax(dim=-1)

    def lookup(self, idx: Tensor, lq_feat: Tensor, adain: bool) -> Tensor:
        b = idx.shape[0]
        q = self.quantize.embedding.weight[idx].reshape(b, LATENT_SIZE, LATENT_SIZE, EMBED_DIM)
        q = q.permute(0, 3, 1, 2).contiguous()
        if adain:
            q = adaptive_instance_norm(q, lq_feat)
        return q

    def decode(self, quant: Tensor, taps: Dict[int, Tensor], w: Tensor, fuse: bool,
               all_active: bool = False) -> Tensor:
        """``all_active``: fuse every sample, also those with w = 0 (adds exactly zero; the ONNX
        export's one graph for every w) instead of looking at w."""
        h = quant.to(self.conv_dtype).contiguous(memory_format=self.memory_format)
        start = 0
        if fuse and taps:
            active = w > 0
            all_active = all_active or bool(active.all())
            w_b = w.to(h.dtype).view(-1, 1, 1, 1)
            for res in sorted(taps, key=GENERATOR_FUSION_AFTER.get):
                stop = GENERATOR_FUSION_AFTER[res] + 1
                h = self.generator.run(h, start, stop)
                block = self.fuse_convs_dict[str(res)]
                if all_active:
                    h = block(taps[res], h, w_b)
                else:  # per-sample w with zeros: fuse only where w > 0
                    h = h.clone()
                    h[active] = block(taps[res][active], h[active], w_b[active])
                start = stop
        return self.generator.run(h, start).float().contiguous()

    @torch.inference_mode()
    def encode_faces(self, x: Tensor, w: WeightArg = None, adain: Optional[bool] = None) -> "EncodedFaces":
        """First half of ``forward``: everything before the code choice (encoder, fusion taps and
        the Transformer's code logits). Pick codes from ``logits`` (``forward`` takes the argmax;
        ``faces.temporal`` combines them along face tracks) and give them to ``decode_faces``."""
        if x.dim() != 4 or x.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"expected input [B,3,{IMAGE_SIZE},{IMAGE_SIZE}], got {list(x.shape)}")
        adain = self.config.default_adain if adain is None else adain
        w_t, fuse = self._weights(w, x.shape[0], x.device)
        fuse = fuse and len(self.fuse_convs_dict) > 0
        lq_feat, taps = self.encode(x, keep_taps=fuse)
        logits, _ = self.predict_codes(lq_feat)
        return EncodedFaces(lq_feat, taps, logits, w_t, fuse, adain)

    @torch.inference_mode()
    def decode_faces(self, faces: "EncodedFaces", idx: Tensor) -> Tensor:
        """Second half of ``forward``: codebook lookup of ``idx`` [B,256] (int64), then the
        generator with the fusion taps of ``faces``. Returns the raw (unclamped) output."""
        if idx.shape != faces.logits.shape[:2]:
            raise ValueError(f"expected codes {list(faces.logits.shape[:2])}, got {list(idx.shape)}")
        quant = self.lookup(idx, faces.lq_feat, faces.adain)
        return self.decode(quant, faces.taps, faces.w, faces.fuse)

    @torch.inference_mode()
    def forward(self, x: Tensor, w: WeightArg = None, adain: Optional[bool] = None,
                return_codes: bool = False):
        faces = self.encode_faces(x, w, adain)
        idx = faces.logits.argmax(dim=-1)
        out = self.decode_faces(faces, idx)
        return (out, faces.logits, idx) if return_codes else out


@dataclass
class EncodedFaces:
    """A batch after ``CodeFormer.encode_faces``: what ``decode_faces`` needs besides the codes.

    Per face: ``lq_feat`` [B,256,16,16] float32 and ``logits`` [B,256,codebook] float32 (1 MiB a
    face); ``taps`` (fusion-resolution -> [B,C,r,r] encoder features, ~55 MB a face in float32,
    only when some w > 0) and ``w`` [B]. ``take(rows)`` and ``cat`` let a caller hold faces back
    and decode them later in other batches."""
    lq_feat: Tensor
    taps: Dict[int, Tensor]
    logits: Tensor
    w: Tensor
    fuse: bool
    adain: bool

    def __len__(self) -> int:
        return int(self.lq_feat.shape[0])

    def take(self, rows) -> "EncodedFaces":
        rows = torch.as_tensor(rows, dtype=torch.int64, device=self.lq_feat.device)
        return EncodedFaces(self.lq_feat[rows], {r: t[rows] for r, t in self.taps.items()}, self.logits[rows],
                            self.w[rows], self.fuse, self.adain)

    @staticmethod
    def cat(parts: Sequence["EncodedFaces"]) -> "EncodedFaces":
        """Batches encoded alike (same adain, all with fusion taps or all without) as one."""
        if len({(p.adain, p.fuse, tuple(sorted(p.taps))) for p in parts}) != 1:
            raise ValueError("EncodedFaces.cat: the parts were encoded differently (adain, or w > 0 in some only); "
                             "encode them with the same adain and w")
        return EncodedFaces(torch.cat([p.lq_feat for p in parts]),
                            {r: torch.cat([p.taps[r] for p in parts]) for r in parts[0].taps},
                            torch.cat([p.logits for p in parts]), torch.cat([p.w for p in parts]),
                            parts[0].fuse, parts[0].adain)

def adaptive_instance_norm(content: Tensor, style: Tensor, eps: float = ADAIN_EPS) -> Tensor:
    """Per sample and channel, give ``content`` the mean/std of ``style`` (unbiased variance)."""
    b, c = content.shape[:2]
    c_flat, s_flat = content.reshape(b, c, -1), style.reshape(b, c, -1)
    c_mean, s_mean = c_flat.mean(-1), s_flat.mean(-1)
    c_std = (c_flat.var(-1, unbiased=True) + eps).sqrt()
    s_std = (s_flat.var(-1, unbiased=True) + eps).sqrt()
    scale = (s_std / c_std)[..., None, None]
    return (content - c_mean[..., None, None]) * scale + s_mean[..., None, None]

