"""The pack inside a real ComfyUI 0.3.64 server: headless, --cpu, on 127.0.0.1, with a temporary base
directory (the pack linked into its custom_nodes/) and a models folder of full-size synthetic weights
under the official file names. Every graph in workflows/ goes through the server's HTTP API as the
front end would send it.

Needs what `.ci/setup` prepares (.comfyui/ComfyUI-0.3.64 with its requirements in this venv) and the
shared tools beside the clone (../shared/tools: comfy_e2e.py drives the server, make_models_dir.py
writes the weights). The models folder (about 1.4 GB) is built once into the git-ignored
.comfyui/models and reused while complete. The server's /object_info is saved to
.comfyui/object_info.json (input for tools/make_workflows.py).

The synthetic detector scores a face at most ~0.77 and finds false faces below ~0.6, so this test's own
copy of each graph (never workflows/) sets the detection threshold to 0.7 and keeps the largest face.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from helpers import empty_outputs_prompt
from tools.make_workflows import build_all, dumps

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
COMFY = ROOT / ".comfyui" / "ComfyUI-0.3.64"
MODELS = ROOT / ".comfyui" / "models"
OBJECT_INFO_COPY = ROOT / ".comfyui" / "object_info.json"
TOOLS = ROOT.parent / "shared" / "tools"
PACK_NAME = "comfyui_codeformer"
WORKFLOW_TIMEOUT_S = 600   # a hang guard, not a speed check

NODE_IDS = ("CodeFormerModelLoader", "CodeFormerFaceDetectorLoader", "CodeFormerDetectFaces",
            "CodeFormerRestoreFaces", "CodeFormerColorizeFaces", "CodeFormerInpaintFaces", "CodeFormerPasteFaces",
            "CodeFormerCropsToImage", "CodeFormerImageToCrops", "CodeFormerRestoreFacesAllInOne",
            "CodeFormerRestoreFacesWithModel")
MODEL_FILES = ("facerestore_models/codeformer.pth", "facerestore_models/codeformer_colorization.pth",
               "facerestore_models/codeformer_inpainting.pth", "facedetection/detection_Resnet50_Final.pth",
               "facedetection/detection_mobilenet0.25_Final.pth", "facedetection/parsing_parsenet.pth",
               "upscale_models/RealESRGAN_x2plus.pth")

# The test's settings for synthetic weights (its own copies of the graphs only).
TEST_SETTINGS = {"CodeFormerDetectFaces": {"threshold": 0.7, "selection": "largest"},
                 "CodeFormerRestoreFacesAllInOne": {"threshold": 0.7, "selection": "largest"}}
NEEDS_CHECKPOINT = {"txt2img_fix_faces"}        # validated only: no diffusion checkpoint here
CROP = 512                                       # CodeFormer's face crop size
# Expected size of every output node's file, by node title: "input" = the graph's input image,
# "input x2" = twice that, CROP = one face crop, "clip" = the test clip's frame size.
EXPECTED = {
    "restore_faces_simple": {"Save Image": "input"},
    "restore_faces_modular": {"Save Image": "input", "Detected crops": CROP, "Restored crops": CROP,
                              "Paste mask": "input"},
    "colorize_old_photo": {"Save Image": "input", "Colorized crops": CROP},
    "inpaint_masked_face": {"Save Image": "input", "Inpainted crops": CROP},
    "restore_then_upscale": {"Save Image": "input x2"},
    "restore_video_frames": {"Save Video": "clip"},
    "restore_faces_gfpgan": {"Save Image": "input", "Restored crops": CROP},
    "restore_keep_original_eyes": {"Save Image": "input"},
    "restore_faces_onnx": {"Save Image": "input", "Restored crops": CROP},   # GPEN-BFR-512: 512 px crops
}
# The face-model graph's file: a random-weight GFPGAN built from spandrel's architecture (issue 10).
FACE_MODEL_FILE = "upscale_models/GFPGANv1.4.pth"
# The ONNX graph's file (issue 21): a small GPEN-BFR-512-shaped file (tests/helpers.face_model_proto: it
# inverts the crop), so ONNX Runtime runs inside the server.
ONNX_FACE_MODEL_FILE = "facerestore_models/GPEN-BFR-512.onnx"
# The test clip: a few frames of the astronaut, moving, with a 440 Hz tone.
CLIP = SimpleNamespace(name="astronaut_tone.mp4", frames=4, fps=8, rate=44100, size=256)
WORKFLOW_NAMES = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
# Extra runs: the modular graph unchanged, as a user gets it (at the default threshold the synthetic
# detector finds no face), and the video graph on tests/data's clip, which has no sound.
AS_SHIPPED = "restore_faces_modular@shipped"
SILENT = "restore_video_frames@silent"
EMPTY = "empty_outputs"        # issue 14: every output that can be empty into the core preview / save nodes
SILENT_CLIP = "astronaut_clip.mp4"
# The inpainting graph's input: the test writes its own astronaut_masked.png (over tests/data's copy,
# whose hole lies outside the face the synthetic detector finds), with the hole (alpha 0, which
# LoadImage turns into mask 1) inside that face's 512 px crop: the crop covers about 33x33 pixels
# around (117, 109) of the 256x256 astronaut, its landmarks being close together.
MASKED = "astronaut_masked.png"
HOLE = (slice(104, 115), slice(112, 124))   # rows, columns


def _shared_tool(name: str) -> Path:
    path = TOOLS / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: the real-server test needs the shared tools checked out beside "
                    f"the repository (../shared/tools: comfy_e2e.py, make_models_dir.py)", pytrace=False)
    return path


def _comfy_e2e():
    _shared_tool("comfy_e2e.py")
    sys.path.insert(0, str(TOOLS))
    try:
        import comfy_e2e
    finally:
        sys.path.remove(str(TOOLS))
    return comfy_e2e


def _models_complete() -> bool:
    marker = MODELS / ".complete.json"
    if not marker.is_file():
        return False
    sizes = json.loads(marker.read_text())
    return all((MODELS / f).is_file() and (MODELS / f).stat().st_size == sizes.get(f) for f in MODEL_FILES)


def build_models_dir() -> float | None:
    """Writes .comfyui/models once (into a side folder, renamed when complete, under a lock so two test
    runs do not race). Returns the build time in seconds, or None when a complete folder was reused."""
    tool = _shared_tool("make_models_dir.py")
    MODELS.parent.mkdir(parents=True, exist_ok=True)
    with open(MODELS.parent / "models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _models_complete():
            return None
        partial = MODELS.with_name("models.partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(MODELS, ignore_errors=True)
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, str(tool), str(partial)], capture_output=True, text=True, timeout=1200)
        missing = [f for f in MODEL_FILES if not (partial / f).is_file()]
        if r.returncode or missing:
            pytest.fail(f"{tool} failed (exit {r.returncode}; missing {missing}; the upscaler needs spandrel in "
                        f"this venv):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}", pytrace=False)
        (partial / ".complete.json").write_text(json.dumps({f: (partial / f).stat().st_size for f in MODEL_FILES}))
        partial.rename(MODELS)
        return time.monotonic() - t0


def add_face_model() -> None:
    """Writes FACE_MODEL_FILE (float16, about 175 MB) and ONNX_FACE_MODEL_FILE (a few kB) into
    .comfyui/models once (under the models lock)."""
    from codeformer_core.dev.face_models import random_gfpgan, write_model
    with open(MODELS.parent / "models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (MODELS / FACE_MODEL_FILE).is_file():
            partial = write_model(random_gfpgan(), MODELS / (FACE_MODEL_FILE + ".partial.pth"), half=True)
            partial.rename(MODELS / FACE_MODEL_FILE)
        if not (MODELS / ONNX_FACE_MODEL_FILE).is_file():
            from helpers import face_model_proto, write_onnx
            partial = write_onnx(face_model_proto(512), MODELS / (ONNX_FACE_MODEL_FILE + ".partial"))
            partial.rename(MODELS / ONNX_FACE_MODEL_FILE)


def make_masked_input(path: Path) -> None:
    """tests/data/astronaut.png as RGBA with a transparent HOLE (LoadImage's mask: 1 there)."""
    rgba = np.asarray(Image.open(DATA / "astronaut.png").convert("RGBA")).copy()
    rgba[HOLE + (3,)] = 0
    Image.fromarray(rgba).save(path)


def make_clip(path: Path):
    """An H.264 + AAC clip: CLIP.frames frames of tests/data/astronaut.png sliding right, and a tone."""
    import av
    img = np.asarray(Image.open(DATA / "astronaut.png").convert("RGB").resize((CLIP.size, CLIP.size)))
    with av.open(str(path), "w") as out:
        vs = out.add_stream("h264", rate=CLIP.fps)
        vs.width = vs.height = CLIP.size
        vs.pix_fmt = "yuv420p"
        aus = out.add_stream("aac", rate=CLIP.rate, layout="mono")
        for i in range(CLIP.frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.roll(img, 3 * i, axis=1)), format="rgb24")
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        n = CLIP.rate * CLIP.frames // CLIP.fps
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / CLIP.rate)).astype(np.float32)
        af = av.AudioFrame.from_ndarray(tone[None, :], format="flt", layout="mono")
        af.sample_rate, af.pts = CLIP.rate, 0
        out.mux(aus.encode(af))
        out.mux(aus.encode(None))


