"""Paste Faces Back inside the real ComfyUI (in-process, CPU, synthetic weights): one way to paste (the
band compositor the all-in-one node and the CLI use, under the same memory budget) with the output of the
whole-frame paste it replaced, and the user's paste controls (regions, mask shape, MASK input)."""
from __future__ import annotations

import json

import pytest
import torch

from codeformer_core import pipeline
from codeformer_core.faces.masks import region_labels
from codeformer_core.faces.paste import PasteOptions, paste_faces
from helpers import run_node

DETECT = dict(threshold=0.7, selection="largest", sort_by="area", index=0, max_faces=0, resolution=640,
              smoothing=0.0)
PASTE = dict(visibility=1.0, use_parsing=True, color_match=False, feather=0, upscale=1.0)
TINY_BUDGET_GB = 0.004   # a few MB: many bands of rows, one face's layers at a time


@pytest.fixture(scope="module")
def batch(astronaut_image):
    """Two frames, a face in each: the astronaut and her mirror image."""
    return torch.cat([astronaut_image, astronaut_image.flip(2)])


@pytest.fixture(scope="module")
def faces(N, node_detector, batch):
    """The detected faces with 'restored' crops that differ everywhere (the inverted crops)."""
    found = run_node(N["CodeFormerDetectFaces"], image=batch, face_detector=node_detector, **DETECT)[0]
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
    one = faces.take_frames(range(0, 1))
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


# -- the user's paste controls (issue 20) ---------------------------------------------------------------
def test_regions_choose_what_is_pasted(N, batch, faces):
    """face_keep_eyes pastes the parse mask of its labels; the mask output is that blend weight."""
    one, image1 = faces.take_frames(range(0, 1)), batch[:1]
    face_img, face_mask = run_node(N["CodeFormerPasteFaces"], image=image1, faces=one, **PASTE)
    eyes_img, eyes_mask = run_node(N["CodeFormerPasteFaces"], image=image1, faces=one, **PASTE,
                                   regions="face_keep_eyes")
    labels = region_labels("face_keep_eyes")
    want, want_mask = paste_faces(pipeline.to_frames(image1), one, None, PasteOptions(regions=labels),
                                  parse_masks=pipeline.parse_masks_for(one.meta["parser"], one.crops, labels))
    assert torch.equal(eyes_img, pipeline.from_frames(want)) and torch.equal(eyes_mask, want_mask[:, 0])
    assert bool((eyes_mask <= face_mask + 1e-6).all()) and not torch.equal(eyes_mask, face_mask)
    kept, _ = run_node(N["CodeFormerPasteFaces"], image=image1, faces=one, **PASTE, keep_regions="eyes")
    assert torch.equal(kept, eyes_img)                                 # the same set, said the other way


def test_regions_need_parsing(N, batch, faces):
    with pytest.raises(ValueError, match="regions and keep_regions choose face-parsing regions: turn use_parsing on"):
        run_node(N["CodeFormerPasteFaces"], image=batch, faces=faces, **{**PASTE, "use_parsing": False},
                 keep_regions="eyes")
    with pytest.raises(ValueError, match="unknown region to keep 'teeth'"):
        run_node(N["CodeFormerPasteFaces"], image=batch, faces=faces, **PASTE, keep_regions="eyes, teeth")
    assert "regions 'eyes' is not one of face" in N["CodeFormerPasteFaces"].validate_inputs(regions="eyes")


