"""Resumable, verified, atomic HTTP downloads with the standard library only.

Weight files are hundreds of MB and come from GitHub release assets, so a download must
survive a dropped connection (resume with a Range request), must never leave a truncated
or wrong file under the final name (stream to ``<name>.part``, verify, then ``os.replace``),
and must fail with a message that tells the user how to fetch the file by hand.

Files next to ``dest`` while a download is in progress:

* ``<name>.part``: the bytes received so far.
* ``<name>.part.json``: where they came from (URL, ETag/Last-Modified, total size), so a
  later call only resumes from the same URL and the same version of the file.

Both are removed on success, on a checksum/size mismatch and on any failure that is not a
dropped connection. After a dropped connection (or an exception raised by the progress
callback, e.g. a user cancel) they are kept on purpose: the next call resumes from there.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import sys
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union
from ..errors import DownloadError

__all__ = ["DownloadError", "download", "file_sha256", "part_path", "DEFAULT_TIMEOUT"]

ProgressFn = Callable[[int, Optional[int]], None]

DEFAULT_TIMEOUT = 30.0   # seconds per connect / per read, not for the whole file
CHUNK = 1 << 18          # 256 KiB: few progress calls, small memory
USER_AGENT = "codeformer-core-downloader/1 (+https://github.com/sczhou/CodeFormer)"
PART_SUFFIX = ".part"
META_SUFFIX = ".part.json"


# Internal failure kinds of one URL attempt; download() turns them into a DownloadError.
class _Failed(Exception):
    offline = False


class _NetworkFailed(_Failed):
    offline = True


class _Mismatch(_Failed):
    """Complete file with the wrong size/hash; ``resumed`` when old .part bytes were reused."""

    def __init__(self, message: str, resumed: bool) -> None:
        super().__init__(message)
        self.resumed = resumed


class _Dropped(_Failed):
    def __init__(self, message: str, progressed: bool) -> None:
        super().__init__(message)
        self.progressed = progressed


class _LocalError(Exception):
    """Writing on our side failed (disk full, permissions): other mirrors would not help."""


def part_path(dest: Union[str, os.PathLike]) -> Path:
    """Where the partial download of ``dest`` lives (same folder, so os.replace is atomic)."""
    dest = Path(dest)
    return dest.with_name(dest.name + PART_SUFFIX)


def _meta_path(dest: Path) -> Path:
    return dest.with_name(dest.name + META_SUFFIX)


def file_sha256(path: Union[str, os.PathLike], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large weights do not fill memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        pass  # best effort: a leftover temp file must not hide the real error


_locks_guard = threading.Lock()
_locks: dict = {}


@contextmanager
def _dest_lock(dest: Path) -> Iterator[None]:
    """Serialise downloads of one destination within this process (two nodes, one file)."""
    key = os.path.normcase(os.path.abspath(dest))
    with _locks_guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        yield


class _Progress:
    """Forwards to the user's callback, or draws a tqdm bar on an interactive stderr."""

    def __init__(self, callback: Optional[ProgressFn], desc: str) -> None:
        self.callback = callback
        self.desc = desc
        self.bar = None
        self.use_tqdm = callback is None and _stderr_isatty()

    def __call__(self, done: int, total: Optional[int]) -> None:
        if self.callback is not None:
            self.callback(done, total)
            return
        if not self.use_tqdm:
            return
        if self.bar is None or self.bar.total != total or done < self.bar.n:
            self.close()
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is optional: no bar, same download
                self.use_tqdm = False
                return
            self.bar = tqdm(total=total, initial=done, unit="B", unit_scale=True,
                            unit_divisor=1024, desc=self.desc, file=sys.stderr, leave=False)
        else:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _stderr_isatty() -> bool:
    try:
        return bool(sys.stderr) and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _http_reason(err: urllib.error.HTTPError) -> str:
    return _one_line(f"HTTP {err.code} {err.reason or ''}")