def probe_video(path: Path) -> dict:
    """Frames, frame size and rate of the video stream; decoded seconds of the audio stream (if any)."""
    import av
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24").shape for f in c.decode(v)]
        rate = Fraction(v.average_rate) if v.average_rate else None
    info = {"frames": len(frames), "size": (frames[0][1], frames[0][0]) if frames else None, "fps": rate,
            "audio_seconds": None, "audio_peak": None}
    with av.open(str(path)) as c:
        if c.streams.audio:
            a = c.streams.audio[0]
            pcm = [f.to_ndarray().reshape(-1) for f in c.decode(a)]
            samples = sum(p.size for p in pcm) // max(1, a.channels)
            info["audio_seconds"] = samples / a.sample_rate
            info["audio_peak"] = float(max(np.abs(p).max() for p in pcm)) if pcm else 0.0
    return info


def adapt_for_synthetic_weights(api_prompt: dict, video=CLIP.name) -> list[str]:
    """Applies the synthetic-weight settings to the test's copy of a graph; returns what changed."""
    changed = []
    for node in api_prompt.values():
        for name, value in TEST_SETTINGS.get(node["class_type"], {}).items():
            node["inputs"][name] = value
            changed.append(f"{node['class_type']}.{name}={value}")
        if node["class_type"] == "LoadVideo":
            node["inputs"]["file"] = video
            changed.append(f"LoadVideo.file={video}")
    return sorted(set(changed))


