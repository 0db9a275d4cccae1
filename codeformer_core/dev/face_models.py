"""Random-weight spandrel models for tests and example runs (never imported at run time).

Built from spandrel's own architecture classes with PyTorch's default initialisation, so spandrel
recognises them exactly as it does the published files:

* ``random_gfpgan``: GFPGAN v1.3/1.4 (``GFPGANv1Clean``, the only configuration spandrel loads;
  87 M parameters, about 30 s a face on a busy 2-core CPU),
* ``random_restoreformer``: RestoreFormer, by default narrower than the published one (spandrel
  reads the widths from the tensors) so a CPU test runs in seconds; ``published=True`` for the
  published size,
* ``random_upscaler``: a small 4x ESRGAN (RRDBNet): not a face model, for the error paths.

The global random generator is left as it was (``torch.random.fork_rng``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

import torch

StateDict = Dict[str, torch.Tensor]


def _seeded(build, seed: int) -> StateDict:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {k: v.detach().clone() for k, v in build().state_dict().items()}


def random_gfpgan(seed: int = 0) -> StateDict:
    from spandrel.architectures.GFPGAN import GFPGAN
    return _seeded(GFPGAN, seed)


def random_restoreformer(seed: int = 0, published: bool = False) -> StateDict:
    from spandrel.architectures.RestoreFormer import RestoreFormer
    if published:
        return _seeded(RestoreFormer, seed)
    return _seeded(lambda: RestoreFormer(n_embed=64, embed_dim=32, ch=32, ch_mult=(1, 1, 1, 1, 2, 2),
                                         num_res_blocks=1, z_channels=32, head_size=4), seed)


def random_upscaler(seed: int = 0, scale: int = 4) -> StateDict:
    from spandrel.architectures.ESRGAN import ESRGAN
    return _seeded(lambda: ESRGAN(num_filters=8, num_blocks=1, scale=scale), seed)


def write_model(state_dict: StateDict, path: Union[str, Path], half: bool = False) -> Path:
    """Save as ``.pth`` (or ``.safetensors`` by the suffix); ``half`` stores float16 (half the size;
    loaders cast back to the model's precision)."""
    path = Path(path)
    sd = {k: v.half() if half and v.is_floating_point() else v for k, v in state_dict.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path
