"""Command line on images and folders, the background upsampler, and the ``weights`` commands.

Offline: synthetic weights in a temporary models_dir folder, a local HTTP server on 127.0.0.1 for
downloads. A CodeFormer forward costs ~10 s on a shared CPU, so only two tests run the
network (aligned path, whole-image path); the others make detection find nothing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from helpers import DETECTOR_ARGS, NO_FACES, aligned_face, astronaut, run_cli
from codeformer_core import cli
from codeformer_core.weights import registry as weights
from codeformer_core.io.images import read_image
from helpers import closed_port_url, serve


pytestmark = pytest.mark.usefixtures("cached_model_loading")


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]) if rgb.ndim == 3 and rgb.shape[2] == 3 else rgb)
    return path


# ----------------------------------------------------------------------------- help / usage
def test_module_help_subprocess():
    r = subprocess.run([sys.executable, "-m", "codeformer_core", "--help"], capture_output=True, text=True,
                       cwd=Path(__file__).parent.parent, timeout=120)
    assert r.returncode == 0, r.stderr
    for word in ("restore", "colorize", "inpaint", "weights", "exit codes", "partial failure"):
        assert word in r.stdout


HELP_IMPORTS = """
import sys
from codeformer_core.cli import main
for argv in (["--help"], ["restore", "--help"], ["weights", "export", "--help"]):
    assert main(argv) == 0
