"""``codeformer restore | colorize | inpaint INPUTS... --ray``: the same per-file work on a Ray cluster.

The driver plans the files (``plan.plan`` for one file or one flat folder, so outputs land where the
single-process command puts them; several inputs, ``-r`` and ``--files-from`` keep each file's path
inside its input folder under ``-o``). Ray Data holds the planned files, one file per block, so each
file is one task. An actor pool (``--workers`` actors, each with ``--cpus-per-worker`` CPUs and
``--gpus-per-worker`` GPUs) loads the networks once per actor (``engine.open_session``) and runs
``run.process_file`` on each file it is given: decode, detect, restore, paste, encode and write
atomically (a temporary name in the destination folder, then ``os.replace``), exactly the code of
the single-process command, so the outputs are the same bytes. A video is one task, streamed chunk
by chunk inside it; several videos run in parallel on different actors.

Each actor returns one result row per file; the driver appends it to the manifest (JSON lines:
input, output, kind, status, faces, frames, no_face, error, seconds) as soon as it arrives, and
draws one progress bar over files with the faces/s so far.

Faults: an actor that dies (a crash, an out-of-memory kill, a lost node) is restarted by Ray and the
file it held is retried (``--retries`` times); a file whose worker keeps dying is given up and
recorded as failed. An error inside the per-file work (a corrupt input) is a failed row with its
reason while the rest goes on. Ctrl-C keeps the manifest written so far; outputs are complete or
absent, so a rerun with ``--skip-existing`` resumes.

Only the ``--ray`` path imports this module, and ray itself is imported inside the functions that
need it: importing the command line or the ComfyUI nodes never imports ray.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

from ..tasks import TASKS
from .console import Out, UserError, describe, progress_bar
from .engine import open_session, weight_paths
from .plan import Item, media_kind, plan
from .run import Stats, process_file, summary
from .settings import settings_from_args

MANIFEST_NAME = "codeformer-manifest.jsonl"
COLUMNS = ("input", "output", "kind", "status", "faces", "frames", "no_face", "error", "seconds")
EXTRA = ("line", "fatal")  # also returned by the workers, not written to the manifest
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # rows are paths and counts; images never pass through it
TEST_HOOKS_ENV = "CODEFORMER_CLUSTER_TEST_HOOKS"



# -- planning -------------------------------------------------------------------------------------
def _walk(folder: Path, recursive: bool, exclude: Path) -> List[Path]:
    """Files of a folder (sorted, hidden names left out), without anything under ``exclude``."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = []
    for p in found:
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if exclude == p or exclude in p.parents:
            continue
        files.append(p)
    return sorted(files)


def _listed(folder: Path, list_file: str) -> List[Path]:
    """--files-from: one path a line, relative to the input folder (or absolute, inside it);
    blank lines and lines starting with # are ignored."""
    lst = Path(os.path.expanduser(list_file))
    try:
        lines = lst.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UserError(f"--files-from {lst}: {e.strerror or e}") from None
    files = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(os.path.expanduser(line))
        p = p if p.is_absolute() else folder / p
        try:
            p.resolve().relative_to(folder.resolve())
        except ValueError:
            raise UserError(f"--files-from {lst}, line {n}: {line} is not inside {folder}") from None
        files.append(p)
    return files


