"""Downloader tests against a local HTTP server on 127.0.0.1 (never the internet).

Each handler path models one real-world failure: checksum mismatch, dropped connection,
Range resume, servers that ignore Range, 404, mirror fallback, and no network at all.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import random
import threading
from pathlib import Path

import pytest

from codeformer_core.weights.download import DownloadError, download, file_sha256, part_path
from helpers import closed_port, serve

DATA = random.Random(1234).randbytes(300_000)      # > one 256 KiB chunk
OTHER = random.Random(99).randbytes(len(DATA))     # "wrong file" of the same size
SHA = hashlib.sha256(DATA).hexdigest()
ETAG = '"v1-' + SHA[:16] + '"'


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes by first path segment; records (path, Range, If-Range) of every request."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, data, etag=ETAG, ranges=True):
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if ranges and rng and (if_range is None or if_range == etag):
            start = int(rng.split("=", 1)[1].split("-", 1)[0])
            if start >= len(data):
                return self._send(416, b"", [("Content-Range", f"bytes */{len(data)}"),
                                             ("Content-Length", "0")])
            body = data[start:]
            return self._send(206, body, [
                ("Content-Length", str(len(body))), ("ETag", etag),
                ("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")])
        headers = [("Content-Length", str(len(data))), ("ETag", etag)]
        if ranges:
            headers.append(("Accept-Ranges", "bytes"))
        self._send(200, data, headers)

    def _drop(self, data):
        """Announce the whole file, send half, close: what a flaky network looks like."""
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", ETAG)
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.log.append((self.path, self.headers.get("Range"), self.headers.get("If-Range")))
            srv.hits[self.path] = hits = srv.hits.get(self.path, 0) + 1
        kind = self.path.strip("/").split("/", 1)[0]
        if kind == "ok":
            self._serve(DATA)
        elif kind == "changed":          # same URL now serves another version of the file
            self._serve(OTHER, etag='"v2"')
        elif kind == "norange":
            self._serve(DATA, ranges=False)
        elif kind == "bad":
            self._serve(OTHER)
        elif kind == "drop":
            self._drop(DATA)
        elif kind == "dropfirst":        # flaky once, then fine (with Range support)
            self._drop(DATA) if hits == 1 else self._serve(DATA)
        elif kind == "nolength":         # HTTP/1.0 style: length known only at EOF
            self.send_response(200)
            self.end_headers()
            self.wfile.write(DATA)
            self.close_connection = True
        else:
            self._send(404, b"not found", [("Content-Length", "9")])


@pytest.fixture(scope="module")
def server():
    with serve(_Handler, lock=threading.Lock(), log=[], hits={}) as srv:
        yield srv


@pytest.fixture
def base(server, request):
    """Per-test URL prefix, so stateful handlers (hit counters) do not leak between tests."""
    server.log.clear()
    return f"{server.base}/%s/{request.node.name}/w.pth"




def _leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir())


def test_success_verifies_and_reports_progress(base, tmp_path):
    dest = tmp_path / "sub" / "w.pth"
    calls = []
    out = download(base % "ok", dest, sha256=SHA.upper(), expected_size=len(DATA),
                   progress=lambda d, t: calls.append((d, t)))
    assert out == dest and dest.read_bytes() == DATA
    assert _leftovers(dest.parent) == ["w.pth"]
    assert calls[0] == (0, len(DATA)) and calls[-1] == (len(DATA), len(DATA))
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))
    assert file_sha256(dest) == SHA


def test_unknown_length_and_no_hash(base, tmp_path):
    calls = []
    dest = download([base % "nolength"], tmp_path / "w.pth", progress=lambda d, t: calls.append(t))
    assert dest.read_bytes() == DATA and set(calls) == {None}


def test_checksum_mismatch_leaves_nothing(base, tmp_path):
    dest = tmp_path / "w.pth"
    with pytest.raises(DownloadError) as ei:
        download(base % "bad", dest, sha256=SHA)
    msg = str(ei.value)
    assert "sha256 mismatch" in msg and (base % "bad") in msg and str(dest) in msg
    assert "\n" not in msg
    assert _leftovers(tmp_path) == [] and ei.value.partial is None


def test_size_mismatch_leaves_nothing(base, tmp_path):
    with pytest.raises(DownloadError, match="expected 300001"):
        download(base % "ok", tmp_path / "w.pth", expected_size=len(DATA) + 1)
    assert _leftovers(tmp_path) == []


def test_dropped_connection_keeps_no_final_file(base, tmp_path, server):
    dest = tmp_path / "w.pth"
    with pytest.raises(DownloadError) as ei:
        download(base % "drop", dest, sha256=SHA, retries=1)
    msg = str(ei.value)
    assert "dropped" in msg and (base % "drop") in msg and str(dest) in msg
    assert not dest.exists()
    # documented: a partial from a dropped connection is kept for a later resume
    assert ei.value.partial == part_path(dest) and part_path(dest).stat().st_size == len(DATA) // 2
    assert sorted(_leftovers(tmp_path)) == ["w.pth.part", "w.pth.part.json"]
    # the retry asked to resume, the server ignored Range, the client restarted cleanly
    assert [r[1] for r in server.log] == [None, f"bytes={len(DATA) // 2}-"]


def test_resume_with_range_after_drop(base, tmp_path, server):
    dest = tmp_path / "w.pth"
    url = base % "dropfirst"
    with pytest.raises(DownloadError):
        download(url, dest, sha256=SHA, retries=0)
    half = len(DATA) // 2
    assert part_path(dest).stat().st_size == half and not dest.exists()

    calls = []
    download(url, dest, sha256=SHA, progress=lambda d, t: calls.append(d))
    assert dest.read_bytes() == DATA and _leftovers(tmp_path) == ["w.pth"]
    assert server.log[-1] == (url.split(server.base)[1], f"bytes={half}-", ETAG)
    assert calls[0] == half  # progress starts where the partial file ended


def test_resume_within_one_call(base, tmp_path, server):
    dest = download(base % "dropfirst", tmp_path / "w.pth", sha256=SHA)
    assert dest.read_bytes() == DATA and _leftovers(tmp_path) == ["w.pth"]
    assert [r[1] for r in server.log] == [None, f"bytes={len(DATA) // 2}-"]


def _fake_partial(dest: Path, url: str, data: bytes, etag=ETAG):
    part_path(dest).write_bytes(data)
    dest.with_name(dest.name + ".part.json").write_text(
        json.dumps({"url": url, "etag": etag, "last_modified": None, "total": len(DATA)}))


def test_server_without_range_restarts_cleanly(base, tmp_path, server):
    dest = tmp_path / "w.pth"
    url = base % "norange"
    _fake_partial(dest, url, DATA[:1000])
    download(url, dest, sha256=SHA)
    assert dest.read_bytes() == DATA and _leftovers(tmp_path) == ["w.pth"]
    assert server.log[0][1] == "bytes=1000-"


def test_changed_file_restarts_instead_of_mixing(base, tmp_path, server):
    dest = tmp_path / "w.pth"
    url = base % "changed"
    _fake_partial(dest, url, DATA[:1000], etag='"v1"')   # partial of the old version
    download(url, dest)
    assert dest.read_bytes() == OTHER  # If-Range did not match: whole new file, no mix


def test_foreign_partial_is_not_resumed(base, tmp_path, server):
    dest = tmp_path / "w.pth"
    part_path(dest).write_bytes(b"junk" * 100)           # no .part.json: origin unknown
    download(base % "ok", dest, sha256=SHA)
    assert dest.read_bytes() == DATA and server.log[0][1] is None


def test_404_names_url_and_destination(base, tmp_path):
    dest = tmp_path / "w.pth"
    with pytest.raises(DownloadError) as ei:
        download(base % "missing", dest)
    msg = str(ei.value)
    assert "HTTP 404" in msg and (base % "missing") in msg and str(dest) in msg
    assert "manually" in msg and not ei.value.offline
    assert _leftovers(tmp_path) == []


def test_mirror_fallback(base, tmp_path, server):
    dest = tmp_path / "w.pth"
    out = download([base % "missing", base % "ok"], dest, sha256=SHA)
    assert out.read_bytes() == DATA
    assert [p.split("/")[1] for p, _, _ in server.log] == ["missing", "ok"]


def test_mirror_fallback_after_checksum_mismatch(base, tmp_path):
    dest = download([base % "bad", base % "ok"], tmp_path / "w.pth", sha256=SHA)
    assert dest.read_bytes() == DATA and _leftovers(tmp_path) == ["w.pth"]


def test_offline_message(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/codeformer.pth"
    dest = tmp_path / "models" / "codeformer.pth"
    with pytest.raises(DownloadError) as ei:
        download(url, dest, timeout=5)
    msg = str(ei.value)
    assert url in msg and str(dest) in msg and "manually" in msg and "network" in msg
    assert "\n" not in msg and ei.value.offline and ei.value.urls == (url,)
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_existing_destination_is_replaced_only_on_success(base, tmp_path):
    dest = tmp_path / "w.pth"
    dest.write_bytes(b"old")
    with pytest.raises(DownloadError):
        download(base % "bad", dest, sha256=SHA)
    assert dest.read_bytes() == b"old"
    download(base % "ok", dest, sha256=SHA)
    assert dest.read_bytes() == DATA


def test_requires_a_url(tmp_path):
    with pytest.raises(ValueError):
        download([], tmp_path / "w.pth")


def test_progress_callback_can_cancel_and_resume_later(base, tmp_path, server):
    """A raising callback (e.g. ComfyUI's interrupt) aborts; the partial file is resumable."""
    dest = tmp_path / "w.pth"

    class Cancel(Exception):
        pass

    def cancel_after_first_chunk(done, total):
        if done > 0:
            raise Cancel

    with pytest.raises(Cancel):
        download(base % "ok", dest, sha256=SHA, progress=cancel_after_first_chunk)
    size = part_path(dest).stat().st_size
    assert 0 < size < len(DATA) and not dest.exists()
    download(base % "ok", dest, sha256=SHA)
    assert dest.read_bytes() == DATA and server.log[-1][1] == f"bytes={size}-"


def test_local_write_error_is_not_blamed_on_the_network(base, tmp_path, monkeypatch, server):
    import codeformer_core.weights.download as dl

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    real_open = open
    monkeypatch.setattr(dl, "open", lambda p, mode="r", *a, **k: (
        FullDisk(real_open(p, mode, *a, **k)) if mode == "ab" else real_open(p, mode, *a, **k)),
        raising=False)
    dest = tmp_path / "w.pth"
    with pytest.raises(DownloadError, match="No space left") as ei:
        download([base % "ok", base % "ok2"], dest)
    assert str(dest) in str(ei.value) and _leftovers(tmp_path) == []
    assert len(server.log) == 1  # other mirrors would not help a full disk


def test_corrupt_partial_is_retried_from_scratch(base, tmp_path, server):
    dest = tmp_path / "w.pth"
    url = base % "ok"
    _fake_partial(dest, url, b"\0" * 1000)          # resumable, but not the file's bytes
    download(url, dest, sha256=SHA)
    assert dest.read_bytes() == DATA and _leftovers(tmp_path) == ["w.pth"]
    assert [r[1] for r in server.log] == ["bytes=1000-", None]
