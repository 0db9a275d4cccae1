"""Rebuild this folder from the full golden set (shared/golden, FACE_NETS.md).

Kept small for the repository: RetinaFace raw outputs every 3rd prior row (final detections
complete), ParseNet logits / image only on the stored 74x74 grid, inputs as lossless PNG.
Values are copied unchanged (float32). Usage: python make_face_golden.py /path/to/golden
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).parent
RAW_STRIDE = 3


def main(golden: Path) -> None:
    for name in ("retinaface_manifest_resnet50.json", "retinaface_manifest_mobile0.25.json",
                 "parsenet_manifest_parsenet.json"):
        shutil.copyfile(golden / name, HERE / name)
    priors = np.load(golden / "retinaface_priors.npz")
    np.savez_compressed(HERE / "retinaface_priors.npz", **{k: priors[k] for k in priors.files})
    for net in ("resnet50", "mobile0.25"):
        src = np.load(golden / f"retinaface_{net}.npz")
        out = {"conf_threshold": src["conf_threshold"], "nms_threshold": src["nms_threshold"],
               "raw_stride": np.int64(RAW_STRIDE)}
        for case in ("full", "crop"):
            for part in ("loc", "conf", "landms"):
                out[f"{case}_{part}"] = src[f"{case}_{part}"][::RAW_STRIDE]
            out[f"{case}_dets"] = src[f"{case}_dets"]
            out[f"{case}_dets_prior_index"] = src[f"{case}_dets_prior_index"]
        np.savez_compressed(HERE / f"retinaface_{net}.npz", **out)
    parse = np.load(golden / "parsenet_logits.npz")
    np.savez_compressed(HERE / "parsenet.npz", grid=parse["grid"], logits_f32_grid=parse["logits_f32_grid"],
                        out_img_f32_grid=parse["out_img_f32_grid"], labels=parse["labels"],
                        ambiguous_flat_idx=parse["ambiguous_flat_idx"])
    Image.fromarray(parse["x_bgr"][:, :, ::-1]).save(HERE / "parsenet_input_rgb.png", optimize=True)
    from skimage import data  # the detector input (the golden set does not store it)
    Image.fromarray(data.astronaut()).save(HERE / "astronaut_rgb.png", optimize=True)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/golden"))