def plan_inputs(args, task: str) -> Tuple[List[Item], Path]:
    """The planned files and the folder the manifest goes to by default.

    One file or one folder without ``-r``/``--files-from``: exactly ``plan.plan``. Otherwise every
    image or video goes to ``-o`` FOLDER / its path inside its input folder (a file given directly:
    its name), with ``--suffix`` (default none) added to the name; two inputs that would write the
    same output are an error."""
    inputs = [args.input, *args.more_inputs]
    if len(inputs) == 1 and not args.recursive and not args.files_from:
        items, _ = plan(settings_from_args(args, task).files)
        return items, next(d for _, d, k in items if k).parent
    paths = [Path(os.path.expanduser(p)) for p in inputs]
    for p in paths:
        if not p.exists():
            raise UserError(f"{p}: no such file or folder")
    if args.files_from and (len(paths) != 1 or not paths[0].is_dir()):
        raise UserError("--files-from names files inside one folder: give that folder as the only input")
    if args.output:
        root = Path(os.path.expanduser(args.output))
    elif len(paths) == 1 and paths[0].is_dir():
        root = paths[0].parent / (paths[0].name + TASKS[task].suffix)
    else:
        raise UserError("several inputs need -o FOLDER (each output keeps its path inside its input folder)")
    if media_kind(root) is not None:
        raise UserError(f"-o {root}: give a folder (several inputs, -r or --files-from)")
    suffix = args.suffix or ""
    items: List[Item] = []
    writers: Dict[Path, Path] = {}
    for base in paths:
        if base.is_dir():
            files = _listed(base, args.files_from) if args.files_from else _walk(base, args.recursive, root.resolve())
            pairs = [(f, f.relative_to(base)) for f in files]
        else:
            pairs = [(base, Path(base.name))]
        for f, rel in pairs:
            kind = media_kind(f)
            dest = root / rel.parent / f"{rel.stem}{suffix}{rel.suffix}" if kind else None
            if dest is not None:
                key = dest.resolve()
                if key == f.resolve():
                    raise UserError(f"output {dest} would overwrite its input; give --suffix or another -o")
                if key in writers:
                    raise UserError(f"{writers[key]} and {f} would both be written to {dest}; "
                                    f"give them separately or rename one")
                writers[key] = f
            items.append((f, dest, kind))
    if not writers:
        raise UserError(f"no images or videos in {', '.join(map(str, paths))}"
                        + ("" if args.recursive or args.files_from else " (subfolders need -r)"))
    return items, root


# -- the workers (Ray actors) --------------------------------------------------------------------
def _test_hook(src: str) -> None:
    """Fault tests only; nothing happens unless $CODEFORMER_CLUSTER_TEST_HOOKS names a folder.
    There, ``die-once.NAME`` makes the first worker that reaches file NAME remove the marker and
    exit abruptly (os._exit, as a crash or an out-of-memory kill would); ``die.NAME`` does so on
    every attempt; ``hold.NAME`` holds the file while the marker exists (at most 10 minutes)."""
    hooks = os.environ.get(TEST_HOOKS_ENV)
    if not hooks:
        return
    name = Path(src).name
    try:
        (Path(hooks) / f"die-once.{name}").unlink()
        os._exit(17)
    except FileNotFoundError:
        pass
    if (Path(hooks) / f"die.{name}").exists():
        os._exit(17)
    t0 = time.monotonic()
    while (Path(hooks) / f"hold.{name}").exists() and time.monotonic() - t0 < 600:
        time.sleep(0.1)


class FileWorker:
    """One actor of the pool: the networks loaded once (``engine.open_session``), then ``run.process_file``
    on each file of each batch, one result row per file (errors become failed rows). When the
    networks cannot be loaded, every row carries that reason in ``fatal`` and the driver stops."""

    def __init__(self, args: argparse.Namespace, task: str, threads: int):
        import torch
        if args.device == "cpu" or not torch.cuda.is_available():
            torch.set_num_threads(max(1, threads))
        self.session = None
        self.fatal = ""
        try:
            self.session = open_session(settings_from_args(args, task), Out(quiet=True))
        except Exception as e:  # reported once by the driver, not as a Ray traceback per actor
            self.fatal = describe(e)

    def __call__(self, batch: dict) -> dict:
        rows = [self.process(str(s), str(d), str(k)) for s, d, k in zip(batch["input"], batch["output"], batch["kind"])]
        return {c: [r[c] for r in rows] for c in (*COLUMNS, *EXTRA)}

    def process(self, src: str, dest: str, kind: str) -> dict:
        _test_hook(src)
        stats = Stats()
        t0 = time.perf_counter()
        line, status, error = "", "ok", ""
        try:
            if self.fatal:
                status, error = "failed", self.fatal
            else:
                line = process_file(self.session, Path(src), Path(dest), kind, stats)
        except Exception as e:  # one bad file must not stop the others
            status, error = "failed", describe(e)
        return dict(input=src, output=dest, kind=kind, status=status, faces=stats.faces, frames=stats.frames,
                    no_face=stats.no_face, error=error, seconds=round(time.perf_counter() - t0, 3), line=line,
                    fatal=self.fatal)


