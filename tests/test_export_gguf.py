"""GGUF export: block encoding checked by gguf-py's dequantizer; refusals name the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import anybit
from anybit.errors import ExportError
from anybit.io.gguf_export import encode_blocks, export_gguf
from anybit.models import tiny_model
from anybit.models.pipeline import quantize_model
from anybit.recipe import Recipe

gguf = pytest.importorskip("gguf")

SCHEMES = {
    "int4:g32:scale=fp16": ("Q4_0", 18),
    "uint4:g32:asym=float:scale=fp16": ("Q4_1", 20),
    "int5:g32:scale=fp16": ("Q5_0", 22),
    "uint5:g32:asym=float:scale=fp16": ("Q5_1", 24),
    "int8:g32:scale=fp16": ("Q8_0", 34),
    "mxfp4": ("MXFP4", 17),
}


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("shape", [(16, 32), (45, 96), (7, 320)])
def test_blocks_dequantize_to_anybits_weights_in_gguf_py(scheme: str, shape: tuple[int, int]) -> None:
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0])) * 0.05
    q = anybit.quantize(w, scheme)
    name, blocks = encode_blocks(q, "w")
    expected_name, block_bytes = SCHEMES[scheme]
    assert name == expected_name and blocks.dtype == np.uint8
    assert blocks.shape == (shape[0], shape[1] // 32 * block_bytes)
    theirs = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[name])
    np.testing.assert_array_equal(theirs, q.dequantize(torch.float32).numpy())


@pytest.mark.parametrize(
    "scheme",
    [
        "int4:g32",
        "int4:g64:scale=fp16",
        "nf4:g32:scale=fp16",
        "uint4:g32:asym:scale=fp16",
        "int3:g32:scale=fp16",
    ],
)
def test_schemes_without_a_gguf_block_type_are_refused(scheme: str) -> None:
    with pytest.raises(ExportError, match="Q4_0"):  # the message lists what maps
        encode_blocks(anybit.quantize(torch.randn(8, 64), scheme), "layer")


def test_a_model_not_loaded_from_gguf_is_refused(tmp_path: Path) -> None:
    model = tiny_model("llama")
    quantize_model(
        model, Recipe(weights="int4:g32:scale=fp16"), torch.randint(0, 256, (2, 32)), progress=False
    )
    with pytest.raises(ExportError, match="convert_hf_to_gguf"):
        export_gguf(model, {"kind": "hf", "path": "somewhere"}, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def _tiny_gguf_source(model: torch.nn.Module, path: Path) -> dict[str, str]:
    """A GGUF file of the (unquantized) tiny llama in llama.cpp's layout, as the export's source."""
    from anybit.io.gguf_export import _permute_qk

    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_string("general.name", "tiny")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for key, value in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        base = names.get_name(module)
        if base is None:
            continue
        heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}.get(
            base.split(".")[-1]
        )
        tensor = _permute_qk(value.float(), heads) if heads else value.float()
        writer.add_tensor(f"{base}.{leaf}", tensor.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"kind": "gguf", "path": str(path)}


def test_export_writes_blocks_in_gguf_layout_and_copies_the_rest(tmp_path: Path) -> None:
    from anybit.io.gguf_export import _permute_qk
    from anybit.nn import QLinear

    model = tiny_model("llama")
    source = _tiny_gguf_source(model, tmp_path / "src.gguf")
    quantize_model(
        model, Recipe(weights="int4:g32:scale=fp16"), torch.randint(0, 256, (2, 32)), progress=False
    )
    out, notes = export_gguf(model, source, tmp_path / "out.gguf")
    assert notes == []
    reader, original = gguf.GGUFReader(str(out)), gguf.GGUFReader(source["path"])
    tensors = {t.name: t for t in reader.tensors}
    assert tensors.keys() == {t.name for t in original.tensors}
    assert str(reader.fields["general.name"].contents()) == "tiny"  # metadata copied
    config = model.config
    for name, module in model.named_modules():
        if not isinstance(module, QLinear):
            continue
        base = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers).get_name(name)
        stored = tensors[f"{base}.weight"]
        assert stored.tensor_type.name == "Q4_0"
        heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}.get(
            base.split(".")[-1]
        )
        expected = module.dequantized_weight()
        expected = _permute_qk(expected, heads) if heads else expected
        np.testing.assert_array_equal(
            gguf.quants.dequantize(stored.data, stored.tensor_type), expected.numpy()
        )
    # untouched tensors are the source's bytes
    src = {t.name: t for t in original.tensors}
    for name in ("token_embd.weight", "blk.0.attn_norm.weight", "output_norm.weight"):
        np.testing.assert_array_equal(np.asarray(tensors[name].data), np.asarray(src[name].data))


def test_tensors_the_source_lacks_are_refused(tmp_path: Path) -> None:
    """Bias correction adds biases to a bias-free llama: not representable in its GGUF layout."""
    model = tiny_model("llama")
    source = _tiny_gguf_source(model, tmp_path / "src.gguf")
    recipe = Recipe(weights="int4:g32:scale=fp16", algorithms=("adaquant",), options=(("adaquant.iters", 5),))
    quantize_model(model, recipe, torch.randint(0, 256, (2, 32)), progress=False)
    with pytest.raises(ExportError, match="bias correction"):
        export_gguf(model, source, tmp_path / "out.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.gguf"]  # no file, no temporary left
