"""Packed storage of quantization codes: the layouts the CPU kernels read.

A ``QTensor`` keeps one uint8 code per value; the kernels read codes packed at their bit-width.
Every layout below pads rows and columns with code 0 (the kernels see zero activations in padding
columns and never write padding rows), and every packed buffer is a C-contiguous numpy array that
can be saved and memory-mapped as is. ``N`` is the number of rows (output features), ``K`` the
number of columns (input features), codes are unsigned ``b``-bit integers.

``bitplanes`` (any width b = 1..8; integer weight-only kernels)
    uint32 ``[ceil(N/16), ceil(K/32), b, 16]``. Word ``[t, c, p, r]`` holds bit-plane ``p`` of
    columns ``32c .. 32c+31`` of row ``16t + r``: bit ``j`` of the word is bit ``p`` of code
    ``(16t + r, 32c + j)``. Why: the bit-serial lookup kernel (T-MAC style) reads one plane of 16
    rows x 32 columns as one 64-byte vector; consecutive 4-bit fields of a word index 16-entry
    tables of partial activation sums, so a b-bit weight costs b lookups per 4 columns and the work
    (and the bytes read, b/8 per weight) falls linearly with the bit-width.

``nibbles`` (b <= 4; codebook kernels)
    uint8 ``[N, ceil(K/32) * 16]``: per row, each 32-column chunk is 16 bytes; byte ``i`` holds
    code ``k0 + i`` in its low nibble and ``k0 + 16 + i`` in its high nibble. Why: one 16-byte load
    zero-extended to 16 lanes gives 16 consecutive codes (low nibbles) and, after one shift, the
    next 16 (high nibbles); vpermps on a 16-entry table turns them into values. 3-bit codebooks
    (bitmod3, dint3) are stored in nibbles too: 4 bits of storage per code.

``vnni_bytes`` (b = 8; W8A8)
    uint8 ``[ceil(N/4), ceil(K/16), 4, 16]`` (returned as ``[ceil(N/4)*4, K_pad]``): blocks of 4
    rows x 16 columns, row-major inside the block. Why: one 64-byte block is one vpdpbusd operand
    whose 128-bit lanes are rows, so the activation operand is a broadcast of 16 bytes.

``vnni_nibbles`` (b <= 4; W4A8)
    uint8 ``[ceil(N/4), ceil(K/32), 4, 16]``: per block of 4 rows and 32 columns, row ``r``'s 16
    bytes hold columns ``k0..k0+15`` in low nibbles and ``k0+16..k0+31`` in high nibbles; one AND
    (or shift + AND) and one vpshufb through a per-row table give the ``vnni_bytes`` block of 16
    columns directly.

The pure-numpy ``*_reference`` functions here define the layouts independently of the C++ code; the
tests hold the two equal.
"""

from __future__ import annotations

import numpy as np
import torch

from anybit.errors import KernelError
from anybit.kernels.dispatch import extension

INT_TILE_ROWS = 16
INT_CHUNK_COLS = 32
NIBBLE_CHUNK_COLS = 32
VNNI_QUAD_ROWS = 4
VNNI_STEP_COLS = 16


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def as_codes(codes: torch.Tensor | np.ndarray, max_bits: int, what: str = "codes") -> np.ndarray:
    """A C-contiguous uint8 ``[N, K]`` numpy view (or copy) of ``codes``, checked to fit ``max_bits``."""
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().contiguous().numpy()
    array = np.ascontiguousarray(codes)
    if array.dtype != np.uint8 or array.ndim != 2:
        raise KernelError(
            f"{what}: expected a 2-D uint8 array [N, K], got {array.dtype} of shape {array.shape}"
        )
    if not 1 <= max_bits <= 8:
        raise KernelError(f"{what}: bit-width must be 1..8, got {max_bits}")
    if array.size and int(array.max()) >= 1 << max_bits:
        raise KernelError(f"{what}: code {int(array.max())} does not fit in {max_bits} bits")
    return array


# ----- bit planes -------------------------------------------------------------------------------
def pack_bitplanes(codes: torch.Tensor | np.ndarray, bits: int) -> np.ndarray:
    """Codes ``[N, K]`` of ``bits`` bits -> uint32 ``[ceil(N/16), ceil(K/32), bits, 16]``."""
    return extension().pack_intbp(as_codes(codes, bits), bits)


