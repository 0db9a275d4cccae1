"""Registry and models-folder tests; downloads only from a local server on 127.0.0.1."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
from pathlib import Path

import pytest

from codeformer_core.weights import registry as weights
from codeformer_core.weights.download import DownloadError
from helpers import closed_port_url, serve
from codeformer_core.weights.registry import (
    CorruptWeightError, MissingWeightError, UnknownWeightError, WeightEntry, default_models_dir,
    ensure_weight, find_entry, get_entry, known_weights, path_for, verify_file)

CODEFORMER_SHA256 = "1009e537e0c2a07d4cabce6355f53cb66767cd4b4297ec7a4a64ca4b8a5684b7"
RELEASE = "https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/"
EXPECTED = {  # name: (file, kind, variant, ComfyUI folder)
    "codeformer": ("codeformer.pth", "codeformer", "restoration", "facerestore_models"),
    "codeformer_colorization": ("codeformer_colorization.pth", "codeformer", "colorization",
                                "facerestore_models"),
    "codeformer_inpainting": ("codeformer_inpainting.pth", "codeformer", "inpainting",
                              "facerestore_models"),
    "retinaface_resnet50": ("detection_Resnet50_Final.pth", "retinaface", "resnet50",
                            "facedetection"),
    "retinaface_mobilenet0.25": ("detection_mobilenet0.25_Final.pth", "retinaface",
                                 "mobilenet0.25", "facedetection"),
    "parsenet": ("parsing_parsenet.pth", "parsenet", "parsenet", "facedetection"),
    "realesrgan_x2plus": ("RealESRGAN_x2plus.pth", "upscaler", "x2plus", "upscale_models"),
}
FACEXLIB_MIRRORS = {
    "retinaface_resnet50":
        "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
    "retinaface_mobilenet0.25":
        "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth",
    "parsenet": "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth",
}
PAYLOAD = b"synthetic weight bytes " * 1000
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


# ---------------------------------------------------------------- registry content

def test_every_task_names_a_registry_file_of_its_variant():
    """tasks.TASKS and weights/registry.json must agree on which file does which task."""
    from codeformer_core.tasks import TASKS
    assert set(TASKS) == {"restore", "colorize", "inpaint"}
    for task in TASKS.values():
        e = get_entry(task.weight)
        assert (e.kind, e.variant) == ("codeformer", task.variant), task.name


def test_registry_raw_entries_have_every_field():
    raw = json.loads(weights.registry_path().read_text())["weights"]
    required = {"file", "urls", "sha256", "size", "kind", "variant", "folder"}
    for name, spec in raw.items():
        assert required <= set(spec), name


def test_registry_entries_match_official_files():
    entries = known_weights()
    assert set(entries) == set(EXPECTED)
    for name, (file, kind, variant, folder) in EXPECTED.items():
        e = entries[name]
        assert (e.name, e.file, e.kind, e.variant, e.folder) == (name, file, kind, variant, folder)
        assert e.url == RELEASE + file            # official release asset is the primary
        assert len(set(e.urls)) == len(e.urls) and all(u.startswith("https://") for u in e.urls)
        assert all(u.rsplit("/", 1)[1] == file for u in e.urls)
        assert e.size is None                     # no published sizes: never guessed
        assert e.kind in weights.KINDS and e.folder == weights.KIND_FOLDERS[e.kind]


def test_only_codeformer_has_a_known_hash():
    entries = known_weights()
    assert entries["codeformer"].sha256 == CODEFORMER_SHA256
    assert {n for n, e in entries.items() if e.sha256 is not None} == {"codeformer"}


def test_face_net_mirrors_follow_primary():
    entries = known_weights()
    for name, mirror in FACEXLIB_MIRRORS.items():
        assert entries[name].urls[1:] == (mirror,)


def test_comfyui_folder_conventions():
    assert weights.KIND_FOLDERS == {"codeformer": "facerestore_models",
                                    "retinaface": "facedetection",
                                    "parsenet": "facedetection",
                                    "upscaler": "upscale_models"}


def test_find_entry_by_name_file_alias_and_path():
    cf = known_weights()["codeformer"]
    assert find_entry("codeformer") is cf or find_entry("codeformer") == cf
    assert find_entry("CodeFormer.pth") == cf
    assert find_entry("/some/where/facerestore_models/codeformer.pth") == cf
    assert find_entry(r"C:\models\codeformer.pth") == cf
    assert find_entry(cf) is cf
    assert find_entry("retinaface_mobile0.25").name == "retinaface_mobilenet0.25"
    assert find_entry("nope") is None and find_entry("") is None
    with pytest.raises(UnknownWeightError, match="known: codeformer"):
        get_entry("nope")


def test_load_registry_rejects_bad_data(tmp_path):
    good = json.loads(weights.registry_path().read_text())
    bad = json.loads(json.dumps(good))
    bad["weights"]["codeformer"]["folder"] = "checkpoints"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="folder"):
        weights.load_registry(path)
    bad = json.loads(json.dumps(good))
    del bad["weights"]["parsenet"]["sha256"]
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="sha256"):
        weights.load_registry(path)


# ---------------------------------------------------------------- models folder

@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No env var, no ComfyUI layout, cache under tmp: each test adds one layer back."""
    monkeypatch.delenv(weights.ENV_MODELS_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(weights, "_pack_dirs", lambda: [tmp_path / "standalone" / "pack"])
    return tmp_path


def _comfy_layout(root: Path) -> Path:
    pack = root / "ComfyUI" / "custom_nodes" / "comfyui-codeformer"
    pack.mkdir(parents=True)
    (root / "ComfyUI" / "models").mkdir()
    return pack


def test_models_dir_precedence(clean_env, monkeypatch):
    tmp = clean_env
    assert default_models_dir() == tmp / "xdg" / "codeformer"            # 4. user cache
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp / "home"))
    assert default_models_dir() == tmp / "home" / ".cache" / "codeformer"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")          # XDG: absolute only
    assert default_models_dir() == tmp / "home" / ".cache" / "codeformer"

    pack = _comfy_layout(tmp)                                           # 3. ComfyUI layout
    monkeypatch.setattr(weights, "_pack_dirs", lambda: [pack])
    assert default_models_dir() == tmp / "ComfyUI" / "models"

    monkeypatch.setenv(weights.ENV_MODELS_DIR, str(tmp / "env"))       # 2. env var
    assert default_models_dir() == tmp / "env"

    assert default_models_dir(tmp / "explicit") == tmp / "explicit"    # 1. explicit
    assert default_models_dir(str(tmp / "explicit")) == tmp / "explicit"


