"""ComfyUI entry point of the CodeFormer pack: registers the node classes and model folders.

Fast and safe to import anywhere: no torch work, no file scans (only folder registration when
ComfyUI's ``folder_paths`` is importable), and outside ComfyUI (e.g. pytest collecting the
repository) it simply exposes the mappings.
"""
from __future__ import annotations

import logging
import sys

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

try:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811
    from .nodes.comfy_bridge import register_folders

    register_folders()
except ImportError as exc:
    if __package__ and __package__ in sys.modules:  # loaded as a package: a real error, show it
        raise
    # Loaded as a stand-alone file (no importable parent package, e.g. a test collector).
    logging.getLogger(__name__).debug("CodeFormer pack not loaded as a package: %s", exc)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