def unpack_bitplanes(words: np.ndarray, n: int, k: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bitplanes`: uint8 ``[n, k]``."""
    return extension().unpack_intbp(np.ascontiguousarray(words, dtype=np.uint32), n, k, bits)


def pack_bitplanes_reference(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pure-numpy definition of the bit-plane layout (slow; for tests)."""
    n, k = codes.shape
    padded = np.zeros((round_up(n, INT_TILE_ROWS), round_up(k, INT_CHUNK_COLS)), dtype=np.uint32)
    padded[:n, :k] = codes
    # [tiles, 16 rows, chunks, 32 cols] -> planes -> words
    tiles = padded.reshape(-1, INT_TILE_ROWS, padded.shape[1] // INT_CHUNK_COLS, INT_CHUNK_COLS)
    weights = (np.uint32(1) << np.arange(INT_CHUNK_COLS, dtype=np.uint32)).astype(np.uint32)
    planes = [((tiles >> p) & 1) @ weights for p in range(bits)]  # each [tiles, 16, chunks]
    words = np.stack(planes, axis=-1).astype(np.uint32)  # [tiles, 16, chunks, bits]
    return np.ascontiguousarray(words.transpose(0, 2, 3, 1))


# ----- nibbles ----------------------------------------------------------------------------------
def pack_nibbles(codes: torch.Tensor | np.ndarray) -> np.ndarray:
    """Codes ``[N, K]`` of <= 4 bits -> uint8 ``[N, ceil(K/32) * 16]`` (codebook layout)."""
    return extension().pack_nibbles(as_codes(codes, 4), False)


def unpack_nibbles(packed: np.ndarray, n: int, k: int) -> np.ndarray:
    return extension().unpack_nibbles(np.ascontiguousarray(packed, dtype=np.uint8), n, k, False)


def pack_nibbles_reference(codes: np.ndarray) -> np.ndarray:
    n, k = codes.shape
    padded = np.zeros((n, round_up(k, NIBBLE_CHUNK_COLS)), dtype=np.uint8)
    padded[:, :k] = codes
    chunks = padded.reshape(n, -1, 2, NIBBLE_CHUNK_COLS // 2)
    return np.ascontiguousarray((chunks[:, :, 0] | (chunks[:, :, 1] << 4)).reshape(n, -1))


# ----- VNNI blocks ------------------------------------------------------------------------------
def pack_vnni_bytes(codes: torch.Tensor | np.ndarray, k_multiple: int = 32) -> np.ndarray:
    """8-bit codes ``[N, K]`` -> uint8 ``[ceil(N/4)*4, K_pad]`` in 4x16 blocks (K_pad = K rounded
    up to ``k_multiple``)."""
    return extension().pack_q8(as_codes(codes, 8), k_multiple)


def unpack_vnni_bytes(packed: np.ndarray, n: int, k: int) -> np.ndarray:
    return extension().unpack_q8(np.ascontiguousarray(packed, dtype=np.uint8), n, k)


def pack_vnni_nibbles(codes: torch.Tensor | np.ndarray) -> np.ndarray:
    """Codes ``[N, K]`` of <= 4 bits -> uint8 ``[ceil(N/4)*4, ceil(K/32)*16]`` (W4A8 layout)."""
    return extension().pack_nibbles(as_codes(codes, 4), True)


def unpack_vnni_nibbles(packed: np.ndarray, n: int, k: int) -> np.ndarray:
    return extension().unpack_nibbles(np.ascontiguousarray(packed, dtype=np.uint8), n, k, True)


def pack_vnni_bytes_reference(codes: np.ndarray, k_multiple: int = 32) -> np.ndarray:
    n, k = codes.shape
    n_pad, k_pad = round_up(n, VNNI_QUAD_ROWS), round_up(k, k_multiple)
    padded = np.zeros((n_pad, k_pad), dtype=np.uint8)
    padded[:n, :k] = codes
    blocks = padded.reshape(n_pad // VNNI_QUAD_ROWS, VNNI_QUAD_ROWS, k_pad // VNNI_STEP_COLS, VNNI_STEP_COLS)
    return np.ascontiguousarray(blocks.transpose(0, 2, 1, 3).reshape(n_pad, k_pad))


def pack_vnni_nibbles_reference(codes: np.ndarray) -> np.ndarray:
    n, k = codes.shape
    n_pad, k_pad = round_up(n, VNNI_QUAD_ROWS), round_up(k, NIBBLE_CHUNK_COLS)
    padded = np.zeros((n_pad, k_pad), dtype=np.uint8)
    padded[:n, :k] = codes
    # [quads, 4 rows, chunks, 2 halves, 16] -> [quads, chunks, 4 rows, 16 bytes]
    blocks = padded.reshape(n_pad // VNNI_QUAD_ROWS, VNNI_QUAD_ROWS, -1, 2, NIBBLE_CHUNK_COLS // 2)
    packed = blocks[:, :, :, 0] | (blocks[:, :, :, 1] << 4)
    return np.ascontiguousarray(packed.transpose(0, 2, 1, 3).reshape(n_pad, k_pad // 2))