def test_comfyui_layout_detection(tmp_path):
    assert weights.comfyui_models_dir(tmp_path / "x" / "pack") is None
    no_models = tmp_path / "A" / "custom_nodes" / "pack"
    no_models.mkdir(parents=True)
    assert weights.comfyui_models_dir(no_models) is None               # models/ must exist
    pack = _comfy_layout(tmp_path)
    assert weights.comfyui_models_dir(pack) == tmp_path / "ComfyUI" / "models"


def test_path_for_uses_comfyui_subfolders(tmp_path):
    assert path_for("codeformer", tmp_path) == tmp_path / "facerestore_models" / "codeformer.pth"
    assert path_for("parsenet", tmp_path) == tmp_path / "facedetection" / "parsing_parsenet.pth"
    assert (path_for(known_weights()["realesrgan_x2plus"], tmp_path)
            == tmp_path / "upscale_models" / "RealESRGAN_x2plus.pth")


# ---------------------------------------------------------------- verify / ensure

class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.paths.append(self.path)
        if self.path.endswith("/missing.pth"):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)


@pytest.fixture(scope="module")
def server():
    with serve(_Handler, paths=[]) as srv:
        yield srv


@pytest.fixture
def local_registry(monkeypatch):
    """Point every entry at unreachable URLs; tests swap in the local server where needed."""
    entries = {n: dataclasses.replace(e, urls=(closed_port_url(e.file),))
               for n, e in known_weights().items()}
    monkeypatch.setattr(weights, "known_weights", lambda: dict(entries))
    return entries