@pytest.fixture(scope="module")
def server_run(request, tmp_path_factory):
    """Starts ComfyUI once, runs every workflow, always stops the server by pid; prints the summary."""
    if not (COMFY / "main.py").is_file():
        pytest.fail(f"no ComfyUI at {COMFY}: run `bash .ci/setup` first (it unpacks ComfyUI 0.3.64 there)",
                    pytrace=False)
    ce = _comfy_e2e()
    t_start = time.monotonic()
    models_build_s = build_models_dir()
    add_face_model()

    tmp = tmp_path_factory.mktemp("comfy_real")
    base = tmp / "base"
    dirs = {k: str(base / k) for k in ("input", "output", "temp", "user", "custom_nodes")}
    for d in dirs.values():
        os.makedirs(d)
    (base / "models").symlink_to(MODELS)
    (base / "custom_nodes" / PACK_NAME).symlink_to(ROOT)
    inputs, copies, artifacts = tmp / "inputs", tmp / "graphs", tmp / "artifacts"
    for d in (inputs, copies, artifacts):
        d.mkdir()
    for f in [*DATA.glob("*.png"), DATA / SILENT_CLIP]:
        shutil.copy2(f, inputs / f.name)
    make_clip(inputs / CLIP.name)
    make_masked_input(inputs / MASKED)

    log_path = tmp / "comfyui.log"
    server = ce.Server(str(COMFY), sys.executable, str(base), ce.free_port(), str(log_path), [], False)
    report = {"pack": str(ROOT), "server": {}, "workflows": [], "exit_code": 1}
    run = SimpleNamespace(report=report, object_info={}, records={}, changed={}, log="", pid=None,
                          models_build_s=models_build_s, inputs=inputs)

    def on_term(signum, frame):
        raise KeyboardInterrupt("SIGTERM")
    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        server.start(300)
        run.pid = server.proc.pid
        report["server"].update(startup_seconds=server.startup_s, pid=run.pid)
        stats = server.get("/system_stats").get("system", {})
        report["server"].update(comfyui_version=stats.get("comfyui_version"),
                                pytorch_version=stats.get("pytorch_version"))
        run.object_info = server.get("/object_info", timeout=120)
        OBJECT_INFO_COPY.write_text(json.dumps(run.object_info, indent=1))
        log_text = log_path.read_text(errors="replace")
        module_path = os.path.join(dirs["custom_nodes"], PACK_NAME)
        report["import"] = ce.parse_import(log_text, module_path, PACK_NAME)
        report["nodes"] = ce.describe_nodes(run.object_info, PACK_NAME)
        args = SimpleNamespace(inputs=str(inputs), timeout=WORKFLOW_TIMEOUT_S, artifacts=str(artifacts))
        for name in WORKFLOW_NAMES + [AS_SHIPPED, SILENT]:
            ui = json.loads((ROOT / "workflows" / f"{name.split('@')[0]}.json").read_text())
            prompt, warnings = ce.ui_to_api(ui, run.object_info)
            run.changed[name] = ([] if name == AS_SHIPPED else
                                 adapt_for_synthetic_weights(prompt, SILENT_CLIP if name == SILENT else CLIP.name))
            (copies / f"{name}.json").write_text(json.dumps(prompt, indent=1))
            rec = ce.run_workflow(server, str(copies / f"{name}.json"), run.object_info, dirs, args, PACK_NAME)
            rec["warnings"] = warnings + rec["warnings"]
            rec["workflow"] = name
            run.records[name] = rec
            report["workflows"].append(rec)
            if server.proc.poll() is not None:
                break
        if server.proc.poll() is None:   # the test's own graph (helpers.empty_outputs_prompt), not in workflows/
            (copies / f"{EMPTY}.json").write_text(json.dumps(empty_outputs_prompt(run.object_info)[0], indent=1))
            rec = ce.run_workflow(server, str(copies / f"{EMPTY}.json"), run.object_info, dirs, args, PACK_NAME)
            rec["workflow"] = EMPTY
            run.records[EMPTY] = rec
            report["workflows"].append(rec)
        imp = report["import"]
        ok = imp["found_in_summary"] and not imp["import_failed"] and len(run.records) == len(WORKFLOW_NAMES) + 3
        ok = ok and all(r["status"] == ("needs_checkpoint" if n in NEEDS_CHECKPOINT else "ok")
                        for n, r in run.records.items() if n != AS_SHIPPED)
        report["exit_code"] = 0 if ok else 1
    finally:
        report["server"]["exit_code"] = server.stop()
        signal.signal(signal.SIGTERM, old_term)
        run.log = log_path.read_text(errors="replace") if log_path.exists() else ""
        _print_summary(request, ce, run, time.monotonic() - t_start)
    return run


