"""compressed-tensors export, checked by compressed-tensors itself and by transformers' loader."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anybit.errors import ExportError
from anybit.io import export_compressed_tensors
from anybit.io.compressed_tensors import pack_int32_rows
from anybit.models import tiny_model, tiny_tokenizer
from anybit.models.pipeline import quantize_model
from anybit.nn import QLinear
from anybit.recipe import Recipe

ct = pytest.importorskip("compressed_tensors")

CALIB = torch.randint(0, 256, (4, 48), generator=torch.Generator().manual_seed(0))
IDS = torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(1))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, use_cache=False).logits[0]


def _quantized(
    weights: str, acts: str | None = None, arch: str = "llama", **recipe: object
) -> torch.nn.Module:
    model = tiny_model(arch)
    quantize_model(model, Recipe(weights=weights, acts=acts, **recipe), CALIB, progress=False)  # type: ignore[arg-type]
    return model


def _decompressed(directory: Path) -> dict[str, torch.Tensor]:
    """Every quantized module's weight as compressed-tensors' own decompressor rebuilds it."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig

    config = QuantizationConfig.model_validate(
        json.loads((directory / "config.json").read_text())["quantization_config"]
    )
    tensors = load_file(str(directory / "model.safetensors"))
    quantized = sorted(k.removesuffix(".weight_scale") for k in tensors if k.endswith(".weight_scale"))
    weights = {}
    for group in config.config_groups.values():
        compressor = BaseCompressor.load_from_registry(group.format)
        if group.targets == ["Linear"]:  # every linear but the ignored ones
            names = [n for n in quantized if n not in config.ignore]
        else:
            names = [re.sub(r"\\(.)", r"\1", t.removeprefix("re:^").removesuffix("$")) for t in group.targets]
        for name in names:
            local = {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(name + ".")}
            weights[name] = compressor.decompress(local, group)["weight"].float()
    return weights


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("cols", [32, 45, 100])
def test_packing_matches_compressed_tensors(bits: int, cols: int) -> None:
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

    half = 1 << (bits - 1)
    q = torch.randint(-half, half, (7, cols), generator=torch.Generator().manual_seed(bits), dtype=torch.int8)
    packed = pack_int32_rows(q, bits)
    assert torch.equal(packed, pack_to_int32(q, bits))
    assert torch.equal(unpack_from_int32(packed, bits, q.shape), q)


@pytest.mark.parametrize(
    "weights",
    [
        "int4:g32",
        "int4b:g32:scale=fp16",
        "int3:channel",
        "int2:g32",
        "int8:channel",
        "int4:tensor",
        "fp8_e4m3:channel",
    ],
)
def test_weight_only_export_loads_in_transformers_with_identical_logits(weights: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = _quantized(weights)
    out, notes = export_compressed_tensors(model, tiny_tokenizer(), tmp_path / "ct")
    assert notes == []
    loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=1e-5)
    # and compressed-tensors' decompressor rebuilds anybit's weights exactly (it multiplies in the
    # scale's dtype, so with fp16 scales: anybit's exact product rounded to fp16)
    modules = {name: m for name, m in model.named_modules() if isinstance(m, QLinear)}
    theirs = _decompressed(out)
    assert theirs.keys() == modules.keys()
    for name, module in modules.items():
        expected = module.dequantized_weight().to(module.qweight.scales.dtype).float()
        torch.testing.assert_close(theirs[name], expected, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    ("weights", "fmt"), [("nvfp4", "nvfp4-pack-quantized"), ("mxfp4", "mxfp4-pack-quantized")]
)
def test_nvfp4_and_mxfp4_export(weights: str, fmt: str, tmp_path: Path) -> None:
    """FP4 with shared-scale blocks. compressed-tensors decompresses FP4 in bfloat16: MXFP4's
    power-of-two scales make that exact; NVFP4's scale (E4M3 / global scale, rounded to bfloat16)
    rounds, so its weights agree to bfloat16 precision. transformers then runs the model in
    bfloat16, so the logits agree to bfloat16 precision too."""
    from transformers import AutoModelForCausalLM

    model = _quantized(weights)
    out, _ = export_compressed_tensors(model, tiny_tokenizer(), tmp_path / "ct")
    assert json.loads((out / "config.json").read_text())["quantization_config"]["format"] == fmt
    rtol = 2**-7 if weights == "nvfp4" else 0.0
    for name, weight in _decompressed(out).items():
        expected = model.get_submodule(name).dequantized_weight()
        torch.testing.assert_close(weight, expected, rtol=rtol, atol=0, msg=name)
    loaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16).eval()
    ours = _logits(model)
    assert (_logits(loaded).float() - ours).abs().max() < 0.03 * ours.abs().max()


