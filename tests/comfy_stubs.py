"""Stand-ins for the few ComfyUI modules the node layer touches, with the real signatures
(ComfyUI 0.3.64: folder_paths, comfy.model_management, comfy.utils, comfy_extras.nodes_upscale_model).

``install(monkeypatch, models_dir)`` puts them into sys.modules for one test (or module) only
and returns a namespace with the recorded calls.
"""
from __future__ import annotations

import os
import sys
import types
from typing import Collection, List, Optional

import torch

SUPPORTED_PT_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}


class InterruptProcessingException(Exception):
    pass


def make_folder_paths(models_dir: str) -> types.ModuleType:
    fp = types.ModuleType("folder_paths")
    fp.models_dir = models_dir
    fp.supported_pt_extensions = SUPPORTED_PT_EXTENSIONS
    fp.folder_names_and_paths = {
        "upscale_models": ([os.path.join(models_dir, "upscale_models")], SUPPORTED_PT_EXTENSIONS),
        "checkpoints": ([os.path.join(models_dir, "checkpoints")], SUPPORTED_PT_EXTENSIONS),
    }

    def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
        if folder_name in fp.folder_names_and_paths:
            paths, _ = fp.folder_names_and_paths[folder_name]
            if full_folder_path not in paths:
                paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)
        else:
            fp.folder_names_and_paths[folder_name] = ([full_folder_path], set())

    def get_folder_paths(folder_name: str) -> List[str]:
        return fp.folder_names_and_paths[folder_name][0][:]

    def filter_files_extensions(files: Collection[str], extensions: Collection[str]) -> List[str]:
        return sorted(f for f in files if os.path.splitext(f)[-1].lower() in extensions or len(extensions) == 0)

    def get_filename_list(folder_name: str) -> List[str]:
        paths, exts = fp.folder_names_and_paths[folder_name]
        out = set()
        for p in paths:
            if os.path.isdir(p):
                for root, _, files in os.walk(p, followlinks=True):
                    for f in files:
                        out.add(os.path.relpath(os.path.join(root, f), p).replace(os.sep, "/"))
        return sorted(filter_files_extensions(out, exts))

    def get_full_path(folder_name: str, filename: str) -> Optional[str]:
        if folder_name not in fp.folder_names_and_paths:
            return None
        for p in fp.folder_names_and_paths[folder_name][0]:
            full = os.path.join(p, os.path.relpath(os.path.join("/", filename), "/"))
            if os.path.isfile(full):
                return full
        return None

    def get_full_path_or_raise(folder_name: str, filename: str) -> str:
        full = get_full_path(folder_name, filename)
        if full is None:
            raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
        return full

    for f in (add_model_folder_path, get_folder_paths, filter_files_extensions, get_filename_list,
              get_full_path, get_full_path_or_raise):
        setattr(fp, f.__name__, f)
    return fp


def make_comfy(calls: dict, device: str = "cpu"):
    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    mm = types.ModuleType("comfy.model_management")
    utils = types.ModuleType("comfy.utils")
    state = {"interrupt": False}
    mm.InterruptProcessingException = InterruptProcessingException
    mm.OOM_EXCEPTION = torch.cuda.OutOfMemoryError

    def get_torch_device():
        return torch.device(device)

    def unet_offload_device():
        return torch.device("cpu")

    def free_memory(memory_required, device, keep_loaded=[]):  # noqa: B006 (real signature)
        calls.setdefault("free_memory", []).append((memory_required, device))

    def soft_empty_cache(force=False):
        calls["soft_empty_cache"] = calls.get("soft_empty_cache", 0) + 1

    def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
        return calls.get("fp16_ok", False)

    def module_size(module):
        return sum(p.numel() * p.element_size() for p in module.parameters())

    def interrupt_current_processing(value=True):
        state["interrupt"] = value

    def processing_interrupted():
        return state["interrupt"]

    def throw_exception_if_processing_interrupted():
        calls["interrupt_checks"] = calls.get("interrupt_checks", 0) + 1
        if state["interrupt"]:
            state["interrupt"] = False
            raise InterruptProcessingException()

    for f in (get_torch_device, unet_offload_device, free_memory, soft_empty_cache, should_use_fp16,
              module_size, interrupt_current_processing, processing_interrupted,
              throw_exception_if_processing_interrupted):
        setattr(mm, f.__name__, f)

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total, self.current, self.node_id = total, 0, node_id
            calls.setdefault("progress", []).append(self)
            self.updates = []

        def update_absolute(self, value, total=None, preview=None):
            if total is not None:
                self.total = total
            self.current = min(value, self.total)
            self.updates.append((self.current, self.total))

        def update(self, value):
            self.update_absolute(self.current + value)

    utils.ProgressBar = ProgressBar
    comfy.model_management, comfy.utils = mm, utils
    return comfy, mm, utils


def make_upscale_extras(calls: dict):
    """comfy_extras.nodes_upscale_model with ImageUpscaleWithModel.execute -> NodeOutput-like."""
    extras = types.ModuleType("comfy_extras")
    extras.__path__ = []
    mod = types.ModuleType("comfy_extras.nodes_upscale_model")

    class NodeOutput:
        def __init__(self, *args):
            self.args = args

        def __getitem__(self, i):
            return self.args[i]

    class ImageUpscaleWithModel:
        @classmethod
        def execute(cls, upscale_model, image):
            calls.setdefault("upscale", []).append(tuple(image.shape))
            x = image.movedim(-1, -3)
            s = upscale_model.scale
            y = upscale_model(x)
            assert y.shape[-1] == x.shape[-1] * s
            return NodeOutput(torch.clamp(y.movedim(-3, -1), 0, 1))

    mod.ImageUpscaleWithModel = ImageUpscaleWithModel
    extras.nodes_upscale_model = mod
    return extras, mod


def install(monkeypatch, models_dir: str, device: str = "cpu") -> types.SimpleNamespace:
    calls: dict = {}
    fp = make_folder_paths(str(models_dir))
    comfy, mm, utils = make_comfy(calls, device)
    extras, up = make_upscale_extras(calls)
    for name, mod in (("folder_paths", fp), ("comfy", comfy), ("comfy.model_management", mm),
                      ("comfy.utils", utils), ("comfy_extras", extras),
                      ("comfy_extras.nodes_upscale_model", up)):
        monkeypatch.setitem(sys.modules, name, mod)
    return types.SimpleNamespace(calls=calls, folder_paths=fp, mm=mm, utils=utils)
