"""Weight registry and model-folder resolution, shared by the ComfyUI nodes and the CLI.

The data lives in ``weights/registry.json`` (one source of truth, also read by docs and
tools); this module only loads and validates it, decides where files go (ComfyUI folder
conventions, so one models folder serves both front ends) and fetches missing files.
No ComfyUI import: inside ComfyUI the nodes pass ``folder_paths``' models folder explicitly.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from . import download as downloader
from .download import DEFAULT_TIMEOUT, ProgressFn, file_sha256
from ..errors import CorruptWeightError, MissingWeightError, UnknownWeightError

__all__ = [
    "WeightEntry", "VerifyResult", "MissingWeightError", "CorruptWeightError",
    "UnknownWeightError", "KINDS", "KIND_FOLDERS", "ENV_MODELS_DIR", "registry_path",
    "load_registry", "known_weights", "find_entry", "get_entry", "default_models_dir",
    "comfyui_models_dir", "user_cache_dir", "path_for", "ensure_weight", "verify_file",
]

ENV_MODELS_DIR = "CODEFORMER_MODELS_DIR"
KINDS = ("codeformer", "retinaface", "parsenet", "upscaler")
# ComfyUI models/ sub-folder per kind (the names other face-restore packs already use).
KIND_FOLDERS = {
    "codeformer": "facerestore_models",
    "retinaface": "facedetection",
    "parsenet": "facedetection",
    "upscaler": "upscale_models",
}

_HERE = Path(__file__).resolve().parent.parent  # the codeformer_core package
# An installed wheel ships a copy inside the package (pyproject maps weights/ to
# codeformer_core._registry); a source checkout or ComfyUI custom_nodes clone has none
# there and reads weights/registry.json. The in-package copy goes first so an install never
# picks up an unrelated top-level "weights" folder in site-packages.
_REGISTRY_CANDIDATES = (
    _HERE / "_registry" / "registry.json",
    _HERE.parent / "weights" / "registry.json",
)


@dataclass(frozen=True)
class WeightEntry:
    """One downloadable file. ``sha256``/``size`` are None when upstream publishes none."""

    name: str
    file: str
    urls: Tuple[str, ...]
    sha256: Optional[str]
    size: Optional[int]
    kind: str
    variant: str
    folder: str
    description: str = ""
    aliases: Tuple[str, ...] = ()

    @property
    def url(self) -> str:
        """Primary URL (mirrors follow in ``urls``)."""
        return self.urls[0]


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of verify_file; truthy when nothing known is wrong."""

    path: Path
    ok: bool
    exists: bool
    size: Optional[int]
    expected_size: Optional[int]
    sha256: Optional[str]          # computed only when an expected hash is known
    expected_sha256: Optional[str]
    message: str

    @property
    def verified(self) -> bool:
        """True only when a known sha256 matched (ok alone may mean "nothing to check")."""
        return self.ok and self.expected_sha256 is not None

    def __bool__(self) -> bool:
        return self.ok


def registry_path() -> Path:
    """The registry file in use (source tree first, then the copy inside an installed wheel)."""
    for candidate in _REGISTRY_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "weights/registry.json not found (looked at "
        + ", ".join(str(c) for c in _REGISTRY_CANDIDATES)
        + "); reinstall the package or restore the file from git")


