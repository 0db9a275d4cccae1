"""The five-point alignment templates faces are warped to (facts, no code): eye centres (image
left, right), nose tip, mouth corners. Used by the face alignment (``faces.align``) and by face
models that say which framing their crops have (``models.onnx_face``), so it sits below both.
"""
from __future__ import annotations

import torch

# (x, y) in a 512x512 crop: CodeFormer's (FFHQ) template; other sizes scale it by size/512.
FFHQ_TEMPLATE_512 = torch.tensor(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
     [201.26117, 371.41043], [313.08905, 371.15118]], dtype=torch.float64)

# ArcFace 128 template as fractions of the crop side; GPEN-BFR-256 is aligned to it scaled to 256.
ARCFACE_128 = torch.tensor([[0.36167656, 0.40387734], [0.63696719, 0.40235469], [0.50019687, 0.56044219],
                            [0.38710391, 0.72160547], [0.61507734, 0.72034453]], dtype=torch.float64)

# By name, as fractions of the crop side.
TEMPLATES = {"ffhq": FFHQ_TEMPLATE_512 / 512.0, "arcface_128": ARCFACE_128}
