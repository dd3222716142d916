"""Dense bit packing for checkpoint storage.

Layout: codes of ``bits`` bits (1..8) are written one after another into a little-endian bit
stream (code ``i`` occupies stream bits ``[i*bits, (i+1)*bits)``, least significant bit first), padded
with zero bits to a whole byte. So a checkpoint costs exactly ``ceil(n * bits / 8)`` bytes of codes.
Kernels use their own, SIMD-friendly layouts (``anybit.kernels``); this one is for storage.
"""

from __future__ import annotations

import numpy as np
import torch


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Flat uint8 tensor of the packed stream of ``codes`` (any shape, uint8, values < 2**bits)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    flat = codes.reshape(-1).numpy().astype(np.uint8, copy=False)
    if bits == 8:
        return torch.from_numpy(flat.copy())
    planes = np.unpackbits(flat[:, None], axis=1, bitorder="little")[:, :bits]
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``count`` codes as a flat uint8 tensor."""
    data = packed.reshape(-1).numpy().astype(np.uint8, copy=False)
    if bits == 8:
        return torch.from_numpy(data[:count].copy())
    stream = np.unpackbits(data, bitorder="little")[: count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    return torch.from_numpy((stream.astype(np.uint16) @ weights).astype(np.uint8))