def _read_meta(meta: Path) -> Optional[dict]:
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_meta(meta: Path, url: str, resp, total: Optional[int]) -> None:
    etag = resp.headers.get("ETag")
    if etag and etag.startswith("W/"):
        etag = None  # weak validators are not allowed in If-Range
    data = {"url": url, "etag": etag, "last_modified": resp.headers.get("Last-Modified"),
            "total": total}
    meta.write_text(json.dumps(data), encoding="utf-8")


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def _open(url: str, timeout: float, headers: dict):
    """urlopen that maps every way of not getting an answer to _Failed/_NetworkFailed."""
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT,
                                               "Accept-Encoding": "identity", **headers})
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416:
            raise
        raise _Failed(_http_reason(e)) from None
    except urllib.error.URLError as e:
        raise _NetworkFailed(_one_line(f"network error: {e.reason}")) from None
    except (OSError, http.client.HTTPException) as e:
        raise _NetworkFailed(_one_line(f"network error: {type(e).__name__}: {e}")) from None
    except ValueError as e:
        raise _Failed(_one_line(f"invalid URL: {e}")) from None


def _fetch(url: str, dest: Path, sha256: Optional[str], expected_size: Optional[int],
           timeout: float, progress: _Progress) -> None:
    """One attempt at ``url``: resume or (re)start ``.part``, stream, verify. Raises _Failed."""
    part, meta = part_path(dest), _meta_path(dest)
    offset = 0
    info = _read_meta(meta) if part.exists() else None
    if info is not None and info.get("url") == url:
        offset = part.stat().st_size
        total = info.get("total")
        if total is not None and offset > total:
            offset = 0
        elif total is not None and offset == total and offset > 0:
            # Complete but not moved into place (killed just before os.replace): verify only.
            progress(offset, total)
            _check(part, meta, offset, sha256, expected_size, file_sha256(part), resumed=True)
            return
    resp = None
    if offset > 0:
        headers = {"Range": f"bytes={offset}-"}
        validator = info.get("etag") or info.get("last_modified")
        if validator:
            headers["If-Range"] = validator
        try:
            resp = _open(url, timeout, headers)
        except urllib.error.HTTPError:  # 416: our .part does not fit the file any more
            resp = None
        if resp is not None and resp.status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            known = info.get("total")
            if (m is None or int(m.group(1)) != offset
                    or (known is not None and m.group(3) != "*" and int(m.group(3)) != known)):
                resp.close()  # answer does not continue our bytes: start over
                resp = None
        elif resp is not None and resp.status != 200:
            resp.close()
            resp = None
        # 200 here means the server ignored Range (or the file changed): restart below
        # with this very response instead of asking again.
    if resp is None:
        offset = 0
        try:
            resp = _open(url, timeout, {})
        except urllib.error.HTTPError as e:  # 416 without a Range header: a server bug
            raise _Failed(_http_reason(e)) from None

    with resp:
        appending = resp.status == 206
        if appending:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            total = None if m.group(3) == "*" else int(m.group(3))
        else:
            offset = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.strip().isdigit() else None
        if total is not None and expected_size is not None and total != expected_size:
            _unlink(part)
            _unlink(meta)
            raise _Failed(f"server announces {total} bytes, expected {expected_size}")

        hasher = hashlib.sha256()
        done = offset
        try:
            if appending:
                with open(part, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        hasher.update(block)
            else:
                _unlink(meta)
                open(part, "wb").close()
                _write_meta(meta, url, resp, total)
            f = open(part, "ab")
        except OSError as e:
            raise _local_error(part, meta, e) from None
        with f:
            progress(done, total)  # outside the OSError net: a callback error is not a disk error
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _Dropped(_one_line(
                        f"connection dropped after {done} of {total or '?'} bytes "
                        f"({type(e).__name__}: {e})"), progressed=done > offset) from None
                if not chunk:
                    break
                try:
                    f.write(chunk)
                except OSError as e:
                    raise _local_error(part, meta, e) from None
                hasher.update(chunk)
                done += len(chunk)
                progress(done, total)
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                raise _local_error(part, meta, e) from None

    if total is not None and done < total:
        raise _Dropped(f"connection dropped after {done} of {total} bytes",
                       progressed=done > offset)
    _check(part, meta, done, sha256, expected_size, hasher.hexdigest(), resumed=offset > 0)


def _local_error(part: Path, meta: Path, err: OSError) -> "_LocalError":
    """Disk full / permissions: download() drops the partial file once it is closed."""
    return _LocalError(_one_line(f"cannot write {part}: {err}"))


def _check(part: Path, meta: Path, size: int, sha256: Optional[str],
           expected_size: Optional[int], got_sha256: str, resumed: bool) -> None:
    """A complete but wrong file is useless and must not be resumed: delete it."""
    if expected_size is not None and size != expected_size:
        _unlink(part)
        _unlink(meta)
        raise _Mismatch(f"size mismatch: got {size} bytes, expected {expected_size}", resumed)
    if sha256 is not None and got_sha256 != sha256:
        _unlink(part)
        _unlink(meta)
        raise _Mismatch(f"sha256 mismatch: got {got_sha256}, expected {sha256}", resumed)


def download(urls: Union[str, Sequence[str]], dest: Union[str, os.PathLike],
             sha256: Optional[str] = None, expected_size: Optional[int] = None,
             progress: Optional[ProgressFn] = None, timeout: float = DEFAULT_TIMEOUT,
             retries: int = 2) -> Path:
    """Download the first working URL to ``dest`` atomically and return ``dest``.

    ``urls``: primary first, mirrors after; each is tried in order. ``sha256`` and
    ``expected_size`` are checked when given (a mismatch deletes everything and moves on to
    the next mirror). ``progress(done_bytes, total_bytes_or_None)`` is called per chunk;
    without it a tqdm bar is drawn when stderr is a terminal. A dropped connection is
    resumed up to ``retries`` times per URL while it keeps making progress. Raises
    DownloadError (one line, names URLs, destination and what to do) when all URLs fail.
    """
    url_list: List[str] = [urls] if isinstance(urls, str) else [str(u) for u in urls]
    if not url_list:
        raise ValueError("download() needs at least one URL")
    dest = Path(dest)
    sha256 = sha256.strip().lower() if sha256 else None
    part, meta = part_path(dest), _meta_path(dest)
    failures: List[Tuple[str, str]] = []
    offline = True
    with _dest_lock(dest):
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DownloadError(_one_line(
                f"cannot create folder {dest.parent} for {dest.name}: {e}; create it or choose "
                f"another models folder, or download {url_list[0]} manually and place it at "
                f"{dest}"), urls=url_list, dest=dest, offline=False) from None
        bar = _Progress(progress, dest.name)
        try:
            for url in url_list:
                attempts = 0
                fresh_retry = True  # a bad resumed file may be our old bytes: one clean try
                while True:
                    try:
                        _fetch(url, dest, sha256, expected_size, timeout, bar)
                    except _Dropped as e:
                        offline = False
                        if e.progressed and attempts < retries:
                            attempts += 1
                            continue
                        failures.append((url, str(e)))
                    except _Mismatch as e:
                        offline = False
                        if e.resumed and fresh_retry:  # .part is gone now: next try is fresh
                            fresh_retry = False
                            continue
                        failures.append((url, str(e)))
                    except _Failed as e:
                        offline = offline and e.offline
                        failures.append((url, str(e)))
                    except _LocalError as e:
                        _unlink(part)
                        _unlink(meta)
                        raise DownloadError(
                            f"{e}; free some space or fix permissions, then retry, or download "
                            f"{url} manually and place it at {dest}",
                            urls=url_list, dest=dest, errors=[(url, str(e))]) from None
                    else:
                        try:
                            os.replace(part, dest)
                        except OSError as e:
                            raise DownloadError(_one_line(
                                f"downloaded {url} but cannot move {part} to {dest}: {e}; "
                                f"close programs using {dest} and move it by hand"),
                                urls=url_list, dest=dest, partial=part) from None
                        _unlink(meta)
                        return dest
                    break
        finally:
            bar.close()

        # Only a partial file from a dropped connection (it has its .part.json) is worth keeping.
        if part.exists() and _read_meta(meta) is None:
            _unlink(part)
        if not part.exists():
            _unlink(meta)
        partial = part if part.exists() else None
        raise DownloadError(_failure_message(url_list, dest, failures, partial, offline),
                            urls=url_list, dest=dest, errors=failures, partial=partial,
                            offline=offline)


def _failure_message(urls: Sequence[str], dest: Path, failures: Sequence[Tuple[str, str]],
                     partial: Optional[Path], offline: bool) -> str:
    tried = "; ".join(f"{u} ({reason})" for u, reason in failures)
    head = f"could not download {dest.name}"
    if offline:
        head += " (no network connection?)"
    if len(urls) == 1:
        fix = f"download {urls[0]} manually and place it at {dest}"
    else:
        fix = f"download any of these URLs manually and place the file at {dest}"
    msg = f"{head}: {tried}. Fix: {fix}"
    if partial is not None:
        msg += f" (or run again to resume the partial file {partial})"
    return _one_line(msg)
