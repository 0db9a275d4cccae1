"""Paste Faces Back inside the real ComfyUI (in-process, CPU, synthetic weights): one way to paste (the
band compositor the all-in-one node and the CLI use, under the same memory budget) with the output of the
whole-frame paste it replaced, and the user's paste controls (regions, mask shape, MASK input)."""
from __future__ import annotations

import pytest
import torch

from codeformer_core import pipeline
from codeformer_core.faces.paste import PasteOptions, paste_faces
from helpers import run_node

DETECT = dict(threshold=0.7, selection="largest", sort_by="area", index=0, max_faces=0, resolution=640,
              smoothing=0.0)
PASTE = dict(visibility=1.0, use_parsing=True, color_match=False, feather=0, upscale=1.0)
TINY_BUDGET_GB = 0.004   # a few MB: many bands of rows, one face's layers at a time


@pytest.fixture(scope="module")
def N(comfyui):
    return comfyui.N


@pytest.fixture(scope="module")
def detector(N):
    (bundle,) = run_node(N["CodeFormerFaceDetectorLoader"], detector_model="detection_Resnet50_Final.pth",
                         parsing_model="parsing_parsenet.pth")
    return bundle


@pytest.fixture(scope="module")
def batch(astronaut_image):
    """Two frames, a face in each: the astronaut and her mirror image."""
    return torch.cat([astronaut_image, astronaut_image.flip(2)])


@pytest.fixture(scope="module")
def faces(N, detector, batch):
    """The detected faces with 'restored' crops that differ everywhere (the inverted crops)."""
    found = run_node(N["CodeFormerDetectFaces"], image=batch, face_detector=detector, **DETECT)[0]
    assert found.counts_per_frame().tolist() == [1, 1]
    return found.with_crops(1 - found.crops)


@pytest.fixture(scope="module")
def parse_masks(faces):
    return pipeline.parse_masks_for(faces.meta["parser"], faces.crops)


@pytest.mark.parametrize("use_parsing,upscale,feather", [(True, 1.0, 0), (False, 2.0, 0), (False, 1.5, 7)])
def test_node_pastes_in_bands_what_the_whole_frame_paste_gave(N, batch, faces, parse_masks, use_parsing, upscale,
                                                               feather):
    """The node equals the whole-frame paste_faces it used to call (all frames in one chunk): with the
    default budget, and with a tiny one on one frame (bands of a few rows)."""
    kw = {**PASTE, "use_parsing": use_parsing, "upscale": upscale, "feather": feather}
    options = PasteOptions(upscale=upscale, feather=feather or None)
    image, mask = run_node(N["CodeFormerPasteFaces"], image=batch, faces=faces, **kw)
    want, want_mask = paste_faces(pipeline.to_frames(batch), faces, None, options,
                                  parse_masks=parse_masks if use_parsing else None)
    assert torch.equal(image, pipeline.from_frames(want)) and torch.equal(mask, want_mask[:, 0])
    assert image.shape[1] == int(256 * upscale) and (mask > 0).any()
    one = faces.frame_range(0, 1)
    image, mask = run_node(N["CodeFormerPasteFaces"], image=batch[:1], faces=one, **kw, max_memory_gb=TINY_BUDGET_GB)
    want, want_mask = paste_faces(pipeline.to_frames(batch[:1]), one, None, options,
                                  parse_masks=parse_masks[:1] if use_parsing else None)
    assert torch.equal(image, pipeline.from_frames(want)) and torch.equal(mask, want_mask[:, 0])


def test_tiny_budget_pastes_in_many_bands(N, comfyui, batch, faces, monkeypatch):
    """The node's bands follow the budget, as the all-in-one node's do."""
    paste_module = comfyui.pack.nodes.paste
    calls = []
    real = paste_module.paste_bands

    def recorded(*args, **kwargs):
        bands = list(real(*args, **kwargs))
        calls.append(len(bands))
        yield from bands
    monkeypatch.setattr(paste_module, "paste_bands", recorded)
    run_node(N["CodeFormerPasteFaces"], image=batch, faces=faces, **{**PASTE, "use_parsing": False, "upscale": 2.0},
             max_memory_gb=TINY_BUDGET_GB)
    tiny = list(calls)
    calls.clear()
    run_node(N["CodeFormerPasteFaces"], image=batch, faces=faces, **{**PASTE, "use_parsing": False, "upscale": 2.0})
    assert calls == [1] and len(tiny) == 2 and min(tiny) > 10