def test_mask_input_limits_the_paste_to_its_area(N, batch, faces):
    """Pixels where the MASK is 0 are the input's, bit for bit; the mask output is the blend weight."""
    m = torch.zeros(1, 256, 256)
    m[:, :, :128] = 1.0
    image, mask = run_node(N["CodeFormerPasteFaces"], image=batch, faces=faces, **{**PASTE, "use_parsing": False},
                           mask=m)
    plain, plain_mask = run_node(N["CodeFormerPasteFaces"], image=batch, faces=faces,
                                 **{**PASTE, "use_parsing": False})
    assert torch.equal(image[:, :, 128:], batch[:, :, 128:]) and mask[:, :, 128:].eq(0).all()
    assert torch.equal(image[:, :, :128], plain[:, :, :128]) and torch.equal(mask[:, :, :128], plain_mask[:, :, :128])
    assert (plain[:, :, 128:] != batch[:, :, 128:]).any()              # the face reaches into the masked-out half
    with pytest.raises(ValueError, match=r"mask has shape \(1, 200, 256\), but the image is 256x256 pixels \(the mask "
                                         r"is 256x200; .*give a mask of the image size"):
        run_node(N["CodeFormerPasteFaces"], image=batch, faces=faces, **PASTE, mask=torch.ones(1, 200, 256))


def test_mask_grow_and_blur_shape_the_square_mask(N, batch, faces):
    kw = dict(image=batch, faces=faces, **{**PASTE, "use_parsing": False})
    _, plain = run_node(N["CodeFormerPasteFaces"], **kw)
    _, shrunk = run_node(N["CodeFormerPasteFaces"], **kw, mask_grow=-40)
    _, soft = run_node(N["CodeFormerPasteFaces"], **kw, mask_grow=-40, mask_blur=20)
    assert bool((shrunk <= plain + 1e-6).all()) and shrunk.sum() < 0.9 * plain.sum()
    assert bool((soft <= 1).all()) and not torch.equal(soft, shrunk)


def test_face_size_filter_in_detect_and_all_in_one(N, node_detector, batch, faces):
    """Faces outside min_size..max_size are left alone: not found, not counted."""
    wh = faces.boxes[:, 2:] - faces.boxes[:, :2]
    short = float(wh.amin(1).min())
    kept = run_node(N["CodeFormerDetectFaces"], image=batch, face_detector=node_detector, **DETECT,
                    min_size=int(short) - 1)
    assert kept[3] == 2
    none = run_node(N["CodeFormerDetectFaces"], image=batch, face_detector=node_detector, **DETECT,
                    min_size=int(short) + 200)
    assert none[3] == 0 and len(none[0]) == 0 and none[2].eq(0).all()
    small = run_node(N["CodeFormerDetectFaces"], image=batch, face_detector=node_detector, **DETECT, max_size=5)
    assert small[3] == 0


def test_all_in_one_leaves_faces_outside_the_sizes_alone(N, node_detector, batch):
    (model, _) = run_node(N["CodeFormerModelLoader"], model_name="codeformer.pth", dtype="auto")
    image, mask, count = run_node(N["CodeFormerRestoreFacesAllInOne"], image=batch, model=model,
                                  face_detector=node_detector, w=0.5, visibility=1.0, selection="largest",
                                  threshold=0.7, max_size=5)
    assert count == 0 and torch.equal(image, batch) and mask.eq(0).all()


def test_keep_eyes_graph_runs_in_comfyuis_executor(comfyui, N):
    """workflows/restore_keep_original_eyes.json validated and run by ComfyUI's own executor; the same
    graph with regions 'face' pastes a larger mask; an unknown preset is refused before the run."""
    from test_nodes_workflows import CORE, Comfy, api_prompt, node_of
    from helpers import NODE_IDS
    infos = {**CORE, **{k: N[k].GET_NODE_INFO_V1() for k in NODE_IDS}}
    comfy = Comfy(comfyui)
    prompt = api_prompt("restore_keep_original_eyes", infos)
    paste = node_of(prompt, "CodeFormerPasteFaces")
    assert prompt[paste]["inputs"]["regions"] == "face_keep_eyes"
    comfy.run(prompt)
    eyes_mask = comfy.output(paste, 1)
    prompt[paste]["inputs"]["regions"] = "face"
    comfy.run(prompt)
    face_mask = comfy.output(paste, 1)
    assert bool((eyes_mask <= face_mask + 1e-6).all()) and eyes_mask.sum() < face_mask.sum()
    prompt[paste]["inputs"]["regions"] = "eyes"
    valid, _, _, node_errors = comfy.validate(prompt)
    assert not valid and "regions 'eyes' is not one of face" in json.dumps(node_errors)
