"""The command line on Ray (``--ray``, issue 13): planning, byte-identical outputs, faults, Ctrl-C.

One local Ray per module (2 CPUs, 200 MB object store, no dashboard); each run starts its own
actor pool of 2 CPU workers. Synthetic weights; tiny images. A CodeFormer forward costs seconds
per face on this CPU, so only one test restores a face (--only-center-face on a 128 px image);
the others make detection find nothing (threshold 1.0), which still runs decode, detection,
paste-back, encode and the atomic write.

Fault injection: the workers read $CODEFORMER_CLUSTER_TEST_HOOKS (set before Ray starts, so every
worker inherits it): ``die-once.NAME`` kills the worker the first time it reaches file NAME,
``die.NAME`` every time, ``hold.NAME`` holds the file while the marker exists.
"""
from __future__ import annotations

import ast
import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import DETECTOR_ARGS, NO_FACES, astronaut, make_video
from codeformer_core import cli
from codeformer_core.cli import cluster

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")
ONE_FACE = ["--only-center-face", "--detection-threshold", "0.3", "--detection-resolution", "0"]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """(address, hooks folder) of a one-node Ray started here, on loopback as the command starts
    its own; shut down after the module."""
    hooks = tmp_path_factory.mktemp("hooks")
    env = {cluster.TEST_HOOKS_ENV: str(hooks), "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # before ray is imported; Ray's processes and the subprocess driver inherit it
    ray = pytest.importorskip("ray", reason="the Ray tests need ray[data] (pip install .[cluster])")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, logging_level="error")
    try:
        yield ray.get_runtime_context().gcs_address, hooks
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def torch_threads(n: int):
    """The single-process reference runs with the workers' thread count (1 = --cpus-per-worker):
    CPU convolutions sum in a thread-dependent order, which can move a few pixels by a level or two."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main(*argv):
    """cli.main in this process: (exit code, stdout, stderr)."""
    o, e = io.StringIO(), io.StringIO()
    with redirect_stdout(o), redirect_stderr(e):
        rc = cli.main([str(a) for a in argv])
    return rc, o.getvalue(), e.getvalue()


def rows(manifest: Path):
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    return path


def gradient(h: int, w: int, channel: int) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., channel] = np.linspace(0, 255, w, dtype=np.uint8)[None]
    img[..., (channel + 1) % 3] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    return img


# ----------------------------------------------------------------------------- without Ray
IMPORTS = r"""
import importlib, pkgutil, sys
import codeformer_core
from codeformer_core.cli import args, cluster, run
args.build_parser().parse_args(["restore", "x.png", "y.png", "-o", "out", "--ray", "--workers", "2"])
for m in pkgutil.walk_packages(codeformer_core.__path__, "codeformer_core."):
    if ".dev." not in m.name:
        importlib.import_module(m.name)
