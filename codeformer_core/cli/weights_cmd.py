"""Weight files for the command line: the models folder, fetching on first use, and the
``codeformer weights list | download | verify | convert | export`` sub-commands."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from ..errors import CheckpointError, CodeFormerError, MissingDependencyError, first_line
from .console import EXIT_ERROR, EXIT_OK, Out, UserError


def models_dir(args) -> Path:
    from ..weights.registry import default_models_dir
    return default_models_dir(getattr(args, "models", None))


def ensure(name: str, args, out: Out) -> Path:
    """Registry file, fetched on first use (one-line error naming URL and path when offline)."""
    from ..weights.registry import ensure_weight, get_entry, path_for
    entry = get_entry(name)
    dest = path_for(entry, models_dir(args))
    if not dest.is_file() and not args.no_download:
        out.info(f"downloading {entry.file} (first run) from {entry.url} to {dest}")
    return ensure_weight(entry, models_dir(args), download=not args.no_download)


def file_or_weight(value: str, args, out: Out, what: str) -> Path:
    """A path if it exists, else a registry name (downloaded when missing)."""
    p = Path(os.path.expanduser(value))
    if p.is_file():
        return p
    from ..weights.registry import find_entry
    if find_entry(value) is not None and not any(c in value for c in "/\\"):
        return ensure(value, args, out)
    raise UserError(f"{what} {value}: no such file (and not a known weight name; see 'codeformer weights list')")


def _human(n: Optional[int]) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_list(args) -> int:
    from ..weights.registry import known_weights, path_for
    models = models_dir(args)
    print(f"models folder: {models}")
    rows = []
    for name, e in known_weights().items():
        p = path_for(e, models)
        status = f"present ({_human(p.stat().st_size)})" if p.is_file() else "missing"
        rows.append((name, f"{e.folder}/{e.file}", f"{e.kind}:{e.variant}", status))
    widths = [max(len(r[i]) for r in rows + [("NAME", "FILE", "KIND", "STATUS")]) for i in range(4)]
    for r in [("NAME", "FILE", "KIND", "STATUS")] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return EXIT_OK


def cmd_download(args) -> int:
    from ..weights.download import download
    from ..weights.registry import get_entry, known_weights, path_for, verify_file
    names = list(known_weights()) if args.names == ["all"] else args.names
    entries = [get_entry(n) for n in names]  # unknown names fail before any download
    models = models_dir(args)
    for e in entries:
        dest = path_for(e, models)
        if dest.is_file() and not args.force:
            check = verify_file(dest, e)
            if check.ok:
                print(f"{e.name}: already present at {dest} ({check.message.split(': ', 1)[-1]})")
                continue
            print(f"{e.name}: {check.message}; downloading again", file=sys.stderr)
        download(e.urls, dest, sha256=e.sha256, expected_size=e.size)
        print(f"{e.name}: downloaded to {dest}" + (" (sha256 ok)" if e.sha256 else ""))
    return EXIT_OK


def cmd_verify(args) -> int:
    """OK only for a file that would load: the registry's size and sha256 where published (a file
    with the published hash is the official one), else every check loading makes
    (``models.registry.check_network``; upscalers through spandrel), FAIL with loading's message."""
    from ..weights.registry import known_weights, path_for, verify_file
    bad = 0
    if args.paths:
        targets = [(Path(os.path.expanduser(p)), None) for p in args.paths]
    else:
        models = models_dir(args)
        print(f"models folder: {models}")
        targets = [(path_for(e, models), e) for e in known_weights().values()]
    for path, entry in targets:
        if entry is not None and not path.is_file():
            print(f"{entry.name}: missing ({path})")
            continue
        r = verify_file(path, entry)
        ok, line = r.ok, r.message
        if (ok and r.expected_sha256 is None) or r.size == 0:   # an empty file: loading's words too
            try:
                line = f"{line.replace(', content not checked', '')}; {_loadable(path)}"
            except CodeFormerError as e:
                ok, line = False, first_line(e)
        print(("OK   " if ok else "FAIL ") + line)
        bad += 0 if ok else 1
    return EXIT_ERROR if bad else EXIT_OK


