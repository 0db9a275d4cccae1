"""Face-restoration networks other than our CodeFormer, loaded by spandrel: GFPGAN (1.2-1.4),
RestoreFormer, and CodeFormer from ``spandrel_extra_arches`` where that is installed.

A ``FaceModel`` stands where ``pipeline`` expects our CodeFormer: it is called on aligned crops
[N,3,512,512] in -1..1 and returns -1..1, has ``parameters()`` (for the device) and serves the
restore task (``variant = "restoration"``). So ``pipeline.restore_faces`` and
``restore_images`` run it through ``run_network``: the same batches, progress, interrupt checks and
out-of-memory halving as CodeFormer, no second loop.

How the networks are called: all of spandrel's face architectures are trained on -1..1 inputs and
return a tuple whose first item is the image. spandrel's descriptor call (``desc(image)``, 0..1
in and out by its contract) normalises for RestoreFormer, but passes 0..1 images to GFPGAN and
CodeFormer unchanged and clamps their -1..1 output to 0..1 (the grey-noise faces ComfyUI users
saw in 2024), so the module is called directly here, as the architectures' own inference scripts
do. GFPGAN's StyleGAN noise is the fixed noise stored in the checkpoint (``randomize_noise=False``)
so a face restores the same in every run and at every batch size. A face architecture without an
entry in ``CALL_KWARGS`` (a newer spandrel) falls back to spandrel's 0..1 descriptor call.

spandrel is optional (the pack's ``[upscale]`` extra): imported only when a file is loaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional, Union

import torch

from ..errors import CheckpointError, MissingDependencyError, NotAFaceModelError, first_line

Tensor = torch.Tensor
FACE_PURPOSE = "FaceSR"   # spandrel's purpose of face-restoration models


def _codeformer_weight(w) -> dict:
    if isinstance(w, Tensor):   # per-face fidelity: broadcast over the feature maps it scales
        return {"weight": w.reshape(-1, 1, 1, 1)}
    return {"weight": 0.5 if w is None else float(w)}


# spandrel architecture id -> keyword arguments of the module's forward, from the fidelity ``w``.
CALL_KWARGS: Dict[str, Callable[[object], dict]] = {
    "GFPGAN": lambda w: {"return_rgb": False, "randomize_noise": False},
    "RestoreFormer": lambda w: {},
    "CodeFormer": _codeformer_weight,   # spandrel_extra_arches: forward(x, weight=0.5)
}


def spandrel_loader(device=None):
    """A ``spandrel.ModelLoader`` that also knows ``spandrel_extra_arches`` when installed (a
    private registry: spandrel's global one is left as it is). ``MissingDependencyError`` without
    spandrel."""
    try:
        import spandrel
    except ImportError:
        raise MissingDependencyError("spandrel", "face models and upscalers are loaded with spandrel: "
                                     "pip install spandrel (or the pack's [upscale] extra)") from None
    registry = spandrel.MAIN_REGISTRY
    try:
        from spandrel_extra_arches import EXTRA_REGISTRY
    except ImportError:
        pass
    else:
        registry = registry.copy()
        registry.add(*EXTRA_REGISTRY, ignore_duplicates=True)
    return spandrel.ModelLoader(device=device, registry=registry)


def read_spandrel_model(path: Union[str, Path], device=None):
    """Any model file spandrel recognises, as its descriptor (``CheckpointError`` when it does not)."""
    path = Path(path)
    loader = spandrel_loader(device)
    try:
        return loader.load_from_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{path.name}: not a model file spandrel can load ({first_line(e)})") from None


def check_face_descriptor(descriptor, name: Optional[str] = None) -> None:
    """Refuse a spandrel model that is not a face-restoration network (``NotAFaceModelError``
    saying what it is: an upscaler, a restoration or inpainting model ...)."""
    arch = getattr(getattr(descriptor, "architecture", None), "name", None) or type(descriptor).__name__
    purpose = getattr(descriptor, "purpose", None)
    if purpose != FACE_PURPOSE or int(getattr(descriptor, "input_channels", 3)) != 3:
        raise NotAFaceModelError(name or arch, arch, purpose, getattr(descriptor, "scale", 1))


class FaceModel:
    """A spandrel face-restoration model as the pipeline's restore model (see the module notes).

    ``dtype``: float16 / bfloat16 where the architecture supports it, else float32. The
    descriptor's module is moved and cast in place (``to``), as spandrel's own ``to`` does.
    """

    variant = "restoration"   # the task it serves (pipeline.check_variant)

    def __init__(self, descriptor, name: Optional[str] = None, dtype: Optional[torch.dtype] = None):
        check_face_descriptor(descriptor, name)
        self.descriptor = descriptor
        self.architecture = str(descriptor.architecture.id)
        self.name = name or descriptor.architecture.name
        supported = {torch.float16: descriptor.supports_half, torch.bfloat16: descriptor.supports_bfloat16}
        self.dtype = dtype if dtype is not None and supported.get(dtype, dtype == torch.float32) else torch.float32
        descriptor.model.eval().to(dtype=self.dtype)

    def parameters(self):
        return self.descriptor.model.parameters()

    def buffers(self):
        return self.descriptor.model.buffers()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def to(self, device) -> "FaceModel":
        self.descriptor.model.to(device)
        return self

    def __call__(self, x: Tensor, w=None, adain=None) -> Tensor:
        """Crops [N,3,512,512] in -1..1 -> restored crops in -1..1 (float32). ``w`` is the fidelity
        for CodeFormer (spandrel's default 0.5 when None); GFPGAN and RestoreFormer have none, and
        ``adain`` applies to none of them: both are accepted so the pipeline calls every model alike."""
        kwargs = CALL_KWARGS.get(self.architecture)
        x = x.to(self.dtype)
        if kwargs is None:
            return self.descriptor((x + 1) / 2).float() * 2 - 1
        return self.descriptor.model(x, **kwargs(w))[0].float()

    def __repr__(self) -> str:
        return f"FaceModel({self.name}, {self.architecture}, {str(self.dtype).replace('torch.', '')})"


def load_face_model(path: Union[str, Path], device=None, dtype: Optional[torch.dtype] = None) -> FaceModel:
    """A face-restoration model file (GFPGAN, RestoreFormer, CodeFormer via spandrel) as a FaceModel.

    ``MissingDependencyError`` without spandrel, ``CheckpointError`` for a file spandrel cannot
    load, ``NotAFaceModelError`` for another kind of model (an upscaler ...).
    """
    path = Path(path)
    return FaceModel(read_spandrel_model(path, device), name=path.name, dtype=dtype)
