"""What a user reads and hears in the example graphs (static checks of workflows/*.json; the graphs
run in tests/test_real_server.py): each graph's note says what it does and where its weight files go,
and the video graph keeps the sound."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
# Where ComfyUI looks for the file each loader widget names.
FOLDERS = {("CodeFormerModelLoader", 0): "models/facerestore_models",
           ("CodeFormerFaceDetectorLoader", 0): "models/facedetection",
           ("CodeFormerFaceDetectorLoader", 1): "models/facedetection",
           ("UpscaleModelLoader", 0): "models/upscale_models",
           ("CheckpointLoaderSimple", 0): "models/checkpoints"}


def _load(path):
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_note_says_what_and_which_weights_where(path):
    wf = _load(path)
    notes = [n for n in wf["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1, f"{path.name}: {len(notes)} notes"
    lines = notes[0]["widgets_values"][0].split("\n")
    assert len(lines) == 2 and all(line.strip() for line in lines), f"{path.name}: the note is not two lines"
    what, weights = lines
    needed = [(n["widgets_values"][i], folder) for n in wf["nodes"] for (t, i), folder in FOLDERS.items()
              if n["type"] == t]
    assert needed, f"{path.name} loads no weights"
    for file, folder in needed:
        assert folder in weights, f"{path.name}: the note does not say that {file} goes in {folder}"
        if folder != "models/checkpoints":      # any SD checkpoint will do there
            assert file in weights, f"{path.name}: the note does not name {file}"


def test_video_graph_passes_the_sound_through():
    wf = _load(ROOT / "workflows" / "restore_video_frames.json")
    nodes = {n["id"]: n for n in wf["nodes"]}
    audio = [(nodes[src], nodes[src]["outputs"][ss]["name"], nodes[dst], nodes[dst]["inputs"][ds]["name"])
             for _, src, ss, dst, ds, t in wf["links"] if t == "AUDIO"]
    assert [(a["type"], out, b["type"], inp) for a, out, b, inp in audio] == \
        [("GetVideoComponents", "audio", "CreateVideo", "audio")]