def _loadable(path: Path) -> str:
    """What ``path`` loads as, by the checks of the loader that would load it (registry kind by
    file name; else any network this pack loads, then anything spandrel loads); raises the
    loader's CodeFormerError for a file that would not load."""
    if path.suffix.lower() == ".onnx":
        return _onnx_loadable(path)
    from ..models.registry import KINDS, check_network
    from ..weights.registry import find_entry
    entry = find_entry(path.name)
    kind = entry.kind if entry is not None else None
    if kind is None or kind in KINDS:
        try:
            arch, state_dict = check_network(path, kind)
            return f"loads as {arch.title}, {len(state_dict)} tensors"
        except CheckpointError:
            if kind is not None or _pack_family(path):
                raise   # one of this pack's networks that would not load: loading's own message
            try:   # not one of this pack's networks: perhaps an upscaler or face model (spandrel)
                return _spandrel_loadable(path)
            except CodeFormerError:
                pass
            raise
    if kind == "upscaler":
        from ..io.upscale import load_upscaler
        up = load_upscaler(path, "cpu")
        return f"loads as a {up.scale}x upscaler"
    return _spandrel_loadable(path)


def _pack_family(path: Path) -> bool:
    """Whether the file's keys are those of a network this pack loads (CodeFormer, RetinaFace, ParseNet)."""
    from ..models.checkpoint import read_state_dict
    from ..models.registry import KINDS, family_of
    try:
        return family_of(read_state_dict(path)) in KINDS.values()
    except CheckpointError:
        return False


def _onnx_loadable(path: Path) -> str:
    """What an ONNX file is as a face model (models/onnx_face.py), without opening a session: its
    inputs, crop size, fidelity input, batch; the refusal's message for anything else."""
    from ..models.onnx_face import inspect_onnx_face_model
    return inspect_onnx_face_model(path).describe()


def _spandrel_loadable(path: Path) -> str:
    from ..models.face_model import read_spandrel_model
    desc = read_spandrel_model(path, "cpu")
    return f"loads with spandrel as {desc.architecture.name} ({desc.purpose}, {desc.scale}x)"


def cmd_convert(args) -> int:
    from ..models.registry import convert_to_safetensors
    src = Path(os.path.expanduser(args.path))
    if not src.is_file():
        raise UserError(f"{src}: no such file")
    if args.to != "safetensors":
        raise UserError("only --to safetensors is supported")
    dest = Path(args.output) if args.output else None
    if dest is not None and dest.resolve() == src.resolve():
        raise UserError("the output would overwrite the input")
    result = convert_to_safetensors(src, dest, fp16=args.fp16)
    print(f"{src} -> {result} ({_human(result.stat().st_size)}{', fp16' if args.fp16 else ''})")
    return EXIT_OK


def cmd_export(args) -> int:
    from ..models.onnx_export import export_onnx
    src = Path(os.path.expanduser(args.path))
    if not src.is_file():
        raise UserError(f"{src}: no such file")
    dest = Path(os.path.expanduser(args.onnx))
    if dest.suffix.lower() != ".onnx":
        raise UserError(f"{dest}: the output must be a .onnx file")
    if dest.resolve() == src.resolve():
        raise UserError("the output would overwrite the input")
    try:
        result = export_onnx(src, dest, fp16=args.fp16)
    except MissingDependencyError as e:
        raise UserError(str(e)) from None
    precision = "decoder fp16, encoder float32" if args.fp16 else "float32"
    print(f"{src} -> {result} ({_human(result.stat().st_size)}, {precision}; inputs input [B,3,512,512], w [B])")
    return EXIT_OK
