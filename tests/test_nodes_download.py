"""Loader nodes download missing official files into ComfyUI's folder (local server only)."""
from __future__ import annotations

import hashlib
import http.server
from dataclasses import replace
from pathlib import Path

import pytest

from local_http import closed_port_url, serve

from nodes import NODE_CLASS_MAPPINGS as N

FILE = "detection_mobilenet0.25_Final.pth"


@pytest.fixture(scope="module")
def payload(tmp_path_factory):
    """A real (synthetic) MobileNet RetinaFace file, about 1.7 MB."""
    import json
    from node_fixtures import FACE, _save
    from codeformer_core.dev.synthetic import synth_state_dict
    path = tmp_path_factory.mktemp("payload") / FILE
    _save(synth_state_dict(json.loads((FACE / "retinaface_manifest_mobile0.25.json").read_text()), face=True),
          path, nest=False)
    return path.read_bytes()


@pytest.fixture(scope="module")
def server(payload):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path.startswith("/drop/"):
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload[: len(payload) // 3])
                self.wfile.flush()
                self.close_connection = True
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    with serve(Handler) as srv:
        yield srv.base


@pytest.fixture
def models(tmp_path, monkeypatch):
    """An empty ComfyUI models folder with the stand-ins installed."""
    import comfy_stubs
    from nodes.comfy_bridge import register_folders
    ns = comfy_stubs.install(monkeypatch, tmp_path / "models")
    register_folders()
    ns.root = tmp_path / "models"
    return ns


def point_registry(monkeypatch, url, sha256=None):
    from codeformer_core.weights import registry as weights
    entries = weights.known_weights()
    entries["retinaface_mobilenet0.25"] = replace(entries["retinaface_mobilenet0.25"], urls=(url,), sha256=sha256)
    monkeypatch.setattr(weights, "known_weights", lambda: dict(entries))


def load(parser="none"):
    return N["CodeFormerFaceDetectorLoader"]().load(FILE, parser)[0]


def leftovers(root: Path):
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def test_download_on_first_use(models, server, payload, monkeypatch):
    point_registry(monkeypatch, f"{server}/ok/{FILE}", hashlib.sha256(payload).hexdigest())
    bundle = load()
    assert bundle.detector.backbone.startswith("mobile") and bundle.parser is None
    dest = models.root / "facedetection" / FILE
    assert dest.read_bytes() == payload and leftovers(models.root) == [FILE]
    bar = models.calls["progress"][-1]
    assert bar.updates and bar.updates[-1][0] == len(payload)      # ComfyUI progress bar driven
    assert FILE in N["CodeFormerFaceDetectorLoader"].INPUT_TYPES()["required"]["detector_model"][0]


def test_checksum_mismatch_leaves_nothing(models, server, monkeypatch):
    from codeformer_core.weights.download import DownloadError
    point_registry(monkeypatch, f"{server}/ok/{FILE}", "0" * 64)
    with pytest.raises(DownloadError, match="sha256|checksum"):
        load()
    assert leftovers(models.root) == []


def test_dropped_connection_leaves_no_final_file(models, server, monkeypatch):
    from codeformer_core.weights.download import DownloadError
    point_registry(monkeypatch, f"{server}/drop/{FILE}")
    with pytest.raises(DownloadError):
        load()
    assert not (models.root / "facedetection" / FILE).exists()
    assert all(name.endswith((".part", ".part.json")) for name in leftovers(models.root))  # resumable


def test_offline_message_names_url_and_destination(models, monkeypatch):
    from codeformer_core.weights.download import DownloadError
    url = closed_port_url(FILE)
    point_registry(monkeypatch, url)
    with pytest.raises(DownloadError) as err:
        load()
    msg = str(err.value)
    assert url in msg and str(models.root / "facedetection" / FILE) in msg
    assert leftovers(models.root) == []


def test_unknown_missing_file_is_a_clear_error(models):
    with pytest.raises(FileNotFoundError, match="models/facedetection"):
        N["CodeFormerFaceDetectorLoader"]().load("my_detector.pth", "none")
