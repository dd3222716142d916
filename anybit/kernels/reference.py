"""Pure-torch references of every kernel: what the C++ kernels must compute.

- weight-only kernels (bit-field INT, codebook): ``x @ q.dequantize().T`` in float32; the bit-field
  kernel ``intbp`` computes it with ``x`` quantized per block to 16-bit integers
  (:func:`quantize_activations_int16`, :func:`matmul_int16_activations_reference`), a documented
  approximation within 1e-4 of the float reference;
- integer-activation kernels (W8A8, W4A8): the activations are first quantized per token to INT8
  (symmetric, ``scale = absmax / 127``, round half to even, clamp to [-127, 127]), exactly as the
  C++ side does, then ``x_q * scale @ q.dequantize().T``. The kernels differ from these only by
  float summation order (tolerances in tests/test_kernels.py).
"""

from __future__ import annotations

import torch

from anybit.qtensor import QTensor

INT8_ACTIVATION_MAX = 127.0
INT16_ACTIVATION_MAX = 32639.0  # = 127 * 256 + 127: q = 256 h + l with signed bytes h, l


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


def quantize_activations_int16(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``intbp`` kernel's activations: per token and block of ``block`` columns (K must be a
    multiple), ``scale = absmax / 32639`` and ``q = round(x / scale)`` (half to even) in
    [-32639, 32639]; an all-zero block has scale 0. Returns ``(q int32 [M, K], scales [M, K/block])``.
    """
    x = x.float()
    m, k = x.shape
    blocks = x.reshape(m, k // block, block)
    scale = blocks.abs().amax(dim=-1, keepdim=True) / INT16_ACTIVATION_MAX
    q = torch.where(scale > 0, torch.round(blocks / torch.where(scale > 0, scale, 1.0)), 0.0)
    q = q.clamp_(-INT16_ACTIVATION_MAX, INT16_ACTIVATION_MAX)
    return q.to(torch.int32).reshape(m, k), scale.squeeze(-1)


def matmul_int16_activations_reference(q: QTensor, x: torch.Tensor, block: int) -> torch.Tensor:
    """``intbp`` reference: ``x_q @ W.T`` with ``x_q`` the dequantized 16-bit activations (K padded
    with zeros to a multiple of ``block``)."""
    k = x.shape[-1]
    k_pad = -(-k // block) * block
    xp = torch.nn.functional.pad(x.float(), (0, k_pad - k))
    codes, scale = quantize_activations_int16(xp, block)
    xq = (codes.float().reshape(x.shape[0], -1, block) * scale.unsqueeze(-1)).reshape(x.shape[0], k_pad)
    return xq[:, :k] @ q.dequantize(torch.float32).T
