"""The model core against golden vectors of the original implementation (synthetic weights).

Each (variant, w) forward runs once and is shared by all assertions; errors are printed so
``pytest -s`` shows the figures quoted in the closing notes.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import VARIANT_NAMES, assert_close

CASES = [(v, w) for v, ws in {"restoration": (0.0, 0.5, 1.0), "colorization": (0.0, 0.5),
                              "inpainting": (1.0,)}.items() for w in ws]


class Captured:
    """Forward with hooks that keep lq_feat (encoder output) and quant_feat (decoder input)
    and count fusion-block calls, so one forward serves every comparison."""

    def __init__(self, model, x, w, adain=None):
        self.fuse_calls = 0
        hooks = [model.encoder.blocks[-1].register_forward_hook(lambda m, i, o: setattr(self, "lq_feat", o)),
                 model.generator.blocks[0].register_forward_pre_hook(lambda m, i: setattr(self, "quant_feat", i[0]))]
        hooks += [b.register_forward_hook(lambda *a: setattr(self, "fuse_calls", self.fuse_calls + 1))
                  for b in model.fuse_convs_dict.values()]
        try:
            self.out, self.logits, self.idx = model(torch.from_numpy(x), w=w, adain=adain, return_codes=True)
        finally:
            for h in hooks:
                h.remove()


@pytest.fixture(scope="module")
def forward(golden, synthetic_model):
    cache = {}

    def run(variant, w):
        if (variant, w) not in cache:
            g = golden(variant)
            # the golden set calls the restoration/colorization models with AdaIN, inpainting without
            cache[(variant, w)] = Captured(synthetic_model(variant), g.x, w, adain=variant != "inpainting")
        return cache[(variant, w)]
    return run


@pytest.mark.parametrize("variant,w", CASES)
def test_golden_single(variant, w, golden, forward):
    g, r = golden(variant), forward(variant, w)
    errs = {
        "lq_feat": assert_close("lq_feat", r.lq_feat, g.arrays["lq_feat"]),
        "logits": assert_close("logits", r.logits, g.arrays["logits"]),
        "quant_feat": assert_close("quant_feat", r.quant_feat, g.arrays["quant_feat"]),
        "out": assert_close("out", g.sample(r.out.numpy()), g.out(w)),
    }
    assert np.array_equal(r.idx.numpy(), g.arrays["idx"]), "code indices differ"
    assert r.logits.shape[-1] == synthetic_model_codebook(variant)
    print(f"\n{variant} w={w}: " + ", ".join(f"{k} max {a:.2e} mean {b:.2e}" for k, (a, b) in errs.items())
          + f", idx {int((r.idx.numpy() == g.arrays['idx']).sum())}/256")


def synthetic_model_codebook(variant):
    return 512 if variant == "inpainting" else 1024


def test_w_zero_skips_fusion(forward, golden):
    assert forward("restoration", 0.0).fuse_calls == 0
    assert forward("restoration", 0.5).fuse_calls == 4
    assert forward("colorization", 0.5).fuse_calls == 3


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_golden_in_a_batch_with_per_sample_w(variant, golden, synthetic_model, forward):
    """Item 0 of [x, flipped x] meets the golden rule; item 1 equals its own single run."""
    g, model = golden(variant), synthetic_model(variant)
    w0 = g.ws[0]
    w1 = 1.0 if w0 != 1.0 else 0.5
    x = torch.from_numpy(g.x)
    n = x.shape[0]  # 1 here; a full golden set may hold a batch
    batch = torch.cat([x, x.flip(-1)])
    adain = variant != "inpainting"
    out, logits, idx = model(batch, w=torch.tensor([w0] * n + [w1] * n), adain=adain, return_codes=True)
    assert_close("out", g.sample(out[:n].numpy()), g.out(w0))
    assert_close("logits", logits[:n], g.arrays["logits"])
    assert np.array_equal(idx[:n].numpy(), g.arrays["idx"])
    single = model(x.flip(-1), w=w1, adain=adain)
    # float32 noise only (kernels differ with the batch size): the golden rule's bound
    assert_close("out", out[n:], single)


def test_variant_defaults(synthetic_model):
    model = synthetic_model("inpainting")
    assert model.variant == "inpainting"
    assert (model.config.default_w, model.config.default_adain) == (1.0, False)
    assert synthetic_model("colorization").config.default_w == 0.0
    assert synthetic_model("restoration").config.default_w == 0.5


def test_bad_w_and_input_are_refused(synthetic_model):
    model = synthetic_model("restoration")
    x = torch.zeros(1, 3, 512, 512)
    with pytest.raises(ValueError, match="w must be in"):
        model(x, w=1.5)
    with pytest.raises(ValueError, match="w has 2 values"):
        model(x, w=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="expected input"):
        model(torch.zeros(1, 3, 256, 256))


def test_no_autograd_state(synthetic_model):
    model = synthetic_model("restoration")
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_channels_last_layout_meets_the_rule(golden, synthetic_model):
    """The channels-last path (its own GroupNorm, see codeformer.py) keeps float32 fidelity."""
    g, model = golden("restoration"), synthetic_model("restoration")
    model.set_memory_format(torch.channels_last)
    try:
        out, logits, idx = model(torch.from_numpy(g.x), w=0.5, adain=True, return_codes=True)
    finally:
        model.set_memory_format(torch.contiguous_format)
    assert_close("out", g.sample(out.numpy()), g.out(0.5))
    assert_close("logits", logits, g.arrays["logits"])
    assert np.array_equal(idx.numpy(), g.arrays["idx"])


def test_naive_options_instance_meets_the_rule(golden, synthetic_model):
    """The benchmark's naive baseline (explicit softmax attention, upsample-then-conv) is its own
    instance: it meets the rule too, and the shared model is unaffected."""
    from codeformer_core.models.codeformer import CodeFormerOptions
    from codeformer_core.models.loader import load_model
    g = golden("restoration")
    naive = load_model({"params_ema": g.state_dict()}, device="cpu",
                       options=CodeFormerOptions(use_sdpa=False, fold_upsample=False))
    out, logits, idx = naive(torch.from_numpy(g.x), w=0.5, adain=True, return_codes=True)
    assert_close("out", g.sample(out.numpy()), g.out(0.5))
    assert_close("logits", logits, g.arrays["logits"])
    assert np.array_equal(idx.numpy(), g.arrays["idx"])
    assert synthetic_model("restoration").options == CodeFormerOptions()
