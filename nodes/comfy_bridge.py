"""Where the pack meets ComfyUI at run time: model folders, devices and memory, progress bars,
cancel, and ComfyUI's upscale models. The node modules call these instead of ComfyUI directly.

Importing this module imports ComfyUI's ``folder_paths`` and ``comfy`` modules; it is only
imported inside ComfyUI (the pack's ``comfy_entrypoint``), never at the pack's import.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, List, Optional

import comfy.model_management as mm
import comfy.utils
import folder_paths

MODEL_EXTENSIONS = (".pth", ".pt", ".ckpt", ".safetensors", ".bin")
ONNX_EXTENSIONS = (".onnx",)   # face models run with ONNX Runtime (Load CodeFormer Model lists them too)
# ComfyUI folder names this pack registers, and the models/ sub-folder each one points to.
FOLDERS = {"facerestore_models": "facerestore_models", "codeformer": "codeformer",
           "facedetection": "facedetection"}
CODEFORMER_FOLDERS = ("facerestore_models", "codeformer")
DETECTOR_FOLDERS = ("facedetection",)


def register_folders() -> None:
    """Register the model folders with ComfyUI (names only: no scan, no torch work)."""
    for name, sub in FOLDERS.items():
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, sub))


def folders_text(folder_names: Iterable[str]) -> str:
    """'models/a or models/b', for messages."""
    return " or ".join(f"models/{name}" for name in folder_names)


# -- files ----------------------------------------------------------------------------------------
def list_files(folder_names: Iterable[str], extensions: Iterable[str] = MODEL_EXTENSIONS) -> List[str]:
    """Weight files in ComfyUI's folders (extension-filtered, de-duplicated, in listing order)."""
    extensions = tuple(extensions)
    seen, out = set(), []
    for name in folder_names:
        try:
            files = folder_paths.get_filename_list(name)
        except KeyError:  # folder not registered (old config); nothing to offer
            continue
        for f in files:
            if f.lower().endswith(extensions) and f not in seen:
                seen.add(f)
                out.append(f)
    return out


def find_file(folder_names: Iterable[str], filename: str) -> Optional[str]:
    """Full path of ``filename`` in the first of the folders that has it, else None."""
    for name in folder_names:
        try:
            path = folder_paths.get_full_path(name, filename)
        except KeyError:
            path = None
        if path:
            return path
    return None


def file_fingerprint(folder_names: Iterable[str], filename: str):
    """(path, size, mtime) of the file ComfyUI would load, or None when it is not on disk: a
    changed or replaced file gives a new value, so ComfyUI reloads it instead of reusing the cache."""
    path = find_file(folder_names, filename)
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_size, st.st_mtime_ns)


def download_dir(folder_name: str) -> str:
    """Where a missing file of this folder is downloaded to: the folder's first path."""
    try:
        paths = folder_paths.get_folder_paths(folder_name)
    except KeyError:
        paths = []
    return paths[0] if paths else os.path.join(folder_paths.models_dir, folder_name)


# -- progress and cancel ------------------------------------------------------------------------------
def progress_bar(total: int) -> Callable[..., None]:
    """``update(done, total=None)`` driving ComfyUI's progress bar of the running node."""
    bar = comfy.utils.ProgressBar(max(1, int(total)))

    def update(done: int, new_total: Optional[int] = None) -> None:
        bar.update_absolute(int(done), None if not new_total else int(new_total))
    return update


def check_interrupt() -> None:
    """Raises ComfyUI's interrupt exception when the user pressed cancel."""
    mm.throw_exception_if_processing_interrupted()


# -- devices and memory ----------------------------------------------------------------------------
def offload_device():
    return mm.unet_offload_device()


def compute_device():
    return mm.get_torch_device()


def auto_half(model_params: int = 0) -> bool:
    """Whether ComfyUI says the compute device runs fp16 well."""
    return bool(mm.should_use_fp16(compute_device(), model_params=model_params))


def module_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


@contextmanager
def on_compute_device(modules: Iterable, working_bytes: int = 0) -> Iterator[object]:
    """Frees ComfyUI memory for the job, moves the modules to the compute device, and always
    puts them back on the offload device afterwards (also on error or cancel). A model that cannot
    move (no ``to``: an ONNX face model, whose session lives on the device it was loaded for) stays."""
    modules = [m for m in modules if m is not None and callable(getattr(m, "to", None))]
    device = compute_device()
    mm.free_memory(sum(module_bytes(m) for m in modules) + int(working_bytes), device)
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
    """frames [B,3,H,W] 0..1 -> upscaled frames, through ComfyUI's own "Upscale Image (using Model)"
    node (its tiling and out-of-memory handling)."""
    # Imported here: only needed when an upscale model is connected (that node is then loaded).
    from comfy_extras.nodes_upscale_model import ImageUpscaleWithModel

    def run(frames):
        image = frames.permute(0, 2, 3, 1).float().cpu()
        out = ImageUpscaleWithModel.execute(upscale_model=upscale_model, image=image)[0]
        return out.to(frames.device).permute(0, 3, 1, 2)
    return run
