"""Paste order (issue 10): overlapping faces are composited as the reference does, in detection-score
order with each later (lower-score) face drawn over the earlier ones, whatever the output order."""
from __future__ import annotations

import torch

from codeformer_core.faces.align import FFHQ_TEMPLATE_512, align_faces
from codeformer_core.faces.detect import Detections
from codeformer_core.faces.paste import paste_faces, paste_order
from codeformer_core.pipeline import RunOptions, restore_images

RED, BLUE = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)


def two_overlapping_faces():
    """A 600x600 green frame (colour: a grey frame would paste grey faces); face A (larger, score
    0.90) and face B (smaller, score 0.99) overlap
    around (300, 300). Returns frame, landmarks [2,5,2] (A first: area order) and scores."""
    template = FFHQ_TEMPLATE_512.float() - 256
    a = template * 0.55 + torch.tensor([270.0, 290.0])
    b = template * 0.45 + torch.tensor([335.0, 310.0])
    frame = torch.tensor([0.2, 0.6, 0.3]).view(1, 3, 1, 1).expand(1, 3, 600, 600).clone()
    return frame, torch.stack([a, b]), torch.tensor([0.90, 0.99])


def colour(rgb, n=1, size=512):
    return torch.tensor(rgb).view(1, 3, 1, 1).expand(n, 3, size, size).clone()


def overlap_pixel(landmarks):
    x, y = landmarks.reshape(-1, 2).mean(0).round().long().tolist()
    return x, y


def test_lower_score_face_is_drawn_last_by_default():
    frame, lm, scores = two_overlapping_faces()
    faces = align_faces(frame, lm, torch.tensor([0, 0]), scores=scores)
    restored = torch.cat([colour(RED), colour(BLUE)])              # A red, B blue
    assert paste_order(faces) == [1, 0]                              # B (0.99) first, then A
    out, _ = paste_faces(frame, faces, restored)
    x, y = overlap_pixel(lm)
    assert out[0, 0, y, x] > 0.99 and out[0, 2, y, x] < 0.01         # A, the lower score, on top
    given, _ = paste_faces(frame, faces, restored, order="given")
    assert given[0, 2, y, x] > 0.99 and given[0, 0, y, x] < 0.01     # batch order: B on top


class FoundFaces:
    """Stands in for the detector: the two faces in area order (A first), as detect() sorts them."""

    def __init__(self, landmarks, scores):
        self.landmarks, self.scores = landmarks, scores

    def detect(self, frames, **kwargs):
        lo, hi = self.landmarks.min(1).values, self.landmarks.max(1).values
        return Detections(torch.cat([lo - 40, hi + 40], 1), self.scores, self.landmarks,
                          torch.tensor([0, 0]), frames.shape[0], tuple(frames.shape[-2:]))


class ColourByPosition(torch.nn.Module):
    """Returns red for the first crop of a batch, blue for the second (-1..1 network output)."""
    variant = "restoration"

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x, w=None, adain=None):
        return torch.cat([colour(RED), colour(BLUE)])[:x.shape[0]] * 2 - 1


def test_restore_images_pastes_in_score_order():
    frame, lm, scores = two_overlapping_faces()
    res = restore_images(frame.permute(0, 2, 3, 1), ColourByPosition(), FoundFaces(lm, scores),
                         run=RunOptions(batch_size=2))
    x, y = overlap_pixel(lm)
    assert res.face_counts == [1 + 1]
    assert res.images[0, y, x, 0] > 0.99 and res.images[0, y, x, 2] < 0.01   # A (red, lower score) wins
