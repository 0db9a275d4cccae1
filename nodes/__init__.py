"""The pack's ComfyUI nodes (V3 schema: ``comfy_api.latest``). All computation is in codeformer_core;
these modules only describe the sockets and call the core.

Imported by the pack's ``comfy_entrypoint`` inside ComfyUI (it needs ``comfy_api``, ``comfy`` and
``folder_paths``). Importing builds no model and scans no folder.
"""
from __future__ import annotations

from typing import List, Type

from comfy_api.latest import ComfyExtension, io

from . import comfy_bridge
from .all_in_one import CodeFormerRestoreFacesAllInOne
from .faces import CodeFormerCropsToImage, CodeFormerDetectFaces, CodeFormerImageToCrops
from .loaders import CodeFormerFaceDetectorLoader, CodeFormerModelLoader
from .paste import CodeFormerPasteFaces
from .restore import (CodeFormerColorizeFaces, CodeFormerInpaintFaces, CodeFormerRestoreFaces,
                      CodeFormerRestoreFacesWithModel)

# Node ids (schema node_id) are stable: saved workflows refer to them. Display names may change.
NODES: List[Type[io.ComfyNode]] = [
    CodeFormerModelLoader,
    CodeFormerFaceDetectorLoader,
    CodeFormerDetectFaces,
    CodeFormerRestoreFaces,
    CodeFormerColorizeFaces,
    CodeFormerInpaintFaces,
    CodeFormerPasteFaces,
    CodeFormerCropsToImage,
    CodeFormerImageToCrops,
    CodeFormerRestoreFacesAllInOne,
    CodeFormerRestoreFacesWithModel,
]


class CodeFormerExtension(ComfyExtension):
    async def get_node_list(self) -> List[Type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> CodeFormerExtension:
    """Registers the pack's model folders with ComfyUI and returns its node list."""
    comfy_bridge.register_folders()
    return CodeFormerExtension()