def _print_summary(request, ce, run, seconds):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ce.print_summary(run.report)
    lines = ["", "== real ComfyUI server (tests/test_real_server.py) =="]
    lines.append("models folder: " + ("reused " if run.models_build_s is None else
                                      f"built in {run.models_build_s:.1f}s ") + str(MODELS))
    lines += buf.getvalue().rstrip().splitlines()
    for name, changed in run.changed.items():
        lines.append(f"  test copy of {name}: {', '.join(changed) or 'as shipped'}")
    for o in run.records.get("restore_video_frames", {}).get("outputs") or []:
        if o.get("artifact", "").endswith(".mp4"):
            try:
                v, clip = probe_video(Path(o["artifact"])), probe_video(run.inputs / CLIP.name)
            except Exception as e:  # reported by the video test; the summary goes on
                lines.append(f"  video: unreadable ({e})")
                continue
            lines.append(f"  video: {v['frames']} frames of {v['size']} at {v['fps']} fps, audio "
                         f"{v['audio_seconds'] or 0:.3f}s (input: {clip['frames']} frames, audio "
                         f"{clip['audio_seconds'] or 0:.3f}s)")
    lines.append(f"real-server run: {seconds:.1f}s in all")
    if run.report.get("exit_code") and run.log:
        lines += ["server log (tail):"] + run.log[-3000:].splitlines()
    # Straight to the terminal, also under -q and for passing tests (what CI shows of the run).
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is None or capman is None:
        print("\n".join(lines))
        return
    with capman.global_and_fixture_disabled():
        tr.ensure_newline()
        for line in lines:
            tr.write_line(line)


