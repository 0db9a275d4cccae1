"""Temporal code consistency benchmark: flicker, lag, dropouts and cuts for temporal = 0, 1, 2, 3.

    python -m codeformer_core.dev.bench_temporal [--frames 12] [--quick] [--switch-cost 1.0] [--fusion]
    python -m codeformer_core.dev.bench_temporal --pipeline [--frames 8]

Synthetic weights (``dev.synthetic``), so the "faces" it restores are not faces: the figures are
about stability, not looks. Clips, made here from the astronaut's face (skimage) as aligned
512 crops, each frame quantised to 8 bits after +-2 levels of uniform noise:

* static: a near-static face, 0.05 px/frame sub-pixel drift;
* moving: the face moving steadily, 1 px/frame to the right inside the crop (a worst case: in
  the pipeline the crop follows the face); decoded at w = 0.5, where the fusion features carry
  the input's sub-pixel position (at w = 0 the output is a mosaic of code patches on a fixed grid);
* dropout: detections along a path with the face missed in two middle frames;
* cut: the static face, then another face (mirrored, colours permuted) at the same place.

Figures per ``temporal`` (sigma in frames; 0 = today's per-frame argmax):

* codes/tok/frame: fraction of the 256 tokens whose code changes from one frame to the next;
* flicker: mean |out_t - out_t-1| inside the face (a central ellipse) over the input's;
* lag: on the moving clip, input position minus restored position (px along the motion; the
  restored position is the phase-correlation shift of each output frame to the first one);
* unrestored: frames inside a track where the face is not restored (dropout clip; filled gaps);
* crossed cut: whether a track or a code choice reaches over the cut (the codes after the cut
  are compared with those computed from the second shot alone).

The encoder and Transformer run once per frame; only the decoding depends on ``temporal``
(frames whose codes equal another setting's reuse its output). ``--fusion`` adds w = 0.5
(fusion features of each frame's own input) on the static clip too. A CodeFormer decode takes
several seconds per face on a small CPU: ``--quick`` uses 8 frames.

``--pipeline``: the lag through the real path instead. A 256x256 frame with the astronaut moving
steadily 1 px/frame to the right through the frame; synthetic RetinaFace-R50 at threshold 0.7,
``pipeline.detect_clip`` (scene cuts, tracks, filled dropouts, landmarks smoothed with sigma 2),
``restore_images`` at temporal 0 and 2 (w = 0.5, pasted back). Lag: the input's position minus
the output's (phase correlation of each frame to the first, inside the first frame's face box
grown by the motion), px along the motion; "added" is temporal 2's minus temporal 0's.
"""
from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace

import numpy as np
import torch

from ..faces.detect import Detections
from ..faces.temporal import DEFAULT_SWITCH_COST, DEFAULT_TEMPORAL, temporal_codes
from ..faces.tracks import SceneCuts, track_detections
from ..models.registry import architecture, contract
from .synthetic import synth_state_dict

TEMPORALS = (0.0, 1.0, 2.0, 3.0)
POINTS = torch.tensor([[-20.0, -15.0], [20.0, -15.0], [0.0, 5.0], [-16.0, 25.0], [16.0, 25.0]])


def face_image() -> np.ndarray:
    import cv2
    from skimage import data
    face = data.astronaut()[10:290, 130:410]
    return cv2.resize(face, (512, 512), interpolation=cv2.INTER_CUBIC).astype(np.float64)


