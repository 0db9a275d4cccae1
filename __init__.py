"""ComfyUI entry point of the CodeFormer pack (V3 nodes, see nodes/).

ComfyUI (>= 0.3.64) loads this folder as a package and calls ``comfy_entrypoint()``. There is
deliberately no NODE_CLASS_MAPPINGS here: ComfyUI would then take its legacy path and never call
the entry point. Importing this file imports nothing else, so it is safe outside ComfyUI too (a
test collector that walks up to this package, a packaging tool); the nodes, torch and ComfyUI's
modules are imported when ComfyUI calls the entry point.
"""
from __future__ import annotations

import logging


async def comfy_entrypoint():
    """The pack's ``ComfyExtension``, with its model folders registered."""
    try:
        from .nodes import comfy_entrypoint as nodes_entrypoint
    except Exception:
        # ComfyUI logs only the message of an entry-point error; keep the traceback in its log.
        logging.getLogger(__name__).exception("CodeFormer nodes could not be imported")
        raise
    return await nodes_entrypoint()


__all__ = ["comfy_entrypoint"]
