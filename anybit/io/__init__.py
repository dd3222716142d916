"""Checkpoints (save/verify/load) and exports."""

from anybit.io.checkpoint import (
    export_hf_dequantized,
    load_checkpoint,
    quantized_modules,
    read_header,
    save_checkpoint,
)
from anybit.io.compressed_tensors import export_compressed_tensors

__all__ = [
    "export_compressed_tensors",
    "export_hf_dequantized",
    "load_checkpoint",
    "quantized_modules",
    "read_header",
    "save_checkpoint",
]