# -- Ray --------------------------------------------------------------------------------------------
def _import_ray(local: bool):
    if local:
        # A one-node Ray for this command only: usage stats off, and every Ray process on loopback
        # (read when ray is imported; the variable's name aside, it only picks the node address).
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError("--ray needs Ray Data: pip install 'comfyui-codeformer[cluster]' "
                        "(or pip install 'ray[data]')") from None
    return ray


def _connect(ray, args) -> bool:
    """Join --ray-address, or start a one-node Ray in this process; True when this call started it."""
    if ray.is_initialized():
        return False
    quiet = dict(include_dashboard=False, logging_level=logging.ERROR if args.quiet else logging.WARNING,
                 log_to_driver=not args.quiet)
    if args.ray_address:
        ray.init(address=args.ray_address, **{k: v for k, v in quiet.items() if k != "include_dashboard"})
        return True
    cpus_needed = math.ceil((args.workers or 1) * args.cpus_per_worker)
    ray.init(num_cpus=max(os.cpu_count() or 1, cpus_needed), object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet)
    return True


def _pool(ray, args, n_files: int, out: Out) -> Tuple[int, float, float]:
    """(actors, CPUs each, GPUs each) from the options and the cluster's resources."""
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    gpw = args.gpus_per_worker
    if gpw is None:
        gpw = 1.0 if gpus >= 1 and args.device != "cpu" else 0.0
    if gpw > 0 and args.device == "cpu":
        raise UserError("--gpus-per-worker with --device cpu: drop one of them")
    if gpw == 0 and args.device.startswith("cuda"):
        raise UserError(f"--device {args.device} with --ray needs --gpus-per-worker > 0 (a GPU for each worker)")
    cpw = args.cpus_per_worker
    n = args.workers or max(1, int(gpus // gpw) if gpw else int(cpus // cpw))
    n = max(1, min(n, n_files))
    if n * cpw > cpus or n * gpw > gpus:
        out.warn(f"{n} workers need {n * cpw:g} CPUs and {n * gpw:g} GPUs; the cluster has {cpus:g} and {gpus:g} "
                 f"now (workers start as resources appear)")
    return n, cpw, gpw


def _worker_args(args) -> argparse.Namespace:
    """The options as the actors see them: never download (the driver fetched the weights), quiet,
    and 'cuda' for any 'cuda:N' (an actor sees only the GPUs Ray gave it)."""
    a = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "func"})
    a.no_download, a.quiet = True, True
    if a.device.startswith("cuda"):
        a.device = "cuda"
    return a


def _results(ray, args, task: str, todo: List[Item], out: Out) -> Iterator[dict]:
    """Result rows as the actors finish them (any order)."""
    n, cpw, gpw = _pool(ray, args, len(todo), out)
    out.info(f"{len(todo)} files on {n} worker{'s' if n != 1 else ''} ({cpw:g} CPU"
             + (f", {gpw:g} GPU" if gpw else "") + " each)")
    import ray.data as rd
    ds = rd.from_items([{"input": str(s), "output": str(d), "kind": k} for s, d, k in todo],
                       override_num_blocks=len(todo))
    with warnings.catch_warnings():
        # Ray Data (2.60) deprecates extra ray_remote_args but has no named parameter for these:
        # actors come back after a crash, a file is retried --retries times (Ray's default: forever).
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ds.map_batches(
            FileWorker, fn_constructor_kwargs=dict(args=_worker_args(args), task=task, threads=int(cpw)),
            batch_size=1, compute=rd.ActorPoolStrategy(size=n, max_tasks_in_flight_per_actor=1),
            num_cpus=cpw, num_gpus=gpw, max_restarts=-1, max_task_retries=args.retries)
    dc = ds.context
    dc.max_errored_blocks = -1  # a file whose worker died on every retry is dropped; recorded as failed below
    dc.enable_progress_bars = False
    dc.actor_task_retry_on_errors = False
    if not args.debug:
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # its errors reach us as rows or exceptions
    # prefetch_batches=0: each result is handed over as soon as its task ends (iter_rows holds one back)
    for batch in ds.iter_batches(batch_size=None, prefetch_batches=0, batch_format="numpy"):
        for i in range(len(batch["input"])):
            yield {c: _plain(batch[c][i]) for c in (*COLUMNS, *EXTRA)}


def _plain(value):
    """A numpy scalar as the Python value (strings come back as str already)."""
    return value.item() if hasattr(value, "item") else value


