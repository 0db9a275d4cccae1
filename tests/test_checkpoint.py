"""Strict, safe loading: what the loader accepts, what it refuses and how it says so."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from codeformer_core import CheckpointError, convert_to_safetensors, detect_variant, load_model, read_state_dict
from codeformer_core.models.checkpoint import save_safetensors
from codeformer_core.models.codeformer import VARIANTS, CodeFormerOptions
from codeformer_core.models.registry import FAMILIES, architecture, contract, detect, first_non_finite, load_network
from codeformer_core.dev.synthetic import synth_state_dict

from helpers import DATA


def expected_shapes(variant):
    """Key -> shape of a published file, from the golden manifest (not from the code under test)."""
    manifest = json.loads((DATA / "golden" / f"manifest_{variant}.json").read_text())
    return {name: tuple(shape) for name, shape, _ in manifest}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_contract_is_the_published_manifest(variant):
    """The registry's one key -> shape table equals the published files', key order included."""
    got = contract(architecture("codeformer", variant))
    assert list(got.items()) == list(expected_shapes(variant).items())
    got.clear()  # a copy: the registry's table is not changed
    assert len(contract(architecture("codeformer", variant))) == len(expected_shapes(variant))


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="unknown architecture codeformer/upscaling"):
        architecture("codeformer", "upscaling")


def meta_state_dict(variant):
    """Right keys and shapes without allocating 94M values (detection only reads shapes)."""
    return {k: torch.empty(s, device="meta") for k, s in expected_shapes(variant).items()}


@pytest.fixture(scope="module")
def restoration_sd():
    return synth_state_dict(expected_shapes("restoration").items())


@pytest.fixture(scope="module")
def official_file(tmp_path_factory, restoration_sd):
    """A full-size file in the official format: torch.save({'params_ema': state_dict})."""
    path = tmp_path_factory.mktemp("weights") / "codeformer.pth"
    torch.save({"params_ema": restoration_sd}, path)
    return path


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_detected_from_keys_and_shapes(variant):
    assert detect_variant(meta_state_dict(variant)) == variant


def test_one_missing_key():
    sd = meta_state_dict("restoration")
    del sd["ft_layers.3.linear1.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing: ft_layers.3.linear1.bias\. The file may be damaged"):
        detect_variant(sd)


def test_one_extra_key():
    sd = meta_state_dict("colorization")
    sd["generator.blocks.99.weight"] = torch.empty(3, device="meta")
    with pytest.raises(CheckpointError, match=r"closest is CodeFormer \(colorization\) but 1 unexpected: "
                                              r"generator.blocks.99.weight"):
        detect_variant(sd)


def test_one_wrong_shape():
    sd = meta_state_dict("inpainting")
    sd["feat_emb.weight"] = torch.empty(512, 128, device="meta")
    with pytest.raises(CheckpointError, match=r"feat_emb.weight is \[512, 128\], expected \[512, 256\]"):
        detect_variant(sd)


def test_official_file_loads_with_variant(official_file, restoration_sd):
    model = load_model(official_file)
    assert model.variant == "restoration" and not model.training
    got = model.state_dict()
    assert all(torch.equal(got[k], restoration_sd[k]) for k in restoration_sd)


def test_numpy_state_dict_is_accepted():
    import numpy as np
    sd = {"params_ema": {k: np.zeros(tuple(s), np.float32) for k, s in expected_shapes("inpainting").items()}}
    assert detect_variant(read_state_dict(sd)) == "inpainting"


@pytest.mark.parametrize("nesting", ["params", "bare"])
def test_other_nestings(restoration_sd, nesting):
    obj = restoration_sd if nesting == "bare" else {nesting: restoration_sd}
    assert read_state_dict(obj).keys() == restoration_sd.keys()


def test_safetensors_round_trip(official_file, restoration_sd, tmp_path):
    dest = convert_to_safetensors(official_file, tmp_path / "cf.safetensors")
    back = read_state_dict(dest)
    assert back.keys() == restoration_sd.keys()
    assert all(torch.equal(back[k], restoration_sd[k]) for k in restoration_sd)
    half = convert_to_safetensors(official_file, tmp_path / "cf16.safetensors", fp16=True)
    assert half.stat().st_size < dest.stat().st_size * 0.6
    model = load_model(half)  # loads back as float32, values rounded through fp16
    assert model.variant == "restoration"
    k = "encoder.blocks.1.conv1.weight"
    assert torch.equal(model.state_dict()[k], restoration_sd[k].half().float())


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("name,obj,expect", [
    ("gfpgan.pth", {"params_ema": {"conv_body_first.weight": torch.zeros(2, 3, 3, 3),
                                   "stylegan_decoder.style_mlp.1.weight": torch.zeros(4, 4)}}, "GFPGAN"),
    ("RealESRGAN_x2plus.pth", {"params_ema": {"conv_first.weight": torch.zeros(64, 12, 3, 3),
                                              "body.0.rdb1.conv1.weight": torch.zeros(32, 64, 3, 3)}}, "Real-ESRGAN"),
    ("detection_Resnet50_Final.pth", {"body.conv1.weight": torch.zeros(64, 3, 7, 7),
                                      "ClassHead.0.conv1x1.weight": torch.zeros(4, 256, 1, 1)}, "RetinaFace"),
    ("notes.pth", {"epoch": 3, "lr": 0.1}, "holds no tensors"),
])
def test_other_models_are_named(tmp_path, name, obj, expect):
    path = _save(tmp_path / name, obj)
    with pytest.raises(CheckpointError, match=expect) as err:
        load_model(path)
    assert "expected" in str(err.value)


def test_truncated_file(tmp_path):
    path = _save(tmp_path / "codeformer.pth", {"params_ema": {"quantize.embedding.weight": torch.zeros(1024, 256)}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_model(path)


def test_empty_and_garbage_files(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_model(tmp_path / "empty.pth")
    (tmp_path / "page.pth").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(CheckpointError, match="neither a PyTorch checkpoint nor a safetensors"):
        load_model(tmp_path / "page.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pth")


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = _save(tmp_path / "codeformer.pth", {"params_ema": {"x": _RunsCode(marker)}})
    with pytest.raises(CheckpointError, match="refused: it contains Python objects") as err:
        load_model(path)
    assert "would run code" in str(err.value)
    assert not marker.exists(), "the pickle's payload ran"


def test_nan_weights_are_refused(restoration_sd):
    sd = dict(restoration_sd)
    sd["feat_emb.bias"] = torch.full_like(sd["feat_emb.bias"], float("nan"))
    with pytest.raises(CheckpointError, match="NaN"):
        load_model(sd)


def test_wrapper_prefix_and_nesting_are_removed_once_for_every_network(restoration_sd):
    wrapped = {"state_dict": {f"module.{k}": v for k, v in restoration_sd.items()}}
    assert read_state_dict(wrapped).keys() == restoration_sd.keys()
    assert load_model(wrapped).variant == "restoration"


def test_same_weight_with_and_without_prefix_is_refused():
    with pytest.raises(CheckpointError, match="'module.a' and 'a': the same weight twice"):
        read_state_dict({"module.a": torch.zeros(1), "a": torch.zeros(1)})


def test_nan_message_names_the_file_the_network_and_the_tensor(official_file, restoration_sd, tmp_path):
    sd = dict(restoration_sd)
    sd["generator.blocks.3.conv2.weight"] = sd["generator.blocks.3.conv2.weight"].clone()
    sd["generator.blocks.3.conv2.weight"][1, 2, 0, 0] = -float("inf")  # one value of 2.4M
    path = tmp_path / "damaged.safetensors"
    save_safetensors(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    for part in (str(path), "CodeFormer (restoration)", "NaN or infinite", "generator.blocks.3.conv2.weight",
                 "download it again"):
        assert part in str(err.value)


def test_finiteness_screen_has_no_false_alarm_and_misses_nothing():
    big = torch.full((3_000_000,), 100.0, dtype=torch.float16)  # finite, but its 2-norm (1.7e5) overflows float16
    sd = {"a": torch.zeros(4), "big": big, "count": torch.zeros((), dtype=torch.int64), "empty": torch.zeros(0)}
    assert first_non_finite(sd) is None
    for bad in (float("nan"), float("inf"), -float("inf")):
        for key in ("a", "big"):
            broken = dict(sd, **{key: sd[key].clone()})
            broken[key][-1] = bad
            assert first_non_finite(broken) == key


def test_loading_without_a_kind_detects_any_network_and_names_foreign_files():
    sd = {k: torch.empty(s, device="meta") for k, s in expected_shapes("colorization").items()}
    assert detect(sd).key == ("codeformer", "colorization")
    gfpgan = {"stylegan_decoder.style_mlp.1.weight": torch.zeros(4, 4)}
    with pytest.raises(CheckpointError, match="not a network this pack loads: it looks like a GFPGAN checkpoint; "
                                              "expected codeformer.pth.*detection_Resnet50_Final.pth"
                                              ".*parsing_parsenet"):
        load_network(gfpgan)
    with pytest.raises(CheckpointError, match="not a CodeFormer checkpoint: it looks like a BiSeNet face parser"):
        load_network({"cp.resnet.conv1.weight": torch.zeros(1)}, "codeformer")
    with pytest.raises(ValueError, match="unknown network kind 'gfpgan'"):
        load_network(gfpgan, "gfpgan")


def test_one_family_table_names_what_it_cannot_load():
    loadable = {f.kind for f in FAMILIES if f.architectures}
    assert loadable == {"codeformer", "retinaface", "parsenet"}
    assert sum(len(f.architectures) for f in FAMILIES) == 6
    for family in FAMILIES:
        assert family.looks_like.startswith(("a ", "an "))
        assert not family.architectures or (family.noun and family.expected)


def test_options_belong_to_the_instance(restoration_sd):
    naive = CodeFormerOptions(use_sdpa=False, fold_upsample=False)
    a, b = load_model(restoration_sd, options=naive), load_model(restoration_sd)
    assert a.options == naive and b.options == CodeFormerOptions()
    assert not a.generator.blocks[2].use_sdpa and b.generator.blocks[2].use_sdpa
    assert not a.ft_layers[0].self_attn.use_sdpa and b.ft_layers[0].self_attn.use_sdpa
    assert not a.generator.blocks[8].fold and b.generator.blocks[8].fold
