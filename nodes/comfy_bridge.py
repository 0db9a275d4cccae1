"""The only module that touches ComfyUI: folders, devices, memory, progress, interrupts, upscalers.

Everything is imported at call time, so importing the pack never fails outside ComfyUI and the
test suite can supply stand-ins for the few modules used here.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, List, Optional

MODEL_EXTENSIONS = (".pth", ".pt", ".ckpt", ".safetensors", ".bin")
# ComfyUI folder names this pack registers, and the models/ sub-folder each one points to.
FOLDERS = {"facerestore_models": "facerestore_models", "codeformer": "codeformer",
           "facedetection": "facedetection"}
CODEFORMER_FOLDERS = ("facerestore_models", "codeformer")


def register_folders() -> bool:
    """Register the model folders (no scan, no torch). False when not inside ComfyUI."""
    try:
        import folder_paths
    except ImportError:
        return False
    for name, sub in FOLDERS.items():
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, sub))
    return True


# -- files ----------------------------------------------------------------------------------------
def list_files(folder_names: Iterable[str]) -> List[str]:
    """Weight files in ComfyUI's folders (extension-filtered, de-duplicated, in listing order)."""
    import folder_paths
    seen, out = set(), []
    for name in folder_names:
        try:
            files = folder_paths.get_filename_list(name)
        except KeyError:  # folder not registered (old config); nothing to offer
            continue
        for f in files:
            if f.lower().endswith(MODEL_EXTENSIONS) and f not in seen:
                seen.add(f)
                out.append(f)
    return out


def find_file(folder_names: Iterable[str], filename: str) -> Optional[str]:
    import folder_paths
    for name in folder_names:
        try:
            path = folder_paths.get_full_path(name, filename)
        except KeyError:
            path = None
        if path:
            return path
    return None


def download_dir(folder_name: str) -> str:
    """Where a missing file of this folder is downloaded to: the folder's first path."""
    import folder_paths
    try:
        paths = folder_paths.get_folder_paths(folder_name)
    except KeyError:
        paths = []
    return paths[0] if paths else os.path.join(folder_paths.models_dir, folder_name)


def progress_bar(total: int):
    """``update(done, total)`` callable driving ComfyUI's progress bar for the running node."""
    import comfy.utils
    bar = comfy.utils.ProgressBar(max(1, int(total)))

    def update(done: int, new_total: Optional[int] = None) -> None:
        bar.update_absolute(int(done), None if not new_total else int(new_total))
    return update


def check_interrupt() -> None:
    """Raises ComfyUI's interrupt exception when the user pressed cancel."""
    import comfy.model_management
    comfy.model_management.throw_exception_if_processing_interrupted()


# -- devices and memory ----------------------------------------------------------------------------
def compute_device():
    import comfy.model_management
    return comfy.model_management.get_torch_device()


def offload_device():
    import comfy.model_management
    return comfy.model_management.unet_offload_device()


def auto_half(model_params: int = 0) -> bool:
    """Whether ComfyUI says the compute device runs fp16 well."""
    import comfy.model_management
    return bool(comfy.model_management.should_use_fp16(compute_device(), model_params=model_params))


def _module_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) + \
        sum(b.numel() * b.element_size() for b in module.buffers())


@contextmanager
def on_compute_device(modules: Iterable, working_bytes: int = 0) -> Iterator[object]:
    """Frees ComfyUI memory for the job, moves the modules to the compute device, and always
    puts them back on the offload device afterwards."""
    import comfy.model_management as mm
    modules = [m for m in modules if m is not None]
    device = mm.get_torch_device()
    need = sum(_module_bytes(m) for m in modules) + int(working_bytes)
    mm.free_memory(need, device)
    try:
        for m in modules:
            m.to(device)
        yield device
    finally:
        off = mm.unet_offload_device()
        for m in modules:
            m.to(off)
        mm.soft_empty_cache()


# -- upscale models (ComfyUI's UPSCALE_MODEL type) --------------------------------------------------
def upscale_with_model(upscale_model) -> Callable:
    """frames [B,3,H,W] 0..1 -> upscaled frames, through ComfyUI's own "Upscale Image (using Model)"."""
    from comfy_extras.nodes_upscale_model import ImageUpscaleWithModel

    def run(frames):
        image = frames.permute(0, 2, 3, 1).float().cpu()
        fn = getattr(ImageUpscaleWithModel, "execute", None) or ImageUpscaleWithModel().upscale
        out = fn(upscale_model=upscale_model, image=image)
        out = out[0] if isinstance(out, (tuple, list)) else out[0]  # tuple or V3 NodeOutput
        return out.to(frames.device).permute(0, 3, 1, 2)
    return run