print(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
"""


def test_nothing_imports_ray_without_the_option():
    r = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    # The node layer imports only codeformer_core (checked above) and ComfyUI; no module names ray.
    for path in sorted((ROOT / "nodes").glob("*.py")) + [ROOT / "__init__.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "ray" or n.startswith("ray.") for n in names), path


def test_help_lists_the_cluster_options():
    rc, out, _ = main("restore", "--help")
    assert rc == 0
    for opt in ("--ray", "--ray-address", "--workers", "--gpus-per-worker", "--cpus-per-worker", "--retries",
                "--recursive", "--files-from", "--manifest"):
        assert opt in out


def test_ray_only_options_need_ray(tmp_path):
    a, b = write(tmp_path / "a.png", gradient(8, 8, 0)), write(tmp_path / "b.png", gradient(8, 8, 1))
    rc, _, err = main("restore", a, b, "-o", tmp_path / "o")
    assert rc == cli.EXIT_ERROR and "several inputs: only with --ray" in err
    rc, _, err = main("restore", tmp_path, "-r")
    assert rc == cli.EXIT_ERROR and "--recursive: only with --ray" in err


def _plan(*argv):
    from codeformer_core.cli.args import build_parser
    a = build_parser().parse_args(["restore", *map(str, argv), "--ray"])
    items, root = cluster.plan_inputs(a, "restore")
    return {str(s): (str(d) if d else None, k) for s, d, k in items}, root


def test_plan_recursive_keeps_paths_and_skips_hidden_and_output(tmp_path):
    src = tmp_path / "scans"
    for rel in ("a.png", "1950/b.jpg", "1950/x/c.mp4", ".hidden/d.png", "1950/.e.png", "notes.txt"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"")
    (src / "done").mkdir()
    (src / "done" / "a.png").write_bytes(b"")  # an earlier run's output inside the input: not an input
    plan, root = _plan(src, "-r", "-o", src / "done", "--suffix", "_r")
    assert root == src / "done"
    assert plan == {str(src / "a.png"): (str(src / "done/a_r.png"), "image"),
                    str(src / "1950/b.jpg"): (str(src / "done/1950/b_r.jpg"), "image"),
                    str(src / "1950/x/c.mp4"): (str(src / "done/1950/x/c_r.mp4"), "video"),
                    str(src / "notes.txt"): (None, None)}
    # without -r and -o: exactly the single-process plan (sibling folder, top level only)
    plan, root = _plan(src)
    assert root == tmp_path / "scans_restored"
    assert plan[str(src / "a.png")] == (str(tmp_path / "scans_restored" / "a.png"), "image")
    assert str(src / "1950/b.jpg") not in plan


def test_plan_several_inputs_and_file_list(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for p in (a / "x.png", b / "y.png", b / "sub/z.png", tmp_path / "loose.webp"):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    plan, _ = _plan(a, b, tmp_path / "loose.webp", "-r", "-o", tmp_path / "o")
    assert {k: v[0] for k, v in plan.items()} == {
        str(a / "x.png"): str(tmp_path / "o/x.png"), str(b / "y.png"): str(tmp_path / "o/y.png"),
        str(b / "sub/z.png"): str(tmp_path / "o/sub/z.png"),
        str(tmp_path / "loose.webp"): str(tmp_path / "o/loose.webp")}
    (a / "y.png").write_bytes(b"")
    with pytest.raises(cli.UserError, match="would both be written to"):
        _plan(a, b, "-o", tmp_path / "o")
    with pytest.raises(cli.UserError, match="several inputs need -o"):
        _plan(a, b)
    lst = tmp_path / "list.txt"
    lst.write_text(f"# wanted\nsub/z.png\n\n{b / 'y.png'}\nmissing.png\n")
    plan, _ = _plan(b, "--files-from", lst, "-o", tmp_path / "o")  # missing.png: a failed row when run
    assert list(plan) == [str(b / "sub/z.png"), str(b / "y.png"), str(b / "missing.png")]
    lst.write_text(f"{a / 'x.png'}\n")
    with pytest.raises(cli.UserError, match="is not inside"):
        _plan(b, "--files-from", lst, "-o", tmp_path / "o")


# ----------------------------------------------------------------------------- on Ray
def test_face_restored_byte_identical_to_single_process(ray_cluster, models_dir, tmp_path):
    src = write(tmp_path / "in" / "face.png", astronaut((128, 128)))
    common = ["-s", "1", *ONE_FACE, "--models", models_dir, *DETECTOR_ARGS]
    with torch_threads(1):
        rc, out1, err = main("restore", src.parent, "-o", tmp_path / "single", *common)
    assert rc == cli.EXIT_OK, err
    rc, out2, err = main("restore", src.parent, "-o", tmp_path / "ray", *common, "--ray", "--workers", "2")
    assert rc == cli.EXIT_OK, err
    assert "1 faces found" in out1 and "1 faces found" in out2
    assert (tmp_path / "ray" / "face.png").read_bytes() == (tmp_path / "single" / "face.png").read_bytes()
    (row,) = rows(tmp_path / "ray" / cluster.MANIFEST_NAME)
    assert row["status"] == "ok" and row["faces"] == 1 and row["error"] is None


@pytest.fixture(scope="module")
def fault_run(ray_cluster, models_dir, tmp_path_factory):
    """A folder with six images, a video and a corrupt file; on Ray one worker dies the first time it
    reaches b.png and every time it reaches poison.png (--retries 1). Also run without Ray."""
    _, hooks = ray_cluster
    d = tmp_path_factory.mktemp("faults")
    src = d / "in"
    for i, name in enumerate(("a.png", "b.png", "c.jpg", "d.png", "e.png", "poison.png")):
        write(src / name, gradient(48 + 8 * i, 64, i % 3))
    make_video(src / "clip.mp4", [gradient(64, 64, i % 3) for i in range(4)], audio=False)
    (src / "broken.png").write_bytes(b"not an image at all")
    common = ["-s", "1", *NO_FACES, "--models", models_dir, *DETECTOR_ARGS]
    with torch_threads(1):
        single = main("restore", src, "-o", d / "single", *common)
    (hooks / "die-once.b.png").touch()
    (hooks / "die.poison.png").touch()
    try:
        t0 = time.perf_counter()
        ray_res = main("restore", src, "-o", d / "ray", *common, "--ray", "--workers", "2", "--retries", "1")
        seconds = time.perf_counter() - t0
    finally:
        left = sorted(p.name for p in hooks.iterdir())
        for p in hooks.iterdir():
            p.unlink()
    return dict(src=src, single=single, ray=ray_res, out=d / "ray", ref=d / "single", left=left, seconds=seconds)


def test_fault_run_finishes_with_one_row_per_file(fault_run):
    rc, stdout, stderr = fault_run["ray"]
    print(f"fault run: {fault_run['seconds']:.1f} s\n{stdout}\n{stderr}")
    assert fault_run["single"][0] == cli.EXIT_PARTIAL  # broken.png fails there too
    assert rc == cli.EXIT_PARTIAL
    assert "6 files done, 2 failed" in stdout
    assert fault_run["left"] == ["die.poison.png"]  # die-once marker used: the worker did die on b.png
    got = {Path(r["input"]).name: r for r in rows(fault_run["out"] / cluster.MANIFEST_NAME)}
    assert len(rows(fault_run["out"] / cluster.MANIFEST_NAME)) == len(got) == 8
    assert got["broken.png"]["status"] == "failed" and "not a readable image" in got["broken.png"]["error"]
    assert got["poison.png"]["status"] == "failed" and "died 2 times" in got["poison.png"]["error"]
    for name in ("a.png", "b.png", "c.jpg", "d.png", "e.png", "clip.mp4"):
        assert got[name]["status"] == "ok" and got[name]["error"] is None and got[name]["faces"] == 0
    assert got["clip.mp4"]["kind"] == "video" and got["clip.mp4"]["frames"] == 4
    assert "poison.png: failed" in stderr and "broken.png: failed" in stderr


def test_fault_run_outputs_identical_and_nothing_half_written(fault_run):
    out, ref = fault_run["out"], fault_run["ref"]
    outputs = ["a.png", "b.png", "c.jpg", "clip.mp4", "d.png", "e.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(outputs + [cluster.MANIFEST_NAME])  # no temp files
    for name in outputs:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert sorted(p.name for p in ref.iterdir()) == sorted(outputs + ["poison.png"])


def test_worker_that_cannot_load_is_one_error_line(ray_cluster, models_dir, tmp_path):
    src = write(tmp_path / "in" / "a.png", gradient(32, 32, 0))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage" * 100)
    rc, _, err = main("restore", src, "-o", tmp_path / "o", "--model", bad, *NO_FACES, "--models", models_dir,
                      *DETECTOR_ARGS, "--ray", "--workers", "1")
    assert rc == cli.EXIT_ERROR
    assert "a worker could not load the networks" in err and "bad.pth" in err and "Traceback" not in err


# `python -m codeformer_core` as a terminal starts it: SIGINT raises KeyboardInterrupt. A process
# started in the background by a non-interactive shell (as CI runners may start pytest) ignores
# SIGINT, and its children inherit that, so the driver would never see the test's Ctrl-C.
AS_IN_A_TERMINAL = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                    "sys.argv[0] = 'codeformer'; runpy.run_module('codeformer_core', run_name='__main__')")


def test_ctrl_c_keeps_the_manifest_and_skip_existing_resumes(ray_cluster, models_dir, tmp_path):
    """A driver in a subprocess joins the module's cluster (--ray-address); file c.png is held in
    its worker; after the other two are in the manifest the driver gets SIGINT."""
    address, hooks = ray_cluster
    src = tmp_path / "in"
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        write(src / name, gradient(40, 40 + 8 * i, i))
    out = tmp_path / "out"
    manifest = out / cluster.MANIFEST_NAME
    argv = ["restore", str(src), "-o", str(out), "-s", "1", *NO_FACES, "--models", str(models_dir), *DETECTOR_ARGS,
            "--ray", "--workers", "2"]
    hold = hooks / "hold.c.png"
    hold.touch()
    try:
        p = subprocess.Popen([sys.executable, "-c", AS_IN_A_TERMINAL, *argv, "--ray-address", address], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        while not (manifest.exists() and len(manifest.read_text().splitlines()) >= 2):
            assert p.poll() is None and time.monotonic() - t0 < 240, p.communicate()
            time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == cli.EXIT_INTERRUPTED, stderr
        assert "interrupted" in stderr and "--skip-existing" in stderr
        first = rows(manifest)  # every line is whole JSON
        assert sorted(Path(r["input"]).name for r in first) == ["a.png", "b.png"]
        assert all(r["status"] == "ok" for r in first)
        assert not (out / "c.png").exists()
    finally:
        hold.unlink(missing_ok=True)
    rc, stdout, err = main(*argv, "--skip-existing")
    assert rc == cli.EXIT_OK, err
    assert "1 file done, 2 skipped" in stdout
    final = {}
    for r in rows(manifest):
        final[Path(r["input"]).name] = r["status"]
    assert final == {"a.png": "skipped", "b.png": "skipped", "c.png": "ok"}
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
        ["a.png", "b.png", "c.png", cluster.MANIFEST_NAME]
