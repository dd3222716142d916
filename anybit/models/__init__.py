"""Model sources and architecture adapters.

``load_model(source)`` turns a named model (``smollm2``, ``gemma3-270m``), a GGUF file, a Hugging Face
directory or a safetensors file into a float causal LM; ``get_adapter(model)`` says where its blocks,
linears and norms are; ``tiny_model(arch)`` builds a random 2-layer model of any supported
architecture for tests.
"""

from anybit.models.adapters import (
    ADAPTERS,
    SUPPORTED_MODEL_TYPES,
    Adapter,
    BlockInputs,
    SmoothGroup,
    block_inputs,
    conv1d_to_linear,
    get_adapter,
    linear_to_conv1d,
    run_block,
)
from anybit.models.gguf_check import GGUFInfo, inspect_gguf
from anybit.models.sources import NAMED_SOURCES, LoadedModel, cache_dir, file_sha256, load_model
from anybit.models.tiny import TINY_ARCHS, tiny_model, tiny_tokenizer

__all__ = [
    "ADAPTERS",
    "NAMED_SOURCES",
    "SUPPORTED_MODEL_TYPES",
    "TINY_ARCHS",
    "Adapter",
    "BlockInputs",
    "GGUFInfo",
    "LoadedModel",
    "SmoothGroup",
    "block_inputs",
    "cache_dir",
    "conv1d_to_linear",
    "file_sha256",
    "get_adapter",
    "inspect_gguf",
    "linear_to_conv1d",
    "load_model",
    "run_block",
    "tiny_model",
    "tiny_tokenizer",
]
