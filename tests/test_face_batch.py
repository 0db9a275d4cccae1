"""Per-frame rows (FaceBatch and Detections, one container): slicing by frames and joining (how
the nodes and the video path cut a clip into chunks and put it back)."""
from __future__ import annotations

import pytest
import torch

from codeformer_core.faces.batch import FaceBatch


def batch_of(frame_index, num_frames, gray=True):
    """A batch with one distinct face per entry of ``frame_index`` (crops filled with the face number)."""
    n = len(frame_index)
    ids = torch.arange(n, dtype=torch.float32)
    return FaceBatch(crops=ids.view(n, 1, 1, 1).expand(n, 3, 4, 4).clone(),
                     affines=ids.view(n, 1, 1).expand(n, 2, 3).clone(),
                     inverse_affines=-ids.view(n, 1, 1).expand(n, 2, 3).clone(),
                     frame_index=torch.tensor(frame_index, dtype=torch.int64), boxes=ids[:, None].expand(n, 4).clone(),
                     scores=ids / 10, landmarks=ids.view(n, 1, 1).expand(n, 5, 2).clone(), frame_size=(8, 6),
                     num_frames=num_frames, gray=(ids % 2 == 0) if gray else None, meta={"source": "test"})


def test_take_frames_keeps_the_faces_of_those_frames():
    faces = batch_of([0, 2, 2, 4], num_frames=5)
    part = faces.take_frames(range(2, 4))
    assert part.num_frames == 2 and part.frame_index.tolist() == [0, 0]
    assert part.crops[:, 0, 0, 0].tolist() == [1.0, 2.0] and part.gray.tolist() == [False, True]
    assert part.frame_size == (8, 6) and part.meta == {"source": "test"}
    empty = faces.take_frames(range(3, 4))
    assert len(empty) == 0 and empty.num_frames == 1 and empty.crops.shape == (0, 3, 4, 4)
    assert faces.take_frames(range(0, 5)) is faces
    with pytest.raises(ValueError, match="outside the 5 frames"):
        faces.take_frames(range(3, 6))


@pytest.mark.parametrize("cuts", [[0, 5], [0, 1, 2, 3, 4, 5], [0, 2, 5], [0, 3, 4, 5]])
def test_join_undoes_take_frames(cuts):
    faces = batch_of([0, 2, 2, 4], num_frames=5)
    parts = [faces.take_frames(range(a, b)) for a, b in zip(cuts, cuts[1:])]
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


def test_detections_chunk_and_join_like_face_batches():
    """Detections share the container: chunks by frames, joins, optional per-row fields."""
    from codeformer_core.faces.detect import Detections
    n = 4
    ids = torch.arange(n, dtype=torch.float32)
    dets = Detections(boxes=ids[:, None].expand(n, 4).clone(), scores=ids / 10,
                      landmarks=ids.view(n, 1, 1).expand(n, 5, 2).clone(),
                      frame_index=torch.tensor([0, 2, 2, 4]), num_frames=5, frame_size=(8, 6),
                      track=torch.tensor([7, 7, 8, 7]), interpolated=None)
    part = dets.take_frames(range(2, 5))
    assert part.frame_index.tolist() == [0, 0, 2] and part.track.tolist() == [7, 8, 7]
    assert part.scores.tolist() == pytest.approx([0.1, 0.2, 0.3]) and part.interpolated is None
    back = Detections.join([dets.take_frames(range(0, 2)), part])
    assert back.frame_index.tolist() == [0, 2, 2, 4] and torch.equal(back.track, dets.track)
    untracked = Detections.join([dets.take_frames(range(0, 2)), Detections.empty(3, (8, 6))])
    assert untracked.track is None and untracked.num_frames == 5 and len(untracked) == 1
    assert Detections.join([]).num_frames == 0
    assert dets.counts_per_frame().tolist() == [1, 0, 2, 0, 1]