def _record(run, name):
    rec = run.records.get(name)
    assert rec is not None, f"{name} was not run (the server stopped early?); see the summary above"
    return rec


def _error_text(rec) -> str:
    parts = [f"status {rec.get('status')}"]
    if rec.get("execution_error"):
        e = rec["execution_error"]
        parts.append(f"{e['exception_type']} in node {e['node_id']} ({e['node_type']}): {e['exception_message']}\n"
                     f"{e['traceback']}")
    parts += [f"{e['kind']}: node {e['node']} {e['class_type']}: {e['message']}: {e['details']}"
              for e in rec.get("validation_errors") or []]
    if rec.get("prompt_error"):
        parts.append(str(rec["prompt_error"]))
    if rec.get("error"):
        parts.append(str(rec["error"]))
    return "\n".join(parts)


# -- the server and the pack -------------------------------------------------------------------------
def test_server_started_and_was_stopped(server_run):
    assert server_run.report["server"].get("comfyui_version") == "0.3.64"
    pid = server_run.pid
    assert pid, "the server did not start; see the summary above"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_pack_imported(server_run):
    imp = server_run.report["import"]
    assert imp["found_in_summary"], "the pack is not in ComfyUI's custom-node import summary"
    assert not imp["import_failed"], f"IMPORT FAILED: {imp['error']}\n{imp['traceback']}"


def test_every_node_registered_with_tooltips(server_run):
    nodes = {n["class"]: n for n in server_run.report["nodes"]}
    assert sorted(nodes) == sorted(NODE_IDS)
    for name, n in nodes.items():
        assert n["has_description"], f"{name} has no description"
        visible = [i for i in n["inputs"] if i["section"] != "hidden"]
        untipped = [i["name"] for i in visible if not i["tooltip"]]
        assert visible and not untipped, f"{name}: inputs without a tooltip: {untipped}"


# -- the example graphs --------------------------------------------------------------------------------
def test_committed_graphs_are_what_the_generator_builds(server_run):
    built = build_all(server_run.object_info)
    assert sorted(built) == WORKFLOW_NAMES, "workflows/ and tools/make_workflows.py name different graphs"
    stale = [name for name, wf in built.items()
             if (ROOT / "workflows" / f"{name}.json").read_text() != dumps(wf)]
    assert not stale, (f"{stale} differ from what tools/make_workflows.py builds from this server's node "
                       f"definitions; regenerate: python tools/make_workflows.py --object-info {OBJECT_INFO_COPY}")


