#!/usr/bin/env python3
"""Run the all-in-one node in a real ComfyUI server on the GPU and check that VRAM is handed back.

    python tools/gpu_comfy.py --comfy-tgz ComfyUI-0.3.64.tar.gz --pack . --out comfy.json [--cpu]

Unpacks ComfyUI into a scratch folder, builds a throw-away base directory (custom_nodes/ holding a
link to the pack, models/ with synthetic weights written here: CodeFormer restoration, RetinaFace
ResNet-50 and ParseNet, golden formula), starts ``main.py`` on 127.0.0.1 with an empty front-end
folder (the front-end package is not needed for the HTTP API), queues

    LoadImage -> RepeatImageBatch(frames) -> CodeFormerRestoreFacesAllInOne -> SaveImage
    CodeFormerModelLoader(codeformer.pth, auto) / CodeFormerFaceDetectorLoader(R50 + ParseNet) -> it

and reads the server's VRAM figures (``/system_stats``: torch reserved / allocated) and nvidia-smi
before the run, after it, and after ComfyUI's ``/free`` (unload models, free memory). The server is
always stopped by its own process id. Writes a JSON report to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FACE = ROOT / "tests" / "data" / "face_golden"


def write_models(models: Path) -> None:
    """The three weight files the workflow names, from the golden synthetic formula (torch.save)."""
    import numpy as np
    import torch
    from codeformer_core.dev.synthetic import synth_state_dict
    from codeformer_core.models.registry import architecture, contract

    def save(sd, path: Path, nest: bool):
        path.parent.mkdir(parents=True, exist_ok=True)
        sd = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in sd.items()}
        torch.save({"params_ema": sd} if nest else sd, path)

    save(synth_state_dict(contract(architecture("codeformer", "restoration")).items()),
         models / "facerestore_models" / "codeformer.pth",
         nest=True)
    for file, manifest in (("detection_Resnet50_Final.pth", "retinaface_manifest_resnet50.json"),
                           ("parsing_parsenet.pth", "parsenet_manifest_parsenet.json")):
        save(synth_state_dict(json.loads((FACE / manifest).read_text()), face=True), models / "facedetection" / file,
             nest=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, comfy: Path, base: Path, log: Path, cpu: bool):
        self.comfy, self.base, self.log_path, self.cpu = comfy, base, log, cpu
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float) -> float:
        front = self.base / "empty_frontend"
        front.mkdir(exist_ok=True)
        cmd = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--front-end-root", str(front), "--disable-auto-launch",
               "--preview-method", "none", "--disable-api-nodes",
               "--database-url", "sqlite:///" + str(self.base / "comfyui.db")] + (["--cpu"] if self.cpu else [])
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   DO_NOT_TRACK="1")
        self.log_f = open(self.log_path, "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=self.comfy, env=env, stdin=subprocess.DEVNULL, stdout=self.log_f,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.proc.returncode} during start-up; "
                                   f"see {self.log_path}")
            try:
                self.get("/system_stats", timeout=2)
                return time.monotonic() - t0
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s; see {self.log_path}")
            time.sleep(0.5)

    def get(self, path, timeout=30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def post(self, path, data, timeout=30):
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
                return r.status, (json.loads(body) if body else None)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group (start_new_session)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def nvidia_smi_used():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
        return int(out[0]) if out else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def vram(server: Server) -> dict:
    stats = server.get("/system_stats")
    d = (stats.get("devices") or [{}])[0]
    mib = 2 ** 20
    reserved = d.get("torch_vram_total", 0)
    return {"device": d.get("name"), "torch_reserved_mib": reserved / mib,
            "torch_allocated_mib": (reserved - d.get("torch_vram_free", 0)) / mib,
            "vram_free_mib": d.get("vram_free", 0) / mib, "gpu_used_mib": nvidia_smi_used()}


def prompt(frames: int, selection: str, threshold: float) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
        "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": frames}},
        "3": {"class_type": "CodeFormerModelLoader", "inputs": {"model_name": "codeformer.pth", "dtype": "auto"}},
        "4": {"class_type": "CodeFormerFaceDetectorLoader",
              "inputs": {"detector_model": "detection_Resnet50_Final.pth", "parsing_model": "parsing_parsenet.pth"}},
        "5": {"class_type": "CodeFormerRestoreFacesAllInOne",
              "inputs": {"image": ["2", 0], "model": ["3", 0], "face_detector": ["4", 0], "w": 0.5,
                         "visibility": 1.0, "selection": selection, "threshold": threshold}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "codeformer_gpu"}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["5", 2]}},
    }


def wait_history(server: Server, prompt_id: str, timeout: float) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        h = server.get(f"/history/{prompt_id}")
        if h and prompt_id in h and h[prompt_id].get("status", {}).get("completed") is not None:
            entry = h[prompt_id]
            if entry["status"].get("status_str") in ("success", "error"):
                return entry
        time.sleep(0.5)
    raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfy-tgz", required=True)
    ap.add_argument("--pack", default=str(ROOT))
    ap.add_argument("--out", required=True)
    ap.add_argument("--log", default=None)
    ap.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--selection", default="all")
    ap.add_argument("--threshold", type=float, default=0.7, help="0.7 for synthetic detector weights")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--timeout", type=float, default=240)
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_comfy_"))
    report: dict = {"status": "error", "frames": args.frames, "vram": {}}
    server = None
    t_all = time.monotonic()
    try:
        with tarfile.open(args.comfy_tgz) as tf:
            top = tf.getnames()[0].split("/")[0]
            if not (work / top / "main.py").exists():
                tf.extractall(work)
        comfy = work / top
        base = work / "base"
        for sub in ("custom_nodes", "input", "output", "temp", "user", "models"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        link = base / "custom_nodes" / "comfyui_codeformer"
        if not link.exists():
            link.symlink_to(Path(args.pack).resolve(), target_is_directory=True)
        shutil.copy(FACE / "astronaut_rgb.png", base / "input" / "face.png")
        t0 = time.monotonic()
        write_models(base / "models")
        report["weights_s"] = round(time.monotonic() - t0, 1)
        server = Server(comfy, base, Path(args.log or work / "comfyui.log"), args.cpu)
        report["server_start_s"] = round(server.start(60 if not args.cpu else 180), 1)
        info = server.get("/object_info/CodeFormerRestoreFacesAllInOne")
        report["pack_loaded"] = bool(info)
        report["vram"]["before"] = vram(server)
        t0 = time.monotonic()
        code, resp = server.post("/prompt", {"prompt": prompt(args.frames, args.selection, args.threshold),
                                             "client_id": "gpu_check"})
        if code != 200:
            raise RuntimeError(f"/prompt refused the workflow ({code}): {json.dumps(resp)[:1500]}")
        entry = wait_history(server, resp["prompt_id"], args.timeout)
        report["run_s"] = round(time.monotonic() - t0, 2)
        msgs = entry["status"].get("messages", [])
        report["status"] = entry["status"].get("status_str")
        if report["status"] != "success":
            err = [m for m in msgs if m[0] == "execution_error"]
            report["error"] = json.dumps(err[0][1] if err else msgs)[:3000]
        images = entry.get("outputs", {}).get("6", {}).get("images", [])
        report["images_saved"] = len(images)
        stamps = {m[0]: m[1].get("timestamp") for m in msgs if isinstance(m[1], dict)}
        if stamps.get("execution_start") and (stamps.get("execution_success") or stamps.get("execution_error")):
            end = stamps.get("execution_success") or stamps["execution_error"]
            report["execution_ms"] = end - stamps["execution_start"]
        report["vram"]["after_run"] = vram(server)
        server.post("/free", {"unload_models": True, "free_memory": True})
        time.sleep(3)
        report["vram"]["after_free"] = vram(server)
        log_text = Path(server.log_path).read_text(errors="replace")
        text = entry.get("outputs", {}).get("7", {}).get("text", [])
        report["faces"] = int(text[0]) if text and str(text[0]).isdigit() else text
        report["log_tail"] = log_text[-2500:]
    except Exception as exc:  # report, never hang: the caller reads the JSON
        import traceback
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc()
        if server is not None and Path(server.log_path).exists():
            report["log_tail"] = Path(server.log_path).read_text(errors="replace")[-4000:]
    finally:
        if server is not None:
            server.stop()
        report["total_s"] = round(time.monotonic() - t_all, 1)
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(json.dumps({k: v for k, v in report.items() if k not in ("log_tail", "traceback")}, indent=1))
        if report.get("traceback"):
            print(report["traceback"])
    return 0 if report["status"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
