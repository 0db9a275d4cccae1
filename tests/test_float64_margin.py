"""Float32 code logits against a float64 run of the same network, on inputs outside the golden set.

The golden set pins one input per variant; this pins the float32 margin on 16 varied inputs
(noise, smooth gradients, the golden inputs perturbed, gray and masked faces, dark, bright and
saturated images). The reference is the same model converted to float64 (same synthetic
weights). Each variant's logits must stay within half the golden rule's logits tolerances
(README section 7: max 3e-4, mean 3e-5), per input, and no code may flip where the float64
top-2 gap is clear of the error.

A second test checks that the float64 logits path (``CodeFormerOptions.precise_logits``, on
in the model as loaded) earns its cost: without it the error is clearly larger.

Cost: only the logits path runs (encoder and transformer; the decoder cannot change a logit).
With the synthetic weights the three variants share their encoder weights (asserted below), so
the encoder runs once per precision for all 16 inputs, and each variant's own transformer and
head run on those features: the same arithmetic as each variant's forward, a third of the work.
"""
from __future__ import annotations

import pytest
import torch

from codeformer_core import load_model
from codeformer_core.models.codeformer import CodeFormer, CodeFormerOptions
from helpers import TOLERANCE, VARIANT_NAMES

N_INPUTS = 16
CHUNK = 2                               # batch per forward (float64 activations at 512 px are large)
MAX_ERR = TOLERANCE["logits"][0] / 2    # room to spare: half the golden rule
MEAN_ERR = TOLERANCE["logits"][1] / 2
CLEAR_GAP = 1e-3                        # a float64 top-2 gap this wide must keep its code


def varied_inputs(golden) -> torch.Tensor:
    """16 inputs [16,3,512,512] in [-1, 1], deterministic."""
    g = torch.Generator().manual_seed(23)
    face = torch.from_numpy(golden("restoration").x)
    gray = torch.from_numpy(golden("colorization").x)
    masked = torch.from_numpy(golden("inpainting").x)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 512), torch.linspace(-1, 1, 512), indexing="ij")
    radial = (1 - 2 * (xx ** 2 + yy ** 2).sqrt().clamp(max=1))
    waves = torch.sin(xx * 9.0) * torch.cos(yy * 5.0)
    checker = ((torch.arange(512)[:, None] // 8 + torch.arange(512)[None] // 8) % 2).float() * 2 - 1

    def noise(scale):
        return torch.randn(1, 3, 512, 512, generator=g) * scale

    xs = [
        torch.rand(1, 3, 512, 512, generator=g) * 2 - 1,                 # uniform noise
        noise(0.3).clamp(-1, 1),                                          # gaussian noise
        torch.stack([xx, yy, -xx]).unsqueeze(0),                          # linear gradients
        torch.stack([radial, waves, radial * waves]).unsqueeze(0),        # smooth patterns
        (face + noise(0.02)).clamp(-1, 1),                                # golden face perturbed
        (face + noise(0.1)).clamp(-1, 1),
        face.flip(-1).roll(17, dims=-2),                                  # moved
        -face,                                                            # inverted
        face * 0.1 - 0.9,                                                 # dark
        face * 0.1 + 0.9,                                                 # bright
        face.sign(),                                                      # saturated
        (face * 3).clamp(-1, 1),                                          # high contrast, clipped
        (gray + noise(0.02).mean(1, keepdim=True)).clamp(-1, 1),          # gray face (colorization)
        masked.flip(-1),                                                  # masked face (inpainting)
        checker.expand(1, 3, 512, 512).clone(),                           # hard edges
        torch.full((1, 3, 512, 512), -0.25) + noise(1e-3),                # nearly flat
    ]
    x = torch.cat(xs)
    assert x.shape[0] == N_INPUTS and bool(x.abs().le(1).all())
    return x


def float64_copy(model) -> CodeFormer:
    """The same network and weights, every parameter float64 (built on the meta device, then given
    float64 copies: no float32 intermediate copy of the whole model)."""
    with torch.device("meta"):
        copy = CodeFormer(model.variant, model.options)
    copy.load_state_dict({k: v.double() for k, v in model.state_dict().items()}, strict=True, assign=True)
    return copy.eval().requires_grad_(False)


def logits_of(model, feat: torch.Tensor) -> torch.Tensor:
    """The code logits of encoder features (the transformer and head of ``model``), in chunks."""
    with torch.inference_mode():
        return torch.cat([model.predict_codes(feat[i:i + CHUNK])[0].double() for i in range(0, feat.shape[0], CHUNK)])


def features_of(model, x: torch.Tensor, dtype) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model.encode(x[i:i + CHUNK].to(dtype), False)[0] for i in range(0, x.shape[0], CHUNK)])