class Manifest:
    """The results file: one JSON object a line, appended and flushed as results arrive."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a", encoding="utf-8")
        self.rows = 0

    def write(self, src, dest, kind, status, error=None, **counts) -> None:
        row = dict(input=str(src), output=str(dest) if dest else None, kind=kind, status=status,
                   faces=counts.get("faces", 0), frames=counts.get("frames", 0), no_face=counts.get("no_face", 0),
                   error=error or None, seconds=counts.get("seconds", 0.0))
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()
        self.rows += 1

    def close(self) -> None:
        self.f.close()


def run_cluster(args, task: str) -> int:
    """restore / colorize / inpaint with --ray: plan, fetch weights, stream the files through the
    actor pool, record every file in the manifest, summarise (same exit codes as without --ray)."""
    out = Out(args.quiet)
    settings = settings_from_args(args, task)
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be >= 1")
    if args.cpus_per_worker <= 0 or (args.gpus_per_worker or 0) < 0 or args.retries < 0:
        raise UserError("--cpus-per-worker must be > 0, --gpus-per-worker and --retries >= 0")
    items, root = plan_inputs(args, task)
    manifest = Manifest(Path(os.path.expanduser(args.manifest)) if args.manifest else root / MANIFEST_NAME)
    stats = Stats()
    todo: List[Item] = []
    not_media = []
    for src, dest, kind in items:
        if kind is None:
            stats.skipped += 1
            not_media.append(src.name)
            manifest.write(src, None, None, "skipped", "not an image or video file")
        elif settings.files.skip_existing and dest.exists():
            stats.skipped += 1
            manifest.write(src, dest, kind, "skipped", "output exists")
        else:
            todo.append((src, dest, kind))
    if not_media:
        more = f" and {len(not_media) - 5} more" if len(not_media) > 5 else ""
        out.warn(f"skipped (not an image or video file): {', '.join(not_media[:5])}{more}")
    if stats.skipped - len(not_media):
        out.info(f"{stats.skipped - len(not_media)} files skipped (output exists)")
    ray = None
    started = False
    left = {str(s): (s, d, k) for s, d, k in todo}
    bar = progress_bar(total=len(todo), desc="files", unit="file", quiet=out.quiet)
    try:
        if todo:
            # fetch missing weights once, here, before any worker starts
            weight_paths(settings.models, task, settings.has_aligned, out)
            ray = _import_ray(local=not args.ray_address)
            started = _connect(ray, args)
            # closed on any way out (Ctrl-C in this loop included): Ray Data then stops its executor and
            # its actors at once, not when the suspended generator is garbage-collected
            with contextlib.closing(_results(ray, args, task, todo, out)) as results:
                for row in results:
                    if row["fatal"]:
                        raise UserError(f"a worker could not load the networks: {row['fatal']}")
                    src, dest, kind = left.pop(row["input"])
                    ok = row["status"] == "ok"
                    manifest.write(src, dest, kind, row["status"], row["error"], faces=row["faces"],
                                   frames=row["frames"], no_face=row["no_face"], seconds=row["seconds"])
                    if ok:
                        stats.ok += 1
                        stats.frames += row["frames"]
                        stats.faces += row["faces"]
                        stats.no_face += row["no_face"]
                        out.result(row["line"])
                    else:
                        stats.failed += 1
                        out.warn(f"{src.name}: failed: {row['error']}")
                    bar.update(1)
                    dt = time.perf_counter() - stats.start
                    bar.set_postfix_str(f"{stats.faces / dt:.2f} faces/s", refresh=False)
            for src, dest, kind in left.values():  # dropped by Ray Data after --retries deaths
                stats.failed += 1
                why = (f"the worker processing it died {args.retries + 1} times (a crash or an out-of-memory "
                       f"kill; see the Ray logs); rerun with --skip-existing to try again")
                manifest.write(src, dest, kind, "failed", why)
                out.warn(f"{src.name}: failed: {why}")
                bar.update(1)
            left = {}
    except KeyboardInterrupt:
        out.warn(f"interrupted: {manifest.rows} results kept in {manifest.path}; {len(left)} files not finished "
                 f"(no partial output under a final name); rerun with --skip-existing to resume")
        raise
    finally:
        bar.close()
        manifest.close()
        if started:
            ray.shutdown()
    code = summary(out, task, stats)
    out.info(f"manifest: {manifest.path}")
    return code