print(sorted(m for m in ("torch", "cv2", "numpy") if m in sys.modules))
"""


def test_help_does_not_import_torch():
    """--help answers at once: neither torch nor OpenCV is imported to print it."""
    r = subprocess.run([sys.executable, "-c", HELP_IMPORTS], capture_output=True, text=True,
                       cwd=Path(__file__).parent.parent, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "torch" not in r.stdout.splitlines()[-1] and "cv2" not in r.stdout.splitlines()[-1], r.stdout[-300:]


def test_restore_help_lists_options(capsys):
    rc, out, _ = run(capsys, "restore", "--help")
    assert rc == 0
    for opt in ("--fidelity", "--upscale", "--has-aligned", "--only-center-face", "--draw-box", "--detector",
                "--bg-upsampler", "--bg-tile", "--face-upsample", "--suffix", "--output", "--fps",
                "--batch-size", "--device", "--dtype", "--models", "--parse"):
        assert opt in out


def test_usage_errors_are_one_line(capsys, tmp_path, models_dir):
    rc, _, err = run(capsys, "restore", tmp_path / "nope.png", "--models", models_dir)
    assert rc == cli.EXIT_ERROR and err.strip().count("\n") == 0 and "no such file" in err
    assert "Traceback" not in err
    rc, _, err = run(capsys, "restore", "--no-such-option", "x.png")
    assert rc == cli.EXIT_USAGE
    (tmp_path / "a.txt").write_text("x")
    rc, _, err = run(capsys, "restore", tmp_path / "a.txt")
    assert rc == cli.EXIT_ERROR and "not a supported" in err
    rc, _, err = run(capsys, "restore", tmp_path / "a.txt", "--face-upsample")
    assert rc == cli.EXIT_ERROR and "--bg-upsampler" in err


# ----------------------------------------------------------------------------- the network paths
@pytest.fixture(scope="module")
def aligned_run(models_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("aligned")
    src = write_rgb(d / "face.png", aligned_face(128))
    not_quiet = [a for a in DETECTOR_ARGS if a != "-q"]  # keep the info lines (the precision chosen)
    rc, _, err = run_cli("restore", src, "--has-aligned", "-s", "2", "-w", "0.7", "--models", models_dir, *not_quiet)
    return rc, src, d / "face_restored.png", err


def test_auto_precision_on_cpu_is_bf16_only_where_native(aligned_run):
    """--dtype auto (the default): CodeFormer in bf16 on a CPU with native bf16 (the codes are those
    of float32: tests/test_precision.py), else float32. The CPU flags are read here independently."""
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    native = bool({"avx512_bf16", "amx_bf16"} & set(flags.split(":", 1)[1].split()))
    loading = next(line for line in aligned_run[3].splitlines() if line.startswith("loading codeformer"))
    assert loading.endswith("(bfloat16)" if native else "(float32)"), loading


def test_threads_option_sets_the_command_threads(models_dir, tmp_path):
    src = write_rgb(tmp_path / "face.png", aligned_face(64))
    rc, _, err = run_cli("restore", src, "--threads", "0", "--models", models_dir, *DETECTOR_ARGS)
    assert rc == cli.EXIT_ERROR and "--threads 0" in err
    rc, _, err = run_cli("restore", src, "--threads", "2", "--ray", "--models", models_dir, *DETECTOR_ARGS)
    assert rc == cli.EXIT_ERROR and "--cpus-per-worker" in err
    before = torch.get_num_threads()
    try:
        rc, _, err = run_cli("restore", src, "--has-aligned", "--threads", str(before + 1), "--models", models_dir,
                             *DETECTOR_ARGS)
        assert rc == 0, err
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)


def test_aligned_face_restored(aligned_run):
    rc, src, dest, _ = aligned_run
    assert rc == 0 and dest.is_file()
    out = read_image(dest)
    assert out.rgb.shape == (256, 256, 3) and out.bit_depth == 8
    # The synthetic network changes the face: output is not just the resized input.
    ref = cv2.resize(cv2.imread(str(src))[..., ::-1], (256, 256), interpolation=cv2.INTER_CUBIC)
    assert np.abs(out.rgb.astype(int) - ref.astype(int)).mean() > 1


def _tiny_rrdb(path: Path, nf: int = 8, nb: int = 1, gc: int = 32) -> Path:
    """RealESRGAN_x2plus-style RRDBNet (pixel-unshuffle input, new-arch keys), random weights."""
    g = torch.Generator().manual_seed(0)
    sd = {}

    def conv(name, cout, cin):
        sd[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.02
        sd[f"{name}.bias"] = torch.zeros(cout)

    conv("conv_first", nf, 3 * 4)
    for b in range(nb):
        for r in (1, 2, 3):
            for i in range(1, 6):
                conv(f"body.{b}.rdb{r}.conv{i}", nf if i == 5 else gc, nf + (i - 1) * gc)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        conv(name, nf, nf)
    conv("conv_last", 3, nf)
    torch.save({"params_ema": sd}, path)
    return path


@pytest.fixture(scope="module")
def rrdb_file(tmp_path_factory):
    return _tiny_rrdb(tmp_path_factory.mktemp("up") / "RealESRGAN_x2plus.pth")


@pytest.fixture(scope="module")
def whole_run(models_dir, rrdb_file, tmp_path_factory):
    """Whole image: detect (low threshold, centre face), restore, face + background upsample."""
    d = tmp_path_factory.mktemp("whole")
    src = write_rgb(d / "astronaut.jpg", astronaut((256, 256)))
    argv = ["restore", str(src), "-o", str(d / "out"), "-s", "2", "--only-center-face", "--draw-box",
            "--detection-threshold", "0.3", "--bg-upsampler", str(rrdb_file), "--face-upsample",
            "--bg-tile", "96", "--models", str(models_dir), *DETECTOR_ARGS]
    import io
    from contextlib import redirect_stdout
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli.main(argv)
    return rc, d / "out" / "astronaut_restored.jpg", buf.getvalue()


def test_whole_image_restored(whole_run):
    rc, dest, stdout = whole_run
    assert rc == 0, stdout
    assert dest.is_file()
    out = read_image(dest)
    assert out.rgb.shape == (512, 512, 3)
    assert "1 faces found" in stdout and "0 of 1 frames with no face" in stdout
    # --draw-box: pure green pixels exist (JPEG: nearly pure)
    g = out.rgb.astype(int)
    assert ((g[..., 1] > 200) & (g[..., 0] < 60) & (g[..., 2] < 60)).sum() > 20


def test_spandrel_upscaler_tiles_match_whole(rrdb_file):
    from codeformer_core.io.upscale import load_upscaler
    # A tile pad wider than the network's receptive field: each tile then sees what the whole-image
    # run sees, so every tile must equal the whole image's output at its place (float noise only).
    up_tiled = load_upscaler(rrdb_file, "cpu", tile=24, tile_pad=40)
    up_whole = load_upscaler(rrdb_file, "cpu", tile=0)
    assert up_tiled.scale == 2
    x = torch.rand(1, 3, 72, 96, generator=torch.Generator().manual_seed(0))
    a, b = up_tiled(x), up_whole(x)
    assert a.shape == (1, 3, 144, 192) and b.shape == a.shape
    for y0 in range(0, 72, 24):
        for x0 in range(0, 96, 24):
            at = (..., slice(2 * y0, 2 * y0 + 48), slice(2 * x0, 2 * x0 + 48))
            scale = float(b[at].abs().max())  # the random network's output is of order 1e-4
            assert scale > 0, f"tile {y0},{x0}: the whole-image output is empty there"
            err = float((a[at] - b[at]).abs().max())
            assert err <= 1e-4 * scale, f"tile {y0},{x0}: max |tiled - whole| {err:.3g} vs output {scale:.3g}"


def test_bad_upscaler_file_is_one_line_error(capsys, tmp_path, models_dir):
    bad = tmp_path / "up.pth"
    torch.save({"foo.weight": torch.zeros(2)}, bad)
    src = write_rgb(tmp_path / "a.png", astronaut((64, 64)))
    rc, _, err = run(capsys, "restore", src, "--bg-upsampler", bad, "--models", models_dir, *DETECTOR_ARGS)
    assert rc == cli.EXIT_ERROR and "spandrel" in err and "Traceback" not in err


def test_upscaler_without_spandrel_says_what_to_install(capsys, tmp_path, models_dir, rrdb_file, monkeypatch):
    from codeformer_core.errors import MissingDependencyError
    from codeformer_core.io.upscale import load_upscaler
    monkeypatch.setitem(sys.modules, "spandrel", None)   # import spandrel -> ImportError
    with pytest.raises(MissingDependencyError) as ei:
        load_upscaler(rrdb_file, "cpu")
    assert ei.value.package == "spandrel" and "pip install spandrel" in str(ei.value)
    src = write_rgb(tmp_path / "a.png", astronaut((64, 64)))
    rc, _, err = run(capsys, "restore", src, "--bg-upsampler", rrdb_file, "--models", models_dir, *DETECTOR_ARGS)
    assert rc == cli.EXIT_ERROR and "--bg-upsampler needs spandrel: pip install spandrel" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_wrong_variant_names_the_command_to_use(capsys, tmp_path, models_dir):
    src = write_rgb(tmp_path / "a.png", astronaut((64, 64)))
    ckpt = models_dir / "facerestore_models" / "codeformer.pth"       # a restoration checkpoint
    rc, _, err = run(capsys, "colorize", src, "--model", ckpt, "--models", models_dir, *DETECTOR_ARGS)
    assert rc == cli.EXIT_ERROR and err.count("\n") == 1 and "Traceback" not in err
    assert "'codeformer colorize' needs the colorization model" in err
    assert "codeformer.pth is the restoration variant; use 'codeformer restore'" in err


# ----------------------------------------------------------------------------- folders
@pytest.fixture(scope="module")
def folder_run(models_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    src = d / "in"
    src.mkdir()
    img = astronaut((80, 96))  # cv2 size is (w, h): 96 rows x 80 columns
    cv2.imwrite(str(src / "gray.png"), cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
    rgba = np.dstack([img[..., ::-1], np.linspace(0, 255, 80, dtype=np.uint8)[None].repeat(96, 0)])
    cv2.imwrite(str(src / "rgba.png"), rgba)
    cv2.imwrite(str(src / "deep.png"), img[..., ::-1].astype(np.uint16) * 257)
    cv2.imwrite(str(src / "photo.jpg"), img[..., ::-1])
    (src / "broken.png").write_bytes(b"this is not a png")
    (src / "notes.txt").write_text("not an image")
    out = d / "out"
    import io
    from contextlib import redirect_stderr, redirect_stdout
    o, e = io.StringIO(), io.StringIO()
    with redirect_stdout(o), redirect_stderr(e):
        rc = cli.main(["restore", str(src), "-o", str(out), "-s", "1.5", *NO_FACES, "--models", str(models_dir),
                       *DETECTOR_ARGS])
    return rc, src, out, o.getvalue(), e.getvalue()


def test_folder_bad_file_reported_not_fatal(folder_run):
    rc, _, out, stdout, stderr = folder_run
    assert rc == cli.EXIT_PARTIAL
    assert "broken.png: failed" in stderr and "not a readable image" in stderr
    assert "notes.txt: skipped" in stderr
    assert "Traceback" not in stderr
    assert "4 files done, 1 failed, 1 skipped" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["deep.png", "gray.png", "photo.jpg", "rgba.png"]


def test_folder_outputs_keep_format(folder_run):
    _, _, out, _, _ = folder_run
    gray, rgba, deep, jpg = (read_image(out / n) for n in ("gray.png", "rgba.png", "deep.png", "photo.jpg"))
    for im in (gray, rgba, deep, jpg):
        assert im.size == (144, 120)  # 96x80 * 1.5
    assert gray.gray
    assert rgba.alpha is not None and rgba.alpha[:, -1].mean() > 200 and rgba.alpha[:, 0].mean() < 50
    assert deep.bit_depth == 16 and deep.rgb.shape == (144, 120, 3)
    assert jpg.alpha is None and jpg.bit_depth == 8


def test_skip_existing_and_all_failed(capsys, folder_run, models_dir, tmp_path):
    _, src, out, _, _ = folder_run
    rc, stdout, _ = run(capsys, "restore", src, "-o", out, "--skip-existing", "--models", models_dir, *DETECTOR_ARGS)
    assert rc == cli.EXIT_ERROR  # only broken.png was attempted, and it failed
    assert "0 files done, 1 failed, 5 skipped" in stdout


def test_missing_weight_offline_names_url_and_path(capsys, tmp_path, monkeypatch):
    entries = {n: dataclasses.replace(e, urls=(closed_port_url(e.file),)) for n, e in weights.known_weights().items()}
    monkeypatch.setattr(weights, "known_weights", lambda: dict(entries))
    src = write_rgb(tmp_path / "a.png", astronaut((64, 64)))
    rc, _, err = run(capsys, "restore", src, "--models", tmp_path / "empty", "-q")
    lines = [line for line in err.splitlines() if line.startswith("codeformer: error")]
    assert rc == cli.EXIT_ERROR and len(lines) == 1
    assert entries["codeformer"].url in lines[0]
    assert str(tmp_path / "empty" / "facerestore_models" / "codeformer.pth") in lines[0]
    rc, _, err = run(capsys, "restore", src, "--models", tmp_path / "empty", "-q", "--no-download")
    assert rc == cli.EXIT_ERROR and "not found" in err and entries["codeformer"].url in err


# ----------------------------------------------------------------------------- weights commands
PAYLOAD = b"codeformer-test-payload" * 1000
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)


@pytest.fixture(scope="module")
def server():
    with serve(_Handler, hits=[]) as srv:
        yield srv


@pytest.fixture
def local_registry(monkeypatch, server):
    entries = {n: dataclasses.replace(e, urls=(f"{server.base}/{e.file}",), sha256=None, size=None)
               for n, e in weights.known_weights().items()}
    entries["codeformer_inpainting"] = dataclasses.replace(entries["codeformer_inpainting"], sha256=PAYLOAD_SHA,
                                                           size=len(PAYLOAD))
    monkeypatch.setattr(weights, "known_weights", lambda: dict(entries))
    monkeypatch.delenv(weights.ENV_MODELS_DIR, raising=False)
    return entries


def test_weights_list_download_verify(capsys, local_registry, server, tmp_path, monkeypatch):
    monkeypatch.setenv(weights.ENV_MODELS_DIR, str(tmp_path))  # env var is honoured without --models_dir
    rc, out, _ = run(capsys, "weights", "list")
    assert rc == 0 and f"models folder: {tmp_path}" in out
    assert "codeformer_inpainting" in out and "missing" in out
    rc, out, err = run(capsys, "weights", "download", "codeformer_inpainting")
    dest = tmp_path / "facerestore_models" / "codeformer_inpainting.pth"
    assert rc == 0, err
    assert dest.read_bytes() == PAYLOAD and "sha256 ok" in out
    assert not list(dest.parent.glob("*.part*"))
    rc, out, _ = run(capsys, "weights", "list")
    line = next(row for row in out.splitlines() if row.startswith("codeformer_inpainting"))
    assert "present" in line
    hits = len(server.hits)
    rc, out, _ = run(capsys, "weights", "download", "codeformer_inpainting")
    assert rc == 0 and "already present" in out and len(server.hits) == hits
    rc, out, _ = run(capsys, "weights", "verify")
    assert rc == 0 and "OK   " in out and "sha256 ok" in out
    dest.write_bytes(PAYLOAD[:-1] + b"X")  # same size, wrong content
    rc, out, _ = run(capsys, "weights", "verify", dest)
    assert rc == cli.EXIT_ERROR and "FAIL" in out and "sha256" in out
    rc, _, err = run(capsys, "weights", "download", "no_such_weight")
    assert rc == cli.EXIT_ERROR and "unknown weight" in err and "codeformer" in err


def test_weights_download_offline_is_one_line(capsys, tmp_path, monkeypatch):
    entries = {n: dataclasses.replace(e, urls=(closed_port_url(e.file),)) for n, e in weights.known_weights().items()}
    monkeypatch.setattr(weights, "known_weights", lambda: dict(entries))
    rc, _, err = run(capsys, "weights", "download", "parsenet", "--models", tmp_path)
    assert rc == cli.EXIT_ERROR and err.count("\n") == 1
    assert entries["parsenet"].url in err and str(tmp_path / "facedetection" / "parsing_parsenet.pth") in err


def test_weights_convert_round_trip(capsys, models_dir, tmp_path):
    from codeformer_core.models.checkpoint import read_state_dict
    from codeformer_core.models.loader import load_model
    src = models_dir / "facerestore_models" / "codeformer.pth"
    dest = tmp_path / "cf.safetensors"
    rc, out, err = run(capsys, "weights", "convert", src, "--to", "safetensors", "-o", dest)
    assert rc == 0, err
    a, b = read_state_dict(src), read_state_dict(dest)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_model(dest).variant == "restoration"
    rc, out, _ = run(capsys, "weights", "verify", dest)
    assert rc == 0 and "loads as CodeFormer (restoration)" in out
    rc, _, err = run(capsys, "weights", "convert", src, "--fp16", "-o", tmp_path / "h.safetensors")
    h = read_state_dict(tmp_path / "h.safetensors")
    assert rc == 0 and all(h[k].dtype == torch.float16 for k in h if a[k].is_floating_point())
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    rc, _, err = run(capsys, "weights", "convert", bad)
    assert rc == cli.EXIT_ERROR and "Traceback" not in err and err.count("\n") == 1


# ----------------------------------------------------------------------------- core errors, as the user sees them
def _nan_pixels(monkeypatch):
    """The file reader hands over float pixels with a NaN (no reader of ours makes them; a library
    caller's array can): the pipeline itself must refuse them."""
    from codeformer_core.io import images
    real = images.read_image

    def read(path):
        img = real(path)
        rgb = img.rgb.astype(np.float32) / 255
        rgb[1, 1, 1] = np.nan
        return dataclasses.replace(img, rgb=rgb)
    monkeypatch.setattr(images, "read_image", read)


def _pipeline_call(monkeypatch, change):
    """The CLI's own call of restore_images, with one argument changed as a library caller could."""
    from codeformer_core import pipeline
    real = pipeline.restore_images
    monkeypatch.setattr(pipeline, "restore_images", lambda images, model, detector, **kw:
                        real(*change(images, model, detector), **kw))


@pytest.mark.parametrize("setup, message", [
    (_nan_pixels, "image contains NaN or infinite values"),
    (lambda mp: _pipeline_call(mp, lambda i, m, d: (torch.rand(1, 8, 8, 5), m, d)),
     "expected 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA) channels, got 5"),
    (lambda mp: _pipeline_call(mp, lambda i, m, d: (i, m, None)), "a face detector is needed"),
])
def test_core_input_errors_are_reported_as_user_errors(tmp_path, models_dir, monkeypatch, setup, message):
    """A problem the user can fix, raised by the pipeline, is one line with its own message: not
    'unexpected error', no traceback."""
    src = write_rgb(tmp_path / "in.png", astronaut((48, 40)))
    setup(monkeypatch)
    rc, out, err = run_cli("restore", src, "-o", tmp_path / "out.png", *NO_FACES, "--models", models_dir,
                           *DETECTOR_ARGS)
    assert rc == cli.EXIT_ERROR
    assert "unexpected" not in err and "Traceback" not in err, err
    assert f"codeformer: error: {message}" in err, err
    assert not (tmp_path / "out.png").exists()