def test_ensure_weight_returns_existing_file_without_network(local_registry, tmp_path, monkeypatch):
    def no_download(*a, **k):
        raise AssertionError("network used for an existing file")
    monkeypatch.setattr(weights.downloader, "download", no_download)
    dest = tmp_path / "facedetection" / "parsing_parsenet.pth"
    dest.parent.mkdir()
    dest.write_bytes(b"x")
    assert ensure_weight("parsenet", tmp_path) == dest
    assert ensure_weight("parsing_parsenet.pth", tmp_path, download=False) == dest


def test_ensure_weight_downloads_missing_file(local_registry, server, tmp_path, monkeypatch):
    entry = dataclasses.replace(local_registry["codeformer"], sha256=PAYLOAD_SHA,
                                urls=(f"{server.base}/missing.pth", f"{server.base}/codeformer.pth"))
    local_registry["codeformer"] = entry
    calls = []
    path = ensure_weight("codeformer", tmp_path, progress=lambda d, t: calls.append((d, t)))
    assert path == tmp_path / "facerestore_models" / "codeformer.pth"
    assert path.read_bytes() == PAYLOAD and calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert server.paths[-2:] == ["/missing.pth", "/codeformer.pth"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["codeformer.pth"]
    assert verify_file(path).verified                   # looked up by file name


def test_ensure_weight_uses_env_models_dir(local_registry, server, tmp_path, monkeypatch):
    local_registry["parsenet"] = dataclasses.replace(
        local_registry["parsenet"], urls=(f"{server.base}/parsing_parsenet.pth",))
    monkeypatch.setenv(weights.ENV_MODELS_DIR, str(tmp_path / "m"))
    assert ensure_weight("parsenet") == tmp_path / "m" / "facedetection" / "parsing_parsenet.pth"


def test_ensure_weight_offline_and_no_download(local_registry, tmp_path):
    dest = tmp_path / "facerestore_models" / "codeformer_inpainting.pth"
    url = local_registry["codeformer_inpainting"].url
    with pytest.raises(MissingWeightError) as ei:
        ensure_weight("codeformer_inpainting", tmp_path, download=False)
    assert url in str(ei.value) and str(dest) in str(ei.value)
    with pytest.raises(DownloadError) as ei:
        ensure_weight("codeformer_inpainting", tmp_path, timeout=5)
    assert url in str(ei.value) and str(dest) in str(ei.value) and not dest.exists()


def test_ensure_weight_verify_flags_corrupt_file(local_registry, tmp_path):
    dest = tmp_path / "facerestore_models" / "codeformer.pth"
    dest.parent.mkdir()
    dest.write_bytes(b"truncated")
    assert ensure_weight("codeformer", tmp_path) == dest       # trusted without verify
    with pytest.raises(CorruptWeightError, match="sha256"):
        ensure_weight("codeformer", tmp_path, download=False, verify=True)


def test_ensure_weight_size_mismatch_triggers_redownload(local_registry, server, tmp_path):
    local_registry["parsenet"] = dataclasses.replace(
        local_registry["parsenet"], size=len(PAYLOAD), urls=(f"{server.base}/p.pth",))
    dest = tmp_path / "facedetection" / "parsing_parsenet.pth"
    dest.parent.mkdir()
    dest.write_bytes(b"short")
    assert ensure_weight("parsenet", tmp_path).read_bytes() == PAYLOAD


def test_verify_file(tmp_path):
    missing = verify_file(tmp_path / "codeformer.pth")
    assert not missing and not missing.exists
    f = tmp_path / "codeformer.pth"
    f.write_bytes(PAYLOAD)
    bad = verify_file(f)
    assert not bad and bad.sha256 == PAYLOAD_SHA and bad.expected_sha256 == CODEFORMER_SHA256
    unknown = verify_file(f, "parsenet")                 # no published hash: ok, unverified
    assert unknown and not unknown.verified and unknown.sha256 is None
    other = tmp_path / "random.bin"
    other.write_bytes(b"x")
    assert verify_file(other).ok and "no registry entry" in verify_file(other).message
    good = dataclasses.replace(known_weights()["codeformer"], sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    assert verify_file(f, good).verified
    assert not verify_file(f, dataclasses.replace(good, size=1))


def test_weight_entry_is_immutable():
    e = known_weights()["codeformer"]
    assert isinstance(e, WeightEntry)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.sha256 = None
