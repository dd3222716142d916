"""Checkpoints (save/verify/load) and exports."""

from anybit.io.checkpoint import (
    export_hf_dequantized,
    load_checkpoint,
    quantized_modules,
    read_header,
    save_checkpoint,
)

__all__ = ["export_hf_dequantized", "load_checkpoint", "quantized_modules", "read_header", "save_checkpoint"]
