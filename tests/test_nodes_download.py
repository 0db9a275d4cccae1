"""Loader nodes download missing official files into ComfyUI's model folder (local server only), inside
the real ComfyUI: its folder_paths decides where, its progress bar shows the download."""
from __future__ import annotations

import hashlib
import http.server
from dataclasses import replace
from pathlib import Path

import pytest

from helpers import closed_port_url, serve
from helpers import run_node, write_face_net

FILE = "detection_mobilenet0.25_Final.pth"


@pytest.fixture(scope="module")
def payload(tmp_path_factory):
    """A real (synthetic) MobileNet RetinaFace file, about 1.7 MB."""
    return write_face_net(FILE, "retinaface_manifest_mobile0.25.json", tmp_path_factory.mktemp("payload")).read_bytes()


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
def models(tmp_path, monkeypatch, comfyui):
    """ComfyUI's facedetection folder pointed at an empty models/facedetection for one test."""
    fp = comfyui.folder_paths
    folder = str(tmp_path / "models" / "facedetection")
    monkeypatch.setitem(fp.folder_names_and_paths, "facedetection", ([folder], set()))
    monkeypatch.setattr(fp, "filename_list_cache", {})
    return tmp_path / "models"


def point_registry(monkeypatch, comfyui, url, sha256=None):
    """The pack's registry (its own copy of the core, as loaded by ComfyUI) with FILE at ``url``."""
    weights = comfyui.pack.codeformer_core.weights.registry
    entries = weights.known_weights()
    entries["retinaface_mobilenet0.25"] = replace(entries["retinaface_mobilenet0.25"], urls=(url,), sha256=sha256)
    monkeypatch.setattr(weights, "known_weights", lambda: dict(entries))


def load(comfyui, parser="none"):
    return run_node(comfyui.N["CodeFormerFaceDetectorLoader"], detector_model=FILE, parsing_model=parser)[0]


def leftovers(root: Path):
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def test_download_on_first_use(models, server, payload, monkeypatch, comfyui, progress):
    point_registry(monkeypatch, comfyui, f"{server}/ok/{FILE}", hashlib.sha256(payload).hexdigest())
    bundle = load(comfyui)
    assert bundle.detector.backbone.startswith("mobile") and bundle.parser is None
    dest = models / "facedetection" / FILE
    assert dest.read_bytes() == payload and leftovers(models) == [FILE]
    assert progress and progress[-1][0] == len(payload)      # ComfyUI's progress bar driven
    assert comfyui.folder_paths.get_full_path("facedetection", FILE) == str(dest)


def test_checksum_mismatch_leaves_nothing(models, server, monkeypatch, comfyui):
    point_registry(monkeypatch, comfyui, f"{server}/ok/{FILE}", "0" * 64)
    with pytest.raises(comfyui.pack.codeformer_core.errors.DownloadError, match="sha256|checksum"):
        load(comfyui)
    assert leftovers(models) == []


def test_dropped_connection_leaves_no_final_file(models, server, monkeypatch, comfyui):
    point_registry(monkeypatch, comfyui, f"{server}/drop/{FILE}")
    with pytest.raises(comfyui.pack.codeformer_core.errors.DownloadError):
        load(comfyui)
    assert not (models / "facedetection" / FILE).exists()
    assert all(name.endswith((".part", ".part.json")) for name in leftovers(models))  # resumable


def test_offline_message_names_url_and_destination(models, monkeypatch, comfyui):
    url = closed_port_url(FILE)
    point_registry(monkeypatch, comfyui, url)
    with pytest.raises(comfyui.pack.codeformer_core.errors.DownloadError) as err:
        load(comfyui)
    msg = str(err.value)
    assert url in msg and str(models / "facedetection" / FILE) in msg
    assert leftovers(models) == []


def test_unknown_missing_file_is_a_clear_error(models, comfyui):
    with pytest.raises(FileNotFoundError, match="models/facedetection"):
        run_node(comfyui.N["CodeFormerFaceDetectorLoader"], detector_model="my_detector.pth", parsing_model="none")
