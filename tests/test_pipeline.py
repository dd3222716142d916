"""Pipeline, QLinear, activation quantizers, recipes, checkpoints and export on tiny models."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from anybit.errors import CheckpointError, SchemeError, ShapeError
from anybit.eval import compare_models, perplexity
from anybit.io import export_hf_dequantized, load_checkpoint, read_header, save_checkpoint
from anybit.models import TINY_ARCHS, get_adapter, tiny_model, tiny_tokenizer
from anybit.models.pipeline import quantize_model
from anybit.nn import QEmbedding, QLinear
from anybit.recipe import LayerOverride, Recipe

CALIB = torch.randint(0, 256, (4, 48), generator=torch.Generator().manual_seed(0))
EVAL = torch.randint(0, 256, (512,), generator=torch.Generator().manual_seed(1))


def _logits(model: torch.nn.Module, ids: torch.Tensor = EVAL[:128]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids[None], use_cache=False).logits[0]


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_every_linear_of_every_block_is_quantized(arch: str) -> None:
    model = tiny_model(arch)
    reference = copy.deepcopy(model)
    result = quantize_model(model, Recipe(weights="int8:channel"), CALIB, progress=False)
    adapter = get_adapter(reference)
    names = [(i, n) for i, b in enumerate(adapter.blocks(reference)) for n in adapter.linear_names(b)]
    assert len(result.layers) == len(names)
    assert all(isinstance(adapter.blocks(model)[i].get_submodule(n), QLinear) for i, n in names)
    assert all(layer.rel_error is not None and layer.rel_error < 1e-3 for layer in result.layers)
    # int8 per-channel weights: the model barely changes
    torch.testing.assert_close(_logits(model), _logits(reference), rtol=0, atol=0.05)


def test_lower_bits_give_larger_output_error() -> None:
    errors = []
    for scheme in ("int8:channel", "int4:g32", "int2:g32:asym"):
        model = tiny_model("llama")
        result = quantize_model(model, Recipe(weights=scheme), CALIB, progress=False)
        errors.append(sum(layer.rel_error for layer in result.layers))  # type: ignore[misc]
    assert errors[0] < errors[1] < errors[2]


def test_static_activation_quantizers_are_calibrated() -> None:
    model = tiny_model("llama")
    quantize_model(model, Recipe(weights="int4:g32", acts="int8:tensor:static"), CALIB, progress=False)
    qlinears = [m for m in model.modules() if isinstance(m, QLinear)]
    assert qlinears and all(q.act_quant is not None and q.act_quant.scale is not None for q in qlinears)
    assert all(q.act_quant.scale.item() > 0 for q in qlinears)  # type: ignore[union-attr]


def test_dynamic_token_activations_change_outputs_a_little() -> None:
    model = tiny_model("qwen3")
    weights_only = copy.deepcopy(model)
    quantize_model(model, Recipe(weights="int8:channel", acts="int8:token"), CALIB, progress=False)
    quantize_model(weights_only, Recipe(weights="int8:channel"), CALIB, progress=False)
    diff = (_logits(model) - _logits(weights_only)).abs().max().item()
    assert 0 < diff < 0.1


def test_overrides_skip_and_replace_schemes() -> None:
    model = tiny_model("llama")
    recipe = Recipe(
        weights="int4:g32",
        overrides=(
            LayerOverride(r"layers\.0\.", weights="skip"),
            LayerOverride(r"down_proj$", weights="int8:channel"),
        ),
    )
    result = quantize_model(model, recipe, CALIB, progress=False)
    names = {layer.name: layer.weights for layer in result.layers}
    assert not any(".layers.0." in n for n in names)
    assert names["model.layers.1.mlp.down_proj"] == "int8:channel"
    assert names["model.layers.1.self_attn.q_proj"] == "int4:g32"
    assert isinstance(model.model.layers[0].mlp.down_proj, torch.nn.Linear)


def test_lm_head_and_embeddings_on_request() -> None:
    model = tiny_model("llama")
    result = quantize_model(
        model, Recipe(weights="int4:g32", lm_head=True, embeddings=True), CALIB, progress=False
    )
    assert isinstance(model.lm_head, QLinear) and isinstance(model.model.embed_tokens, QEmbedding)
    assert {"lm_head", "model.embed_tokens"} <= {layer.name for layer in result.layers}


def test_bad_scheme_for_a_layer_is_refused_before_any_work() -> None:
    model = tiny_model("llama")
    with pytest.raises(ShapeError, match=r"model\.layers\.0\.self_attn\.q_proj"):
        quantize_model(model, Recipe(weights="int4:g48"), CALIB, progress=False)
    assert not any(isinstance(m, QLinear) for m in model.modules())


def test_recipe_files_and_strict_keys(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "weights: int4:g32\nacts: int8:token\nalgorithms: [rtn]\n"
        "overrides:\n  - pattern: 'down_proj$'\n    weights: int8:channel\n"
        "calibration: {samples: 8, seqlen: 64}\n"
    )
    recipe = Recipe.load(path)
    assert str(recipe.weights) == "int4:g32" and recipe.calibration.samples == 8
    assert str(recipe.plan_for("model.layers.0.mlp.down_proj").weights) == "int8:channel"
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    toml = tmp_path / "r.toml"
    toml.write_text('weights = "nf4"\nlm_head = true\n')
    assert Recipe.load(toml).lm_head
    bad = tmp_path / "bad.yaml"
    bad.write_text("weights: int4:g32\nwieghts: int3\n")
    with pytest.raises(SchemeError, match="unknown keys"):
        Recipe.load(bad)
    with pytest.raises(SchemeError, match="not a valid regular expression"):
        LayerOverride("(", weights="int4")


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text"])
def test_checkpoint_round_trip_reproduces_outputs(arch: str, tmp_path: Path) -> None:
    model = tiny_model(arch)
    recipe = Recipe(weights="int4:g32:asym", acts="int8:tensor:static", lm_head=True)
    quantize_model(model, recipe, CALIB, progress=False)
    out = save_checkpoint(
        model, tmp_path / "ckpt", tokenizer=tiny_tokenizer(), recipe=recipe, source={"kind": "tiny"}
    )
    loaded, tokenizer, header = load_checkpoint(out)
    assert tokenizer is not None and header["recipe"]["weights"] == "int4:g32:asym"
    assert torch.equal(_logits(loaded), _logits(model))
    assert perplexity(loaded, EVAL, 128).ppl == perplexity(model, EVAL, 128).ppl
    # a second save of the same model gives the same bytes (determinism)
    again = save_checkpoint(
        model, tmp_path / "ckpt2", tokenizer=tiny_tokenizer(), recipe=recipe, source={"kind": "tiny"}
    )
    for name in ("anybit.safetensors", "anybit.json"):
        assert (out / name).read_bytes() == (again / name).read_bytes()


def test_checkpoint_stores_packed_bits(tmp_path: Path) -> None:
    model = tiny_model("llama")
    quantize_model(model, Recipe(weights="int3:g32"), CALIB, progress=False)
    out = save_checkpoint(model, tmp_path / "c", source=None)
    header = read_header(out)
    code_bytes = sum(
        (info["qweight"]["shape"][0] * info["qweight"]["shape"][1] * 3 + 7) // 8
        for info in header["layers"].values()
    )
    float_linears = sum(
        info["qweight"]["shape"][0] * info["qweight"]["shape"][1] * 4 for info in header["layers"].values()
    )
    size = (out / "anybit.safetensors").stat().st_size
    # the file holds the 3-bit codes (+ scales + float embeddings/norms), far less than float linears
    assert code_bytes < size < code_bytes + float_linears / 4 + 200_000


def _saved(tmp_path: Path) -> Path:
    model = tiny_model("llama")
    quantize_model(model, Recipe(weights="int4:g32"), CALIB, progress=False)
    return save_checkpoint(model, tmp_path / "ckpt", tokenizer=tiny_tokenizer())


def test_corrupt_checkpoint_is_detected(tmp_path: Path) -> None:
    out = _saved(tmp_path)
    data = bytearray((out / "anybit.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "anybit.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(out)


def test_truncated_checkpoint_is_detected(tmp_path: Path) -> None:
    out = _saved(tmp_path)
    data = (out / "anybit.safetensors").read_bytes()
    (out / "anybit.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(out)


def test_missing_or_foreign_checkpoint_and_schema_version(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"anybit\.json is missing"):
        load_checkpoint(tmp_path / "empty")
    out = _saved(tmp_path)
    header = json.loads((out / "anybit.json").read_text())
    header["schema_version"] = 99
    (out / "anybit.json").write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match="schema version 99"):
        load_checkpoint(out)


def test_existing_output_is_not_overwritten_and_no_partial_output_is_left(tmp_path: Path) -> None:
    out = _saved(tmp_path)
    model = tiny_model("llama")
    quantize_model(model, Recipe(weights="int4:g32"), CALIB, progress=False)
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(model, out)
    # a failure in the middle of a save leaves nothing behind
    before = sorted(p.name for p in tmp_path.iterdir())

    class Boom(RuntimeError):
        pass

    class BadTokenizer:
        def save_pretrained(self, _path: str) -> None:
            raise Boom("disk full")

    with pytest.raises(Boom):
        save_checkpoint(model, tmp_path / "other", tokenizer=BadTokenizer())
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_hf_dequantized_export_loads_in_transformers(arch: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = tiny_model(arch)
    quantize_model(model, Recipe(weights="nf4:g32:scale=fp16", lm_head=True), CALIB, progress=False)
    out, notes = export_hf_dequantized(model, tiny_tokenizer(), tmp_path / "hf")
    assert notes == []
    exported = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    torch.testing.assert_close(_logits(exported), _logits(model), rtol=1e-4, atol=1e-4)


def test_hf_dequantized_export_keeps_bias_correction(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama")
    recipe = Recipe(weights="int3:g32", algorithms=("adaquant",), options=(("adaquant.iters", 20),))
    quantize_model(model, recipe, CALIB, progress=False)
    out, notes = export_hf_dequantized(model, tiny_tokenizer(), tmp_path / "hf")
    assert any("attention_bias" in n for n in notes) and any("mlp_bias" in n for n in notes)
    exported = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    torch.testing.assert_close(_logits(exported), _logits(model), rtol=1e-4, atol=1e-4)


def test_compare_models_kl_is_zero_for_identical_models() -> None:
    model = tiny_model("llama")
    cmp = compare_models(model, model, EVAL, 128)
    assert cmp.kl == pytest.approx(0.0, abs=1e-9) and cmp.top1 == 1.0
    assert cmp.n_tokens == 4 * 127 and cmp.reference.ppl == cmp.candidate.ppl


def test_model_level_rotation_runs_in_the_pipeline_and_is_refused_up_front_where_it_cannot() -> None:
    from anybit.errors import AlgorithmError

    model = tiny_model("llama")
    reference = copy.deepcopy(model)
    recipe = Recipe(weights="int8:channel", acts="int8:token", algorithms=("rotate", "rtn"))
    quantize_model(model, recipe, CALIB, progress=False)
    assert getattr(model.config, "anybit_rotation", None)
    torch.testing.assert_close(_logits(model), _logits(reference), rtol=0, atol=0.1)
    gemma = tiny_model("gemma3_text")
    with pytest.raises(AlgorithmError):
        quantize_model(gemma, recipe, CALIB, progress=False)
    assert not any(isinstance(m, QLinear) for m in gemma.modules())


@pytest.mark.parametrize("algo", ["rtn", "gptq", "dgq"])
def test_every_layer_reports_its_solve_and_block_time(algo: str) -> None:
    recipe = Recipe(weights="int4:g32", algorithms=(algo,))
    result = quantize_model(tiny_model("llama"), recipe, CALIB, progress=False)
    for layer in result.layers:
        assert layer.seconds is not None and layer.block_seconds is not None
        assert 0 <= layer.seconds <= layer.block_seconds
    assert sum(layer.block_seconds for layer in result.layers) > 0  # type: ignore[misc]
