"""Paste-back the user controls (issue 20), in the core: which ParseNet regions take the restored pixels,
the mask's grow / blur, a frame mask, and the detector's face-size filter."""
from __future__ import annotations

import pytest
import torch

from codeformer_core.errors import InputError
from codeformer_core.faces.align import FFHQ_TEMPLATE_512, align_faces
from codeformer_core.faces.detect import Detections, select_faces
from codeformer_core.faces.masks import (REGION_PRESETS, check_frame_masks, parse_labels_to_masks, region_labels,
                                         shape_masks)
from codeformer_core.faces.paste import PasteOptions, paste_faces

# The labels each preset pastes, written out by hand from CelebAMask-HQ's order (0 background, 1 skin,
# 2 nose, 3 eye_g, 4 l_eye, 5 r_eye, 6 l_brow, 7 r_brow, 8 l_ear, 9 r_ear, 10 mouth, 11 u_lip, 12 l_lip,
# 13 hair, 14 hat, 15 ear_r, 16 neck_l, 17 neck, 18 cloth).
PRESET_LABELS = {
    "face": {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15},
    "face_keep_eyes": {1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 15},
    "face_keep_mouth": {1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 15},
    "skin_only": {1},
    "face_no_hair": {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15},
    "face_and_hair": {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
}
BLOCK = 98   # a 5 x 5 grid of one-label blocks over the 512 crop; the blur (sigma ~15.6 all told) stays inside


def block_labels():
    """[1,512,512]: label k fills block k of a 5x5 grid (row-major; blocks 19..24 background)."""
    lab = torch.zeros(1, 512, 512, dtype=torch.long)
    for k in range(19):
        r, c = divmod(k, 5)
        lab[0, 10 + r * BLOCK:10 + (r + 1) * BLOCK, 10 + c * BLOCK:10 + (c + 1) * BLOCK] = k
    return lab


def block_centre(k):
    r, c = divmod(k, 5)
    return 10 + r * BLOCK + BLOCK // 2, 10 + c * BLOCK + BLOCK // 2


@pytest.mark.parametrize("preset", sorted(PRESET_LABELS))
def test_each_preset_pastes_its_labels(preset):
    assert set(REGION_PRESETS) == set(PRESET_LABELS)
    labels = region_labels(preset)
    assert labels == PRESET_LABELS[preset]
    m = parse_labels_to_masks(block_labels(), labels)[0, 0]
    for k in range(19):
        v = float(m[block_centre(k)])
        assert (v > 0.99) if k in PRESET_LABELS[preset] else (v < 0.01), (preset, k, v)


def test_default_regions_are_the_originals_bit_for_bit():
    lab = block_labels()
    assert torch.equal(parse_labels_to_masks(lab, region_labels()), parse_labels_to_masks(lab))
    assert PasteOptions().regions == region_labels("face")


def test_region_names_and_keep_regions():
    assert region_labels(regions="skin, nose,lips") == {1, 2, 11, 12}
    assert region_labels(regions=["ears"]) == {8, 9, 15}
    assert region_labels("face", keep_regions="eyes,mouth") == PRESET_LABELS["face"] - {4, 5, 10}
    assert region_labels(regions="neck,cloth", keep_regions="cloth") == {16, 17}
    with pytest.raises(InputError, match="unknown region 'nsoe'; the regions are skin, nose"):
        region_labels(regions="skin,nsoe")
    with pytest.raises(InputError, match="unknown region to keep 'teeth'"):
        region_labels(keep_regions="teeth")
    with pytest.raises(InputError, match="unknown region preset 'faces'; choose one of face, "):
        region_labels("faces")
    with pytest.raises(InputError, match="no region is left to paste"):
        region_labels("skin_only", keep_regions="skin")


def test_shape_masks_grow_and_blur_are_monotonic_and_bounded():
    m = parse_labels_to_masks(block_labels(), {6, 7, 12})   # blocks away from the crop's edges
    grown = [shape_masks(m, g) for g in (-12, -4, 0, 4, 12)]
    assert grown[2] is m
    for a, b in zip(grown, grown[1:]):
        assert bool((a <= b).all()) and not torch.equal(a, b)
    square = torch.ones(1, 1, 64, 64)
    assert torch.equal(shape_masks(square, 5), square)                   # nothing exists beyond the crop
    shrunk = shape_masks(square, -5)
    assert shrunk[0, 0, 5:-5, 5:-5].eq(1).all() and shrunk[0, 0, :5].eq(0).all() and shrunk[0, 0, :, -5:].eq(0).all()
    sharp = torch.zeros(1, 1, 512, 512)
    sharp[..., 100:300, 150:350] = 1
    for b in (1, 4, 16):
        blurred = shape_masks(sharp, 0, b)
        assert float(blurred.min()) >= 0 and float(blurred.max()) <= 1
        assert abs(float(blurred.sum() - sharp.sum())) < 1e-4 * float(sharp.sum())   # far from the crop's edges
        assert float((blurred - sharp).abs().max()) > 0.2
    soft_square = shape_masks(square, 0, 8)
    assert soft_square[0, 0, 32, 32] > 0.99 and 0.4 < soft_square[0, 0, 32, 0] < 0.6   # half-way at the edge


@pytest.fixture(scope="module")
def scene():
    """A 300x260 colour frame with one face (template landmarks), its crop, and 'restored' = inverted."""
    gen = torch.Generator().manual_seed(3)
    frame = (torch.rand(1, 3, 300, 260, generator=gen) * 0.5 + 0.25)
    lm = (FFHQ_TEMPLATE_512.float() - 256) * 0.35 + torch.tensor([130.0, 150.0])
    faces = align_faces(frame, lm[None], torch.tensor([0]))
    return frame, faces, 1 - faces.crops, parse_labels_to_masks(block_labels())


def test_defaults_and_a_full_mask_change_nothing(scene):
    frame, faces, restored, pm = scene
    for parse in (None, pm):
        want, want_m = paste_faces(frame, faces, restored, parse_masks=parse)
        got, got_m = paste_faces(frame, faces, restored, PasteOptions(mask_grow=0, mask_blur=0), parse_masks=parse,
                                 frame_masks=torch.ones(1, 300, 260))
        assert torch.equal(got, want) and torch.equal(got_m, want_m)


@pytest.mark.parametrize("parse", [False, True])
def test_grow_and_blur_in_the_paste_are_monotonic(scene, parse):
    frame, faces, restored, pm = scene
    masks = [paste_faces(frame, faces, restored, PasteOptions(mask_grow=g), parse_masks=pm if parse else None)[1]
             for g in (-16, 0, 16)]
    assert bool((masks[0] <= masks[1] + 1e-6).all()) and masks[0].sum() < masks[1].sum()
    if parse:   # the square mask covers the whole crop already: growing it changes nothing
        assert bool((masks[1] <= masks[2] + 1e-6).all()) and masks[1].sum() < masks[2].sum()
    blurred = paste_faces(frame, faces, restored, PasteOptions(mask_blur=12), parse_masks=pm if parse else None)[1]
    assert float(blurred.min()) >= 0 and float(blurred.max()) <= 1 and not torch.equal(blurred, masks[1])


@pytest.mark.parametrize("upscale", [1.0, 2.0])
def test_frame_mask_limits_the_change_to_its_area(scene, upscale):
    frame, faces, restored, pm = scene
    fm = torch.zeros(1, 300, 260)
    fm[:, :, :130] = 1.0
    fm[:, 140:160, :130] = 0.5                                          # soft values are kept
    _, plain_m = paste_faces(frame, faces, restored, upscale=upscale, parse_masks=pm)
    bg, _ = paste_faces(frame, faces, faces.crops, upscale=upscale, visibility=0.0)   # the background alone
    out, m = paste_faces(frame, faces, restored, upscale=upscale, parse_masks=pm, frame_masks=fm)
    W = int(260 * upscale)
    right = slice(int(131 * upscale) + 1, W)
    assert torch.equal(out[..., right], bg[..., right]) and m[..., right].eq(0).all()
    left = slice(0, int(129 * upscale))
    assert (out[..., left] != bg[..., left]).any()
    ys = slice(int(140 * upscale) + 1, int(160 * upscale) - 1)
    torch.testing.assert_close(m[..., ys, left], plain_m[..., ys, left] * 0.5, rtol=0, atol=1e-6)


def test_frame_mask_of_the_wrong_size_says_so(scene):
    frame, faces, restored, _ = scene
    with pytest.raises(InputError, match=r"mask has shape \(1, 300, 200\), but the image is 260x300 pixels \(the mask "
                                         r"is 200x300; .*give a mask of the image size"):
        paste_faces(frame, faces, restored, frame_masks=torch.ones(1, 300, 200))
    with pytest.raises(InputError, match="3 masks for 1 images; give one mask or one per image"):
        check_frame_masks(torch.ones(3, 300, 260), 1, (300, 260))
    assert check_frame_masks(torch.ones(300, 260), 2, (300, 260)).shape == (2, 300, 260)


def sized_detections():
    """Frame 0: faces with short sides 20, 60, 100 (scores 0.9, 0.8, 0.99); frame 1: 40 and 150."""
    sides = [(20, 30), (70, 60), (100, 120), (40, 40), (150, 200)]
    x = [10.0, 100.0, 300.0, 10.0, 200.0]
    boxes = torch.tensor([[x0, 10.0, x0 + w, 10.0 + h] for x0, (w, h) in zip(x, sides)])
    points = ((boxes[:, None, :2] + boxes[:, None, 2:]) / 2).expand(5, 5, 2).clone()
    points[:, 0, 0] -= 5
    points[:, 1, 0] += 5
    return Detections(boxes, torch.tensor([0.9, 0.8, 0.99, 0.7, 0.6]), points, torch.tensor([0, 0, 0, 1, 1]), 2,
                      (400, 600))


def short_sides(dets):
    wh = dets.boxes[:, 2:] - dets.boxes[:, :2]
    return sorted(wh.amin(1).round().long().tolist())


def test_size_filter_then_selection():
    dets = sized_detections()
    assert short_sides(select_faces(dets, min_size=50)) == [60, 100, 150]
    assert short_sides(select_faces(dets, max_size=60)) == [20, 40, 60]
    assert short_sides(select_faces(dets, min_size=30, max_size=120)) == [40, 60, 100]
    assert short_sides(select_faces(dets, min_size=60, max_size=60)) == [60]
    assert short_sides(select_faces(dets)) == [20, 40, 60, 100, 150]
    # selection and index pick among the faces left: the largest under 80 px, the first by confidence
    assert short_sides(select_faces(dets, max_size=80, selection="largest")) == [40, 60]
    assert short_sides(select_faces(dets, min_size=30, selection="index", sort_by="confidence", index=0)) == [40, 100]
    with pytest.raises(ValueError, match="min_size 90 is more than max_size 40"):
        select_faces(dets, min_size=90, max_size=40)
