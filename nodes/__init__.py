"""ComfyUI node classes of the CodeFormer pack (thin: all computation is in codeformer_core).

Importing this package touches neither torch nor ComfyUI; node functions import them on use.
"""
from __future__ import annotations

from .all_in_one import CodeFormerRestoreFacesAllInOne
from .faces import CodeFormerCropsToImage, CodeFormerDetectFaces, CodeFormerImageToCrops
from .loaders import CodeFormerFaceDetectorLoader, CodeFormerModelLoader
from .paste import CodeFormerPasteFaces
from .restore import CodeFormerColorizeFaces, CodeFormerInpaintFaces, CodeFormerRestoreFaces

# Node ids are stable: shared workflows refer to them. Display names may change.
NODE_CLASS_MAPPINGS = {
    "CodeFormerModelLoader": CodeFormerModelLoader,
    "CodeFormerFaceDetectorLoader": CodeFormerFaceDetectorLoader,
    "CodeFormerDetectFaces": CodeFormerDetectFaces,
    "CodeFormerRestoreFaces": CodeFormerRestoreFaces,
    "CodeFormerColorizeFaces": CodeFormerColorizeFaces,
    "CodeFormerInpaintFaces": CodeFormerInpaintFaces,
    "CodeFormerPasteFaces": CodeFormerPasteFaces,
    "CodeFormerCropsToImage": CodeFormerCropsToImage,
    "CodeFormerImageToCrops": CodeFormerImageToCrops,
    "CodeFormerRestoreFacesAllInOne": CodeFormerRestoreFacesAllInOne,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "CodeFormerModelLoader": "Load CodeFormer Model",
    "CodeFormerFaceDetectorLoader": "Load Face Detector (CodeFormer)",
    "CodeFormerDetectFaces": "Detect Faces (CodeFormer)",
    "CodeFormerRestoreFaces": "CodeFormer Restore Faces",
    "CodeFormerColorizeFaces": "CodeFormer Colorize Faces",
    "CodeFormerInpaintFaces": "CodeFormer Inpaint Faces",
    "CodeFormerPasteFaces": "Paste Faces Back (CodeFormer)",
    "CodeFormerCropsToImage": "Face Crops to Image (CodeFormer)",
    "CodeFormerImageToCrops": "Image to Face Crops (CodeFormer)",
    "CodeFormerRestoreFacesAllInOne": "Restore Faces (CodeFormer, all-in-one)",
}