@pytest.fixture(scope="module")
def shared_features(golden, synthetic_model):
    """Encoder features of the 16 inputs in float32 (the model as loaded) and in float64."""
    states = {v: synthetic_model(v).state_dict() for v in VARIANT_NAMES}
    for v in VARIANT_NAMES[1:]:
        assert all(torch.equal(t, states[v][k]) for k, t in states[VARIANT_NAMES[0]].items()
                   if k.startswith("encoder.")), "the variants' encoders differ: run each one"
    x = varied_inputs(golden)
    model32 = synthetic_model(VARIANT_NAMES[0])
    model64 = float64_copy(model32)
    feats = features_of(model32, x, torch.float32), features_of(model64, x, torch.float64)
    del model64
    return feats


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_float32_logits_match_a_float64_run(variant, synthetic_model, shared_features):
    feat32, feat64 = shared_features
    model32 = synthetic_model(variant)
    model64 = float64_copy(model32)
    assert model64.feat_emb.weight.dtype == torch.float64 and feat64.dtype == torch.float64
    got = logits_of(model32, feat32)
    want = logits_of(model64, feat64)
    err = (got - want).abs()
    per_max, per_mean = err.amax(dim=(1, 2)), err.mean(dim=(1, 2))
    top2 = want.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > CLEAR_GAP
    flips = int(((got.argmax(-1) != want.argmax(-1)) & clear).sum())
    print(f"\n{variant}: logits vs float64 over {N_INPUTS} inputs: max {float(per_max.max()):.2e} "
          f"(worst input {int(per_max.argmax())}), worst mean {float(per_mean.max()):.2e} "
          f"(input {int(per_mean.argmax())}), overall mean {float(err.mean()):.2e}, flipped clear codes {flips}")
    assert got.shape == (N_INPUTS, 256, model32.config.codebook_size)
    assert bool(torch.isfinite(got).all())
    assert float(per_max.max()) <= MAX_ERR, per_max.tolist()
    assert float(per_mean.max()) <= MEAN_ERR, per_mean.tolist()
    assert flips == 0


def test_the_float64_path_lowers_the_logits_error(golden, synthetic_model, shared_features):
    """Over the same 16 inputs, the float64 logits path's error against the float64 run is clearly
    below the plain float32 path's (measured on the restoration variant: overall mean 8.8e-6 ->
    7.4e-6, worst input's mean 1.32e-5 -> 1.06e-5)."""
    feat_on, feat64 = shared_features
    variant = VARIANT_NAMES[0]
    on = synthetic_model(variant)
    off = load_model({"params_ema": golden(variant).state_dict()}, device="cpu",
                     options=CodeFormerOptions(precise_logits=False))
    feat_off = features_of(off, varied_inputs(golden), torch.float32)
    assert feat_on.dtype == torch.float64 and feat_off.dtype == torch.float32   # each took its own path
    want = logits_of(float64_copy(on), feat64)
    err_on = (logits_of(on, feat_on) - want).abs()
    err_off = (logits_of(off, feat_off) - want).abs()
    print(f"\n{variant}: mean error on {float(err_on.mean()):.2e} off {float(err_off.mean()):.2e}; worst input's "
          f"mean on {float(err_on.mean(dim=(1, 2)).max()):.2e} off {float(err_off.mean(dim=(1, 2)).max()):.2e}")
    assert float(err_on.mean()) < 0.9 * float(err_off.mean())
    assert float(err_on.mean(dim=(1, 2)).max()) < 0.9 * float(err_off.mean(dim=(1, 2)).max())
