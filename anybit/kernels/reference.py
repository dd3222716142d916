"""Pure-torch references of every kernel: what the C++ kernels must compute.

- weight-only kernels (bit-plane INT, codebook): ``x @ q.dequantize().T`` in float32;
- integer-activation kernels (W8A8, W4A8): the activations are first quantized per token to INT8
  (symmetric, ``scale = absmax / 127``, round half to even, clamp to [-127, 127]), exactly as the
  C++ side does, then ``x_q * scale @ q.dequantize().T``. The kernels differ from these only by
  float summation order (tolerances in tests/test_kernels.py).
"""

from __future__ import annotations

import torch

from anybit.qtensor import QTensor

INT8_ACTIVATION_MAX = 127.0


def quantize_activations_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric INT8: ``(codes int8 [M, K], scales float32 [M, 1])``; 0-rows get scale 1."""
    x = x.float()
    absmax = x.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(absmax > 0, absmax / INT8_ACTIVATION_MAX, torch.ones_like(absmax))
    codes = torch.round(x / scale).clamp_(-INT8_ACTIVATION_MAX, INT8_ACTIVATION_MAX)
    return codes.to(torch.int8), scale


def matmul_reference(q: QTensor, x: torch.Tensor) -> torch.Tensor:
    """Weight-only reference: ``x @ W.T`` with ``W = q.dequantize()`` (float32)."""
    return x.float() @ q.dequantize(torch.float32).T


def matmul_int8_activations_reference(q: QTensor, x: torch.Tensor) -> torch.Tensor:
    """W8A8 / W4A8 reference: per-token INT8 activations times the dequantized weight."""
    codes, scale = quantize_activations_int8(x)
    return (codes.float() * scale) @ q.dequantize(torch.float32).T
