"""What the pipeline asks of a face model: its crop size, alignment template and fixed batch
(defaults for CodeFormer), its task and variant, and the network batch per device."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..errors import WrongVariantError
from ..faces.align import template_for
from ..faces.reframe import ReframedParseNet
from ..tasks import BY_VARIANT, TASKS

Tensor = torch.Tensor
Progress = Optional[Callable[[int, int], None]]
Interrupt = Optional[Callable[[], None]]

MODEL_SIZE = 512

def model_crop_size(model) -> int:
    """The side S of the aligned crops the model takes (``crop_size``; 512 when it does not say)."""
    return int(getattr(model, "crop_size", MODEL_SIZE))


def model_template(model) -> Tensor:
    """The model's five alignment points [5,2] float64 in its crop pixels (``template(dtype)``; the
    FFHQ template scaled to the crop size when it does not say)."""
    template = getattr(model, "template", None)
    size = model_crop_size(model)
    if callable(template):
        return template(torch.float64).detach().cpu()
    return template_for(size, torch.float64)


def model_fixed_batch(model) -> Optional[int]:
    """Faces the model takes in one forward (``fixed_batch``; None: any number)."""
    most = getattr(model, "fixed_batch", None)
    return None if most is None else max(1, int(most))


def has_ffhq_framing(model) -> bool:
    """Whether the model's crops are framed as CodeFormer's (the FFHQ template at any size), which
    ParseNet's face mask and the colour-match ellipse assume; GPEN-BFR-256's ArcFace crops are not."""
    size = model_crop_size(model)
    return bool(torch.allclose(model_template(model), template_for(size, torch.float64), atol=1e-3 * size))


def parser_for_model(parser, model):
    """The face parser for ``model``'s crops: ``parser`` itself for FFHQ-framed crops, else a
    ``faces.reframe.ReframedParseNet`` (the crop warped to FFHQ framing, parsed, the labels warped
    back), so the parse mask fits e.g. GPEN-BFR-256's ArcFace crops."""
    if parser is None or has_ffhq_framing(model):
        return parser
    if isinstance(parser, ReframedParseNet):
        return parser
    return ReframedParseNet(parser, model_template(model), model_crop_size(model))


def model_task(model) -> str:
    """The task a model performs, by its ``variant`` ("restore" when the variant is unknown)."""
    task = BY_VARIANT.get(getattr(model, "variant", None))
    return task.name if task is not None else "restore"


def check_variant(model, task: str) -> None:
    """Refuse a model of the wrong variant: ``WrongVariantError(have, want)``, a neutral message.

    Each front end words its own hint (the node to use, the command to run) from ``have``/``want``.
    """
    want = TASKS[task].variant
    have = getattr(model, "variant", None)
    if have != want:
        raise WrongVariantError(have, want)


GPU_NETWORK_BATCH = 8


def default_network_batch(device) -> int:
    """Faces per network forward when the caller does not say: 1 on CPU (one 512 px face already
    keeps every core busy; batches of 4 measured 6 % slower per face and 1.7 GiB larger), else 8."""
    return 1 if torch.device(device).type == "cpu" else GPU_NETWORK_BATCH