def make_clip(image: np.ndarray, frames: int, speed: float, seed: int) -> np.ndarray:
    """[T,512,512,3] uint8: ``image`` shifted ``speed * t`` px right (bilinear), +-2 levels noise."""
    import cv2
    g = np.random.default_rng(seed)
    out = []
    for t in range(frames):
        m = np.float64([[1, 0, speed * t], [0, 1, 0]])
        moved = cv2.warpAffine(image, m, (512, 512), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        out.append(np.clip(np.round(moved + g.uniform(-2, 2, moved.shape)), 0, 255).astype(np.uint8))
    return np.stack(out)


def to_model(clip: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 127.5 - 1


def face_mask() -> np.ndarray:
    y, x = np.mgrid[:512, :512]
    return ((x - 256) / 170.0) ** 2 + ((y - 270) / 210.0) ** 2 <= 1


def flicker(frames: np.ndarray, mask: np.ndarray) -> float:
    """Mean |frame t - frame t-1| inside ``mask`` (frames [T,H,W,3] float 0..1)."""
    return float(np.abs(np.diff(frames, axis=0))[:, mask].mean())


def positions(frames: np.ndarray) -> np.ndarray:
    """[T] x shift of each frame to the first (phase correlation, sub-pixel), px."""
    import cv2
    gray = frames.mean(-1).astype(np.float32)
    win = cv2.createHanningWindow((512, 512), cv2.CV_32F)
    return np.array([cv2.phaseCorrelate(gray[0], g, win)[0][0] for g in gray])


def code_changes(codes: torch.Tensor) -> float:
    return float((codes[1:] != codes[:-1]).float().mean()) if len(codes) > 1 else 0.0


class Decoder:
    """Decodes (clip, frame, codes) once; identical requests reuse the output."""

    def __init__(self, model):
        self.model, self.cache, self.count, self.seconds = model, {}, 0, 0.0

    def __call__(self, key, enc, codes: torch.Tensor) -> np.ndarray:
        out = []
        for i in range(len(codes)):
            k = (key, i, codes[i].numpy().tobytes())
            if k not in self.cache:
                t0 = time.perf_counter()
                y = self.model.decode_faces(enc.take([i]), codes[i:i + 1])
                self.seconds += time.perf_counter() - t0
                self.count += 1
                self.cache[k] = ((y[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
            out.append(self.cache[k])
        return np.stack(out)


def encode(model, x: torch.Tensor, w: float):
    parts = [model.encode_faces(x[i:i + 2], w=w) for i in range(0, len(x), 2)]
    return type(parts[0]).cat(parts)


def without_fusion(enc):
    return replace(enc, taps={}, w=torch.zeros_like(enc.w), fuse=False)


def dropout_and_cut(frames: int, cut_logits, switch_cost: float, temporal: float) -> dict:
    """Unrestored frames in the dropout clip, and whether anything crosses the cut."""
    path = [(f, 200.0 + 3.0 * f, 240.0) for f in range(frames)]
    missed = {frames // 2 - 1, frames // 2}
    centres = torch.tensor([[x, y] for f, x, y in path if f not in missed])
    dets = Detections(torch.cat([centres - 50, centres + 50], 1), torch.ones(len(centres)),
                      centres[:, None] + POINTS, torch.tensor([f for f, _, _ in path if f not in missed]),
                      frames, (480, 640))
    tracked = track_detections(dets)
    covered = set(tracked.frame_index.tolist())
    unrestored = sum(1 for f in range(frames) if f not in covered)
    # the cut clip: SceneCuts on the frames, one detection per frame at the same place
    clip_frames, logits = cut_logits
    detector = SceneCuts()      # one detector, chunks of 4 frames: its state carries over
    cuts = torch.cat([detector(to_model(clip_frames[i:i + 4]) / 2 + 0.5) for i in range(0, len(clip_frames), 4)])
    n = len(clip_frames)
    same = torch.tensor([[256.0, 270.0]]).expand(n, 2)
    cut_dets = Detections(torch.cat([same - 100, same + 100], 1), torch.ones(n), same[:, None] + POINTS,
                          torch.arange(n), n, (512, 512))
    tracked = track_detections(cut_dets, cuts=cuts)
    at = n // 2
    track_crosses = bool(set(tracked.track[:at].tolist()) & set(tracked.track[at:].tolist()))
    codes = temporal_codes(logits, tracked.frame_index, tracked.track, temporal, switch_cost)
    alone = temporal_codes(logits[at:], torch.arange(n - at), torch.zeros(n - at, dtype=torch.int64), temporal,
                           switch_cost)
    return {"unrestored": unrestored, "unrestored_before": len(missed),
            "cut_found": torch.nonzero(cuts).flatten().tolist(),
            "crossed": track_crosses or not torch.equal(codes[at:], alone)}


def pipeline_lag(frames: int) -> None:
    """The lag of temporal codes through detection, tracking, smoothing, restoration and paste-back."""
    import cv2
    from .. import pipeline
    from ..models.loader import load_model
    from ..faces.detect import load_detector
    from .golden import face_state_dict
    weights = synth_state_dict(contract(architecture("codeformer", "restoration")).items())
    model = load_model({"params_ema": weights}, device="cpu")
    detector = load_detector(face_state_dict("retinaface_manifest_resnet50.json"), device="cpu")
    from skimage import data
    base = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA).astype(np.float64)
    g = np.random.default_rng(3)
    clip = []
    for t in range(frames):
        m = np.float64([[1, 0, 1.0 * t - frames / 2], [0, 1, 0]])
        moved = cv2.warpAffine(base, m, (256, 256), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        clip.append(np.clip(np.round(moved + g.uniform(-2, 2, moved.shape)), 0, 255).astype(np.uint8))
    clip = np.stack(clip)
    t0 = time.perf_counter()
    found = pipeline.detect_clip([clip], detector, 2.0, conf_threshold=0.7, selection="largest")
    print(f"detected {len(found)} faces in {frames} frames ({int(found.interpolated.sum())} filled), tracks "
          f"{sorted(set(found.track.tolist()))}, {time.perf_counter() - t0:.1f} s")
    x1, y1, x2, y2 = found.boxes[0].tolist()
    x1, x2 = max(0, int(x1) - 4), min(256, int(x2) + frames + 4)
    y1, y2 = max(0, int(y1) - 4), min(256, int(y2) + 4)
    size = (min(x2 - x1, y2 - y1) // 2) * 2

    def where(images: np.ndarray) -> np.ndarray:
        gray = images[:, y1:y1 + size, x1:x1 + size].mean(-1).astype(np.float32)
        win = cv2.createHanningWindow((size, size), cv2.CV_32F)
        return np.array([cv2.phaseCorrelate(gray[0], f, win)[0][0] for f in gray])
    truth = where(clip.astype(np.float64) / 255)
    lags = {}
    for temporal in (0.0, 2.0):
        t0 = time.perf_counter()
        res = pipeline.restore_images(clip, model, None, w=0.5, detections=found, temporal=temporal)
        pos = where(res.images.numpy())
        lags[temporal] = float(np.mean(np.abs(truth - pos)))
        print(f"  temporal {temporal:g}: restored position minus input's per frame {np.round(pos - truth, 2).tolist()}"
              f"; mean |lag| {lags[temporal]:.3f} px ({time.perf_counter() - t0:.0f} s)")
    print(f"  lag added by temporal 2: {lags[2.0] - lags[0.0]:+.3f} px (input moves {frames - 1} px in all)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--quick", action="store_true", help="8 frames")
    ap.add_argument("--switch-cost", type=float, default=DEFAULT_SWITCH_COST)
    ap.add_argument("--fusion", action="store_true", help="also w = 0.5 on the static clip")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--pipeline", action="store_true", help="the lag through detection, tracking and paste-back")
    args = ap.parse_args(argv)
    frames = 8 if args.quick else args.frames
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pipeline:
        print(f"bench_temporal --pipeline: {frames} frames 256x256, the face moving 1 px/frame, synthetic weights")
        return pipeline_lag(frames)
    from ..models.loader import load_model
    weights = synth_state_dict(contract(architecture("codeformer", "restoration")).items())
    model = load_model({"params_ema": weights}, device="cpu")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if platform.system() == "Linux" else platform.processor()
    print(f"bench_temporal: {frames} frames, synthetic weights, switch cost {args.switch_cost}, "
          f"{cpu}, {torch.get_num_threads()} threads")
    image = face_image()
    other = np.ascontiguousarray(image[:, ::-1, [2, 0, 1]])
    clips = {"static": make_clip(image, frames, 0.05, 0), "moving": make_clip(image, frames, 1.0, 1)}
    t0 = time.perf_counter()
    enc = {name: encode(model, to_model(c), 0.5 if (args.fusion or name == "moving") else 0.0)
           for name, c in clips.items()}
    half = frames // 2
    cut_clip = np.concatenate([clips["static"][:half], make_clip(other, frames - half, 0.05, 2)])
    cut_logits = torch.cat([enc["static"].logits[:half], encode(model, to_model(cut_clip[half:]), 0.0).logits])
    print(f"encoder + Transformer: {time.perf_counter() - t0:.0f} s for {2 * frames + frames - half} faces")
    track0 = torch.zeros(frames, dtype=torch.int64)
    fidx = torch.arange(frames)
    mask = face_mask()
    inputs = {k: c.astype(np.float64) / 255 for k, c in clips.items()}
    decode = Decoder(model)

    # switch cost sweep (codes only: no decoding)
    print(f"\ncode changes per token per frame at temporal {DEFAULT_TEMPORAL:g}, by switch cost "
          f"(static | moving; moving: tokens differing from temporal 0)")
    for cost in (0.0, 0.25, 0.5, 1.0, 2.0):
        s = temporal_codes(enc["static"].logits, fidx, track0, DEFAULT_TEMPORAL, cost)
        m = temporal_codes(enc["moving"].logits, fidx, track0, DEFAULT_TEMPORAL, cost)
        m0 = enc["moving"].logits.argmax(-1)
        print(f"  cost {cost:4.2f}: {code_changes(s):6.2%} | {code_changes(m):6.2%} "
              f"(differ {float((m != m0).float().mean()):6.2%})")

    print(f"\nmoving clip: decoded at w = 0.5 (at w = 0 the output is a mosaic of codebook patches on a fixed "
          f"grid, which has no sub-pixel position); input's own lag by the same measure: "
          f"{float(np.mean(1.0 * np.arange(frames) - positions(inputs['moving']))):+.3f} px")
    print("temporal | codes/tok/frame static  moving | flicker static  moving | lag px (added) | "
          "unrestored | cut found | crossed cut")
    lag0 = None
    in_flicker = {k: flicker(v, mask) for k, v in inputs.items()}
    truth = 1.0 * np.arange(frames)
    results = {}
    for temporal in TEMPORALS:
        row = {}
        for name in clips:
            codes = temporal_codes(enc[name].logits, fidx, track0, temporal, args.switch_cost)
            out = decode(name, without_fusion(enc["static"]) if name == "static" else enc[name], codes)
            row[name] = (code_changes(codes), flicker(out, mask) / in_flicker[name])
            if name == "moving":
                lag = float(np.mean(truth - positions(out)))
                lag0 = lag if lag0 is None else lag0
                row["lag"] = (lag, lag - lag0)
        extra = dropout_and_cut(frames, (cut_clip, cut_logits), args.switch_cost, temporal)
        results[temporal] = row
        print(f"  {temporal:6g} | {row['static'][0]:21.2%} {row['moving'][0]:7.2%} | "
              f"{row['static'][1]:14.2f}x {row['moving'][1]:6.2f}x | {row['lag'][0]:6.2f} ({row['lag'][1]:+.2f}) | "
              f"{extra['unrestored']:10d} | {str(extra['cut_found']):9s} | {'yes' if extra['crossed'] else 'no'}")
    print(f"  (input flicker inside the face: static {in_flicker['static']:.4f}, moving {in_flicker['moving']:.4f}; "
          f"dropout: {extra['unrestored_before']} frames unrestored without filling)")
    base, best = results[0.0]["static"], results[DEFAULT_TEMPORAL]["static"]
    print(f"  at temporal {DEFAULT_TEMPORAL:g}: code changes {base[0] / max(best[0], 1e-9):.1f}x fewer, "
          f"flicker {base[1] / best[1]:.2f}x lower than temporal 0 (static clip)")

    if args.fusion:
        print("\nfusion features (w = 0.5, each frame's own encoder taps), static clip")
        for temporal in (0.0, DEFAULT_TEMPORAL):
            codes = temporal_codes(enc["static"].logits, fidx, track0, temporal, args.switch_cost)
            out = decode("static-w0.5", enc["static"], codes)
            print(f"  temporal {temporal:g}: flicker {flicker(out, mask) / in_flicker['static']:.2f}x the input's")
    print(f"\n{decode.count} decodes, {decode.seconds / max(decode.count, 1):.1f} s each")


if __name__ == "__main__":
    main()