def test_shipped_graphs_use_node_defaults(server_run):
    """The pack's widgets in workflows/ carry the node defaults, except file choices, the video
    graph's temporal smoothing and temporal codes (video settings: 0 = off by default) and the
    keep-eyes graph's regions preset (what that graph shows)."""
    ce = _comfy_e2e()
    deliberate = {("restore_video_frames", "CodeFormerDetectFaces", "smoothing"),
                  ("restore_video_frames", "CodeFormerRestoreFaces", "temporal"),
                  ("restore_keep_original_eyes", "CodeFormerPasteFaces", "regions")}
    for name in WORKFLOW_NAMES:
        ui = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
        for node in ui["nodes"]:
            if node["type"] not in NODE_IDS:
                continue
            info = server_run.object_info[node["type"]]
            specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
            for key, value in ce.map_widget_values(info, node, []).items():
                default = specs[key][1].get("default")
                if key.endswith("_model") or key == "model_name" or (name, node["type"], key) in deliberate:
                    continue
                assert value == default, f"{name}: {node['type']}.{key} = {value!r}, the node default is {default!r}"


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_workflow_finished(server_run, name):
    rec = _record(server_run, name)
    assert not [w for w in rec.get("warnings", []) if "not registered" in w], rec["warnings"]
    if name in NEEDS_CHECKPOINT:
        errs = rec.get("validation_errors") or []
        assert rec["status"] == "needs_checkpoint", _error_text(rec)
        assert {e["class_type"] for e in errs} == {"CheckpointLoaderSimple"}, _error_text(rec)
        return
    assert rec["status"] == "ok", _error_text(rec)
    assert rec.get("pack_nodes_used"), "the graph uses no node of the pack"


def _input_size(prompt: dict) -> tuple:
    loads = [n["inputs"]["image"] for n in prompt.values() if n["class_type"] == "LoadImage"]
    assert len(loads) == 1
    with Image.open(DATA / loads[0]) as im:
        return im.size


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_outputs_have_the_expected_size(server_run, name):
    rec = _record(server_run, name)
    assert rec["status"] == "ok", _error_text(rec)
    prompt = rec["api_prompt"]
    titles = {nid: n["_meta"]["title"] for nid, n in prompt.items()}
    files = {}
    for o in rec["outputs"]:
        assert o["exists"], f"{o['path']} was reported but not written"
        files.setdefault(titles[str(o["node"])], []).append(Path(o["artifact"]))
    assert sorted(files) == sorted(EXPECTED[name]), f"outputs by node: {files}"
    for title, want in EXPECTED[name].items():
        assert len(files[title]) == 1, f"{title}: {files[title]}"
        path = files[title][0]
        if want == "clip":
            got = probe_video(path)["size"]
            want_size = (CLIP.size, CLIP.size)
        else:
            with Image.open(path) as im:
                got = im.size
            w, h = _input_size(prompt) if want in ("input", "input x2") else (want, want)
            want_size = (2 * w, 2 * h) if want == "input x2" else (w, h)
        assert got == want_size, f"{name} / {title}: {path.name} is {got}, expected {want_size}"


@pytest.mark.parametrize("name", ["restore_faces_simple", "restore_faces_modular", "colorize_old_photo",
                                  "restore_faces_gfpgan", "restore_faces_onnx"])
def test_a_face_was_restored(server_run, name):
    """A face was found and pasted back: the saved image is not the input (0 faces pass through)."""
    rec = _record(server_run, name)
    assert rec["status"] == "ok", _error_text(rec)
    saved = [o for o in rec["outputs"] if rec["api_prompt"][str(o["node"])]["class_type"] == "SaveImage"]
    loads = [n["inputs"]["image"] for n in rec["api_prompt"].values() if n["class_type"] == "LoadImage"]
    out = np.asarray(Image.open(saved[0]["artifact"]).convert("RGB"), np.int16)
    src = np.asarray(Image.open(DATA / loads[0]).convert("RGB"), np.int16)
    assert out.shape == src.shape
    assert np.abs(out - src).max() > 20, f"{name}: output equals the input; no face restored"


