"""The fidelity weight w reaches the network, from the command line and from the nodes.

The other tests only see that the image changes. Here the same aligned 512x512 face goes through
``codeformer restore --has-aligned -w W`` and through the Restore Faces node at two w, and each
result is compared with the model called directly (float32, the same checkpoint) at both w: it
must equal the forward at its own w and differ from the forward at the other one. Cheap: one face,
synthetic weights, two direct forwards (one batch, per-sample w) shared by both paths.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from helpers import DETECTOR_ARGS, aligned_face, run_cli, run_node

pytestmark = pytest.mark.usefixtures("cached_model_loading")   # the CLI loads its checkpoint once

WS = (0.2, 0.9)
U8 = 1 / 255
DETECT = dict(threshold=0.7, selection="largest", sort_by="area", index=0, max_faces=0, resolution=640,
              smoothing=0.0)


@pytest.fixture(scope="module")
def face_u8():
    return np.ascontiguousarray(aligned_face(512))        # RGB uint8 512x512: already an aligned crop


@pytest.fixture(scope="module")
def direct(models_dir, face_u8):
    """The network itself at each w: ``model(x * 2 - 1, w)`` mapped back to 0..1, [2,512,512,3]."""
    from codeformer_core.models.loader import load_model
    model = load_model(models_dir / "facerestore_models" / "codeformer.pth", device="cpu", dtype="fp32")
    x = torch.from_numpy(face_u8).permute(2, 0, 1)[None].float().div(255).repeat(len(WS), 1, 1, 1)
    with torch.inference_mode():
        y = model(x * 2 - 1, w=torch.tensor(WS))
    out = ((y.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    # the premise: the two w give clearly different faces, far beyond 8-bit rounding
    assert float((out[0] - out[1]).abs().max()) > 20 * U8
    return out


def check_matches_its_own_w(got: torch.Tensor, direct: torch.Tensor, i: int, tol_max: float, tol_mean: float):
    own = (got - direct[i]).abs()
    other = (got - direct[1 - i]).abs()
    assert float(own.max()) <= tol_max and float(own.mean()) <= tol_mean, \
        f"w={WS[i]}: max {float(own.max()):.3g}, mean {float(own.mean()):.3g} from the direct forward"
    assert float(other.max()) > 10 * tol_max, f"w={WS[i]}: as close to the forward at w={WS[1 - i]}"


@pytest.mark.parametrize("i", range(len(WS)))
def test_cli_w_reaches_the_network(i, models_dir, tmp_path, face_u8, direct):
    src = tmp_path / "face.png"
    cv2.imwrite(str(src), face_u8[..., ::-1])
    rc, _, err = run_cli("restore", src, "--has-aligned", "-s", "1", "-w", str(WS[i]), "--dtype", "fp32",
                         "--models", models_dir, *DETECTOR_ARGS)
    assert rc == 0, err
    out = cv2.imread(str(tmp_path / "face_restored.png"), cv2.IMREAD_COLOR)[..., ::-1]
    assert out.shape == (512, 512, 3)
    got = torch.from_numpy(np.ascontiguousarray(out)).float() / 255
    check_matches_its_own_w(got, direct, i, tol_max=1.01 * U8, tol_mean=0.5 * U8)   # 8-bit file


@pytest.fixture(scope="module")
def node_faces(comfyui, astronaut_image, face_u8):
    """A FACES bundle from the Detect node, its crop replaced by the aligned face (Image To Crops)."""
    N = comfyui.N
    (detector,) = run_node(N["CodeFormerFaceDetectorLoader"], detector_model="detection_Resnet50_Final.pth",
                           parsing_model="none")
    faces, _, _, count = run_node(N["CodeFormerDetectFaces"], image=astronaut_image, face_detector=detector,
                                  **DETECT)
    assert count == 1
    crops = torch.from_numpy(face_u8).float().div(255)[None]
    (faces,) = run_node(N["CodeFormerImageToCrops"], faces=faces, crops=crops)
    return faces


@pytest.fixture(scope="module")
def node_model(comfyui):
    model, _ = run_node(comfyui.N["CodeFormerModelLoader"], model_name="codeformer.pth", dtype="fp32")
    return model


@pytest.mark.parametrize("i", range(len(WS)))
def test_node_w_reaches_the_network(i, comfyui, node_faces, node_model, direct):
    N, model = comfyui.N, node_model
    restored, crops = run_node(N["CodeFormerRestoreFaces"], model=model, faces=node_faces, w=WS[i])
    assert crops.shape == (1, 512, 512, 3)
    check_matches_its_own_w(crops[0].float(), direct, i, tol_max=1e-4, tol_mean=1e-5)   # same float32 path