def _entry_from_json(name: str, raw: dict, source: Path) -> WeightEntry:
    where = f"{source}: entry {name!r}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} is not an object")
    for key in ("file", "urls", "sha256", "size", "kind", "variant", "folder"):
        if key not in raw:
            raise ValueError(f"{where} lacks {key!r}")
    urls = raw["urls"]
    if (not isinstance(urls, list) or not urls
            or not all(isinstance(u, str) and u.startswith(("https://", "http://")) for u in urls)):
        raise ValueError(f"{where}: 'urls' must be a non-empty list of http(s) URLs")
    sha = raw["sha256"]
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64
                            or any(c not in "0123456789abcdef" for c in sha.lower())):
        raise ValueError(f"{where}: 'sha256' must be 64 hex digits or null")
    size = raw["size"]
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise ValueError(f"{where}: 'size' must be a positive integer or null")
    kind = raw["kind"]
    if kind not in KINDS:
        raise ValueError(f"{where}: unknown kind {kind!r} (expected one of {KINDS})")
    if raw["folder"] != KIND_FOLDERS[kind]:
        raise ValueError(f"{where}: folder {raw['folder']!r} != {KIND_FOLDERS[kind]!r} for {kind}")
    file = raw["file"]
    if not isinstance(file, str) or not file or Path(file).name != file:
        raise ValueError(f"{where}: 'file' must be a bare file name")
    return WeightEntry(
        name=name, file=file, urls=tuple(urls), sha256=sha.lower() if sha else None,
        size=size, kind=kind, variant=str(raw["variant"]), folder=raw["folder"],
        description=str(raw.get("description", "")), aliases=tuple(raw.get("aliases", ())))


def load_registry(path: Union[str, os.PathLike, None] = None) -> Dict[str, WeightEntry]:
    """Parse and validate a registry file; a broken registry fails loudly, not at download time."""
    source = Path(path) if path is not None else registry_path()
    data = json.loads(source.read_text(encoding="utf-8"))
    raw = data.get("weights") if isinstance(data, dict) else None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{source}: expected a non-empty 'weights' object")
    entries = {name: _entry_from_json(name, spec, source) for name, spec in raw.items()}
    files = [e.file.lower() for e in entries.values()]
    if len(set(files)) != len(files):
        raise ValueError(f"{source}: two entries share a file name")
    return entries


@lru_cache(maxsize=1)
def _cached_registry() -> Dict[str, WeightEntry]:
    return load_registry()


def known_weights() -> Dict[str, WeightEntry]:
    """All registry entries by short name (a fresh dict; entries are immutable)."""
    return dict(_cached_registry())


def find_entry(name_or_filename: Union[str, os.PathLike, WeightEntry]) -> Optional[WeightEntry]:
    """Entry by short name, alias, file name or a path ending in that file name; else None."""
    if isinstance(name_or_filename, WeightEntry):
        return name_or_filename
    key = os.fspath(name_or_filename).strip()
    key = key.replace("\\", "/").rsplit("/", 1)[-1].lower()
    if not key:
        return None
    entries = known_weights()
    for entry in entries.values():
        if key == entry.name.lower() or key == entry.file.lower() or key in (
                a.lower() for a in entry.aliases):
            return entry
    return None


def get_entry(name_or_filename: Union[str, os.PathLike, WeightEntry]) -> WeightEntry:
    """Like find_entry but raises UnknownWeightError listing the valid names."""
    entry = find_entry(name_or_filename)
    if entry is None:
        raise UnknownWeightError(
            f"unknown weight {os.fspath(name_or_filename)!r}; known: "
            + ", ".join(sorted(known_weights())))
    return entry


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/codeformer`` (absolute values only, per the XDG spec) or ~/.cache/codeformer."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "codeformer"


def _pack_dirs() -> List[Path]:
    """This pack's root, as imported and with symlinks resolved (ComfyUI links packs too)."""
    as_imported = Path(os.path.abspath(__file__)).parent.parent.parent
    resolved = _HERE.parent
    return [as_imported] if as_imported == resolved else [as_imported, resolved]


def comfyui_models_dir(pack_dir: Union[str, os.PathLike, None] = None) -> Optional[Path]:
    """``<ComfyUI>/models`` when the pack sits in ``<ComfyUI>/custom_nodes/<pack>``, else None.

    Detected by layout alone (no ComfyUI import), so the CLI run from inside a ComfyUI
    install shares the same files. extra_model_paths.yaml is not read: nodes should pass
    the folder from ``folder_paths`` explicitly.
    """
    candidates = [Path(os.path.abspath(pack_dir))] if pack_dir is not None else _pack_dirs()
    for pack in candidates:
        if pack.parent.name == "custom_nodes":
            models = pack.parent.parent / "models"
            if models.is_dir():
                return models
    return None