def test_inpainting_fills_the_hole(server_run):
    """The inpainting graph finds the face, fills the mask's hole (which lies inside the face's crop)
    and pastes it back: pixels in the hole changed; pixels far from the face are the input's."""
    rec = _record(server_run, "inpaint_masked_face")
    assert rec["status"] == "ok", _error_text(rec)
    saved = [o for o in rec["outputs"] if rec["api_prompt"][str(o["node"])]["class_type"] == "SaveImage"]
    out = np.asarray(Image.open(saved[0]["artifact"]).convert("RGB"), np.int16)
    src = np.asarray(Image.open(server_run.inputs / MASKED).convert("RGB"), np.int16)
    assert out.shape == src.shape
    assert np.abs(out[HOLE] - src[HOLE]).max() > 20, "the hole was not filled"
    assert np.array_equal(out[:40, :40], src[:40, :40]), "pixels far from the face changed"


def test_video_keeps_frames_rate_and_sound(server_run):
    rec = _record(server_run, "restore_video_frames")
    assert rec["status"] == "ok", _error_text(rec)
    clip = probe_video(server_run.inputs / CLIP.name)
    assert clip["frames"] == CLIP.frames and clip["audio_seconds"], f"the test clip itself is wrong: {clip}"
    videos = [Path(o["artifact"]) for o in rec["outputs"] if o["filename"].endswith(".mp4")]
    assert len(videos) == 1, rec["outputs"]
    got = probe_video(videos[0])
    assert got["frames"] == clip["frames"], f"{got['frames']} frames written for {clip['frames']} read"
    assert got["fps"] == clip["fps"], f"frame rate {got['fps']}, input {clip['fps']}"
    assert got["audio_seconds"] is not None, "the saved video has no audio stream"
    duration = CLIP.frames / CLIP.fps
    # AAC works in 1024-sample frames: allow two of them of padding.
    assert abs(got["audio_seconds"] - duration) <= 2 * 1024 / CLIP.rate, \
        f"audio lasts {got['audio_seconds']:.3f}s, the clip {duration:.3f}s"
    assert got["audio_peak"] > 0.1, "the audio stream is silent"


def test_shipped_graph_on_an_image_without_faces(server_run):
    """The modular graph as shipped (threshold 0.8: the synthetic detector finds nothing) finishes
    and saves the input unchanged."""
    rec = _record(server_run, AS_SHIPPED)
    assert rec["status"] == "ok", _error_text(rec)
    saved = [o for o in rec["outputs"] if rec["api_prompt"][str(o["node"])]["class_type"] == "SaveImage"]
    out = np.asarray(Image.open(saved[0]["artifact"]).convert("RGB"))
    src = np.asarray(Image.open(DATA / "astronaut.png").convert("RGB"))
    assert np.array_equal(out, src)


def test_empty_outputs_feed_preview_and_save(server_run):
    """No face found: every output that can be empty (crops of detect / restore / crops-to-image, the
    masks, paste and all-in-one images) goes into the core Preview Image / Save Image, and the prompt
    finishes with an image from each (the crops: a placeholder; the counts stay 0)."""
    rec = _record(server_run, EMPTY)
    assert rec["status"] == "ok", _error_text(rec)
    _, previews = empty_outputs_prompt(server_run.object_info)
    shown = {str(o["node"]) for o in rec["outputs"]}
    for what, nodes in previews.items():
        assert set(nodes) <= shown, f"{what}: no image from {sorted(set(nodes) - shown)}"


def test_video_without_sound(server_run):
    """The sound link does not break clips without sound: they come out silent, all frames kept."""
    rec = _record(server_run, SILENT)
    assert rec["status"] == "ok", _error_text(rec)
    clip = probe_video(DATA / SILENT_CLIP)
    videos = [Path(o["artifact"]) for o in rec["outputs"] if o["filename"].endswith(".mp4")]
    assert len(videos) == 1, rec["outputs"]
    got = probe_video(videos[0])
    assert clip["audio_seconds"] is None and got["audio_seconds"] is None
    assert got["frames"] == clip["frames"] and got["size"] == clip["size"]
