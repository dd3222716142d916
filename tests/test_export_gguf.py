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