def default_models_dir(explicit: Union[str, os.PathLike, None] = None) -> Path:
    """Models folder: explicit > $CODEFORMER_MODELS_DIR > ComfyUI layout > user cache."""
    if explicit is not None and os.fspath(explicit) != "":
        return Path(os.path.expanduser(os.fspath(explicit))).absolute()
    env = os.environ.get(ENV_MODELS_DIR, "").strip()
    if env:
        return Path(os.path.expanduser(env)).absolute()
    comfy = comfyui_models_dir()
    if comfy is not None:
        return comfy
    return user_cache_dir()


def path_for(entry: Union[str, WeightEntry], models_dir: Union[str, os.PathLike, None] = None) -> Path:
    """``<models_dir>/<ComfyUI folder>/<file>``; models_dir defaults to default_models_dir()."""
    entry = get_entry(entry)
    return default_models_dir(models_dir) / entry.folder / entry.file


def verify_file(path: Union[str, os.PathLike], entry: Union[str, WeightEntry, None] = None) -> VerifyResult:
    """Check a file against the registry's size and sha256 where known (hash only if needed)."""
    path = Path(path)
    if entry is None:
        entry = find_entry(path.name)
    elif not isinstance(entry, WeightEntry):
        entry = get_entry(entry)
    exp_size = entry.size if entry else None
    exp_sha = entry.sha256 if entry else None

    def result(ok: bool, message: str, size=None, sha=None) -> VerifyResult:
        return VerifyResult(path=path, ok=ok, exists=size is not None, size=size,
                            expected_size=exp_size, sha256=sha, expected_sha256=exp_sha,
                            message=message)

    if not path.is_file():
        return result(False, f"{path} does not exist")
    size = path.stat().st_size
    if size == 0:
        return result(False, f"{path} is empty", size)
    if exp_size is not None and size != exp_size:
        return result(False, f"{path} has {size} bytes, expected {exp_size}", size)
    if exp_sha is None:
        what = "no registry entry" if entry is None else "no published sha256"
        return result(True, f"{path}: {what}, content not checked", size)
    sha = file_sha256(path)
    if sha != exp_sha:
        return result(False, f"{path}: sha256 {sha} != expected {exp_sha}", size, sha)
    return result(True, f"{path}: sha256 ok", size, sha)


def ensure_weight(name: Union[str, WeightEntry], models_dir: Union[str, os.PathLike, None] = None,
                  download: bool = True, progress: Optional[ProgressFn] = None, *,
                  verify: bool = False, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Path of a usable weight file, downloading it (atomically, verified) when absent.

    An existing file is trusted after a cheap size check (when a size is known); pass
    ``verify=True`` to also hash it. ``download=False`` raises MissingWeightError /
    CorruptWeightError with the manual-download instructions instead of touching the network.
    """
    entry = get_entry(name)
    dest = path_for(entry, models_dir)
    if dest.is_file():
        if verify:
            check = verify_file(dest, entry)
        elif entry.size is not None and dest.stat().st_size != entry.size:
            check = VerifyResult(dest, False, True, dest.stat().st_size, entry.size, None,
                                 entry.sha256, f"{dest} has {dest.stat().st_size} bytes, "
                                 f"expected {entry.size}")
        else:
            return dest
        if check.ok:
            return dest
        if not download:
            raise CorruptWeightError(f"{check.message}; delete it and download {entry.url} "
                                     f"again, placing it at {dest}")
    elif not download:
        raise MissingWeightError(f"{entry.file} not found at {dest}; download {entry.url} "
                                 f"and place it there (or allow automatic downloads)")
    return downloader.download(entry.urls, dest, sha256=entry.sha256, expected_size=entry.size,
                               progress=progress, timeout=timeout)