@pytest.mark.parametrize("weights", ["uint4:g32:asym", "int4:g32:asym", "uint3:channel", "uint2:g32:asym"])
def test_unsigned_and_zero_point_weights_decompress_exactly(weights: str, tmp_path: Path) -> None:
    """Asymmetric: checked through compressed-tensors' decompressor (transformers 5.23 cannot load
    asymmetric pack-quantized checkpoints: its placeholder zero points are unpacked,
    vllm-project/llm-compressor#1618)."""
    model = _quantized(weights)
    out, _ = export_compressed_tensors(model, tiny_tokenizer(), tmp_path / "ct")
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert all(not g["weights"]["symmetric"] for g in config["config_groups"].values())
    theirs = _decompressed(out)
    for name, module in model.named_modules():
        if isinstance(module, QLinear):
            torch.testing.assert_close(theirs[name], module.dequantized_weight(), rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    ("weights", "fmt"), [("int8:channel", "int-quantized"), ("int4:g32", "pack-quantized")]
)
def test_w8a8_and_w4a8_export_activation_config(weights: str, fmt: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = _quantized(weights, "int8:token")
    out, _ = export_compressed_tensors(model, tiny_tokenizer(), tmp_path / "ct")
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    (group,) = config["config_groups"].values()
    assert group["format"] == config["format"] == fmt
    acts = group["input_activations"]
    assert (acts["num_bits"], acts["type"], acts["strategy"], acts["dynamic"]) == (8, "int", "token", True)
    loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    # compressed-tensors' simulated int8 activations scale by absmax / 127.5, anybit's by / 127
    ours, theirs = _logits(model), _logits(loaded)
    assert (ours - theirs).abs().max() < 0.03 * ours.abs().max()
    for name, weight in _decompressed(out).items():
        torch.testing.assert_close(weight, model.get_submodule(name).dequantized_weight(), rtol=0, atol=0)


def test_config_groups_one_scheme_targets_linear_and_overrides_target_names(tmp_path: Path) -> None:
    """One scheme: ``targets: [Linear]`` with the dense head in ``ignore`` (as llm-compressor writes
    it); per-layer overrides: one group per scheme, targets by exact name."""
    from transformers import AutoModelForCausalLM

    from anybit.recipe import LayerOverride

    out, _ = export_compressed_tensors(_quantized("int4:g32"), tiny_tokenizer(), tmp_path / "one")
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert [g["targets"] for g in config["config_groups"].values()] == [["Linear"]]
    assert config["ignore"] == ["lm_head"]

    override = (LayerOverride(pattern="down_proj$", weights="int8:channel"),)
    model = _quantized("int4:g32", overrides=override)
    out, _ = export_compressed_tensors(model, tiny_tokenizer(), tmp_path / "two")
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    targets = {g["weights"]["num_bits"]: g["targets"] for g in config["config_groups"].values()}
    assert targets[8] == [r"re:^model\.layers\.0\.mlp\.down_proj$", r"re:^model\.layers\.1\.mlp\.down_proj$"]
    assert len(targets[4]) == 12 and config["ignore"] == []
    loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=1e-5)


def test_static_activation_scales_are_exported(tmp_path: Path) -> None:
    """Calibrated static per-tensor int8 activations: ``input_scale`` per layer, same logits."""
    from transformers import AutoModelForCausalLM

    model = _quantized("int8:channel", "int8:tensor:static")
    out, _ = export_compressed_tensors(model, tiny_tokenizer(), tmp_path / "ct")
    (group,) = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"].values()
    assert (
        group["input_activations"]["dynamic"] is False and group["input_activations"]["strategy"] == "tensor"
    )
    scale = load_file(str(out / "model.safetensors"))["model.layers.0.self_attn.q_proj.input_scale"]
    assert torch.equal(
        scale, model.get_submodule("model.layers.0.self_attn.q_proj").act_quant.scale.reshape(1)
    )
    loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=1e-5)


def test_quantized_embeddings_are_written_dense_with_a_note(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = _quantized("int4:g32", embeddings=True)
    out, notes = export_compressed_tensors(model, tiny_tokenizer(), tmp_path / "ct")
    assert notes == [
        "model.embed_tokens: quantized embedding written dense (compressed-tensors quantizes linears)"
    ]
    loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=1e-5)


def test_quantized_lm_head_of_a_tied_model_exports(tmp_path: Path) -> None:
    """The pipeline unties a quantized head from the embedding; the export keeps it untied."""
    from transformers import AutoModelForCausalLM

    assert tiny_model("gemma3").config.tie_word_embeddings
    model = _quantized("int4:g32", arch="gemma3", lm_head=True)
    out, _ = export_compressed_tensors(model, tiny_tokenizer(), tmp_path / "ct")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert "lm_head.weight_packed" in load_file(str(out / "model.safetensors"))
    loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("weights", "acts", "message"),
    [
        ("nf4:g32", None, "nf4"),
        ("uint4:g32:asym=float", None, "float offsets"),
        ("int4:g32:dual", None, "dual"),
        ("fp4_e2m1:g32", None, "use nvfp4"),
        ("int4:g32", "int4:token", "activation format int4"),
    ],
)
def test_unsupported_schemes_are_refused_with_the_reason(
    weights: str, acts: str | None, message: str, tmp_path: Path
) -> None:
    model = _quantized(weights, acts)
    with pytest.raises(ExportError, match=message):
        export_compressed_tensors(model, tiny_tokenizer(), tmp_path / "ct")
    assert not (tmp_path / "ct").exists()  # nothing half-written


def test_gpt2_conv1d_layers_are_refused(tmp_path: Path) -> None:
    model = _quantized("int4:g32", arch="gpt2")
    with pytest.raises(ExportError, match="Conv1D"):
        export_compressed_tensors(model, tiny_tokenizer(), tmp_path / "ct")


def test_a_model_without_quantized_linears_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no quantized linear"):
        export_compressed_tensors(tiny_model("llama"), None, tmp_path / "ct")
