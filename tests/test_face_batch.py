"""FaceBatch per-frame slicing and joining (how the nodes cut a video into chunks and put it back)."""
from __future__ import annotations

import pytest
import torch

from codeformer_core.faces.batch import FaceBatch


def batch_of(frame_index, num_frames, gray=True):
    """A batch with one distinct face per entry of ``frame_index`` (crops filled with the face number)."""
    n = len(frame_index)
    ids = torch.arange(n, dtype=torch.float32)
    return FaceBatch(crops=ids.view(n, 1, 1, 1).expand(n, 3, 4, 4).clone(), affines=ids.view(n, 1, 1).expand(n, 2, 3).clone(),
                     inverse_affines=-ids.view(n, 1, 1).expand(n, 2, 3).clone(),
                     frame_index=torch.tensor(frame_index, dtype=torch.int64), boxes=ids[:, None].expand(n, 4).clone(),
                     scores=ids / 10, landmarks=ids.view(n, 1, 1).expand(n, 5, 2).clone(), frame_size=(8, 6),
                     num_frames=num_frames, gray=(ids % 2 == 0) if gray else None, meta={"source": "test"})


def test_frame_range_keeps_the_faces_of_those_frames():
    faces = batch_of([0, 2, 2, 4], num_frames=5)
    part = faces.frame_range(2, 4)
    assert part.num_frames == 2 and part.frame_index.tolist() == [0, 0]
    assert part.crops[:, 0, 0, 0].tolist() == [1.0, 2.0] and part.gray.tolist() == [False, True]
    assert part.frame_size == (8, 6) and part.meta == {"source": "test"}
    empty = faces.frame_range(3, 4)
    assert len(empty) == 0 and empty.num_frames == 1 and empty.crops.shape == (0, 3, 4, 4)
    assert faces.frame_range(0, 5) is faces
    with pytest.raises(ValueError, match="outside the 5 frames"):
        faces.frame_range(3, 6)


@pytest.mark.parametrize("cuts", [[0, 5], [0, 1, 2, 3, 4, 5], [0, 2, 5], [0, 3, 4, 5]])
def test_join_undoes_frame_range(cuts):
    faces = batch_of([0, 2, 2, 4], num_frames=5)
    parts = [faces.frame_range(a, b) for a, b in zip(cuts, cuts[1:])]
    joined = FaceBatch.join(parts)
    assert joined.num_frames == 5 and joined.frame_size == (8, 6) and joined.meta == faces.meta
    for name in ("crops", "affines", "inverse_affines", "frame_index", "boxes", "scores", "landmarks", "gray"):
        assert torch.equal(getattr(joined, name), getattr(faces, name)), name


def test_join_meta_and_missing_gray():
    a, b = batch_of([0], num_frames=2), batch_of([1, 1], num_frames=3, gray=False)
    joined = FaceBatch.join([a, b], meta={"parser": None})
    assert joined.frame_index.tolist() == [0, 3, 3] and joined.num_frames == 5
    assert joined.gray is None and joined.meta == {"parser": None}
    with pytest.raises(ValueError, match="at least one"):
        FaceBatch.join([])
    with pytest.raises(ValueError, match="different frame sizes"):
        FaceBatch.join([a, FaceBatch.empty(1, (4, 4))])
