"""Packed storage of quantization codes: the layouts the CPU kernels read.

A ``QTensor`` keeps one uint8 code per value; the kernels read codes packed at their bit-width.
Every layout below pads rows and columns with code 0 (the kernels see zero activations in padding
columns and never write padding rows), and every packed buffer is a C-contiguous numpy array that
can be saved and memory-mapped as is. ``N`` is the number of rows (output features), ``K`` the
number of columns (input features), codes are unsigned ``b``-bit integers.

``bitfields`` (any width b = 1..8; integer weight-only kernel ``intbp``)
    uint32 ``[ceil(N/16), ceil(K/32), b, 16]``, read as bytes: per tile of 16 rows and chunk of 32
    columns, ``b`` vectors of 64 bytes; byte ``4r + i`` of a vector (byte ``i`` of word ``r``,
    little-endian) belongs to row ``16t + r``. A b-bit code is split, low bits first, into fields
    whose widths divide 8 (:func:`bit_fields`: 1, 2, 4, 8 = one field; 3 = 2+1, 5 = 4+1, 6 = 4+2,
    7 = 4+2+1), and vector ``j`` of the chunk belongs to the field that holds code bit ``j``. For a
    field of width ``w`` at bit offset ``o``, vector ``o + v`` holds in bits ``[w*p, w*p + w)`` of
    byte ``4r + i`` (``p < 8/w``) the field of the code of row ``16t + r``, column
    ``32c + v*(32/w) + 4p + i``. Why: one AND (after a shift for ``p > 0``) turns a vector into a
    vpdpbusd operand (16 rows x 4 consecutive columns of unsigned bytes) that multiplies 4 broadcast
    activation bytes, so the kernel does one multiply-add instruction pair per field, 16 rows and
    4 columns: the bytes read (b/8 per code) and the work both fall with the bit-width, and the
    weight stream of a tile is one sequential read.

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


ALIGN_BYTES = 64  # cache line = one AVX-512 vector


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def aligned(array: np.ndarray, alignment: int = ALIGN_BYTES) -> np.ndarray:
    """``array`` itself if C-contiguous and its data starts on an ``alignment``-byte boundary, else an
    aligned copy. Why: numpy's large allocations start 16 bytes into a page, so every 64-byte vector
    load of a packed weight would straddle two cache lines (measurably slower streaming)."""
    if array.flags.c_contiguous and array.ctypes.data % alignment == 0:
        return array
    raw = np.empty(array.nbytes + alignment, dtype=np.uint8)
    start = -raw.ctypes.data % alignment
    out = raw[start : start + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


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


# ----- bit fields -------------------------------------------------------------------------------
def bit_fields(bits: int) -> list[tuple[int, int]]:
    """``(width, offset)`` of each field of a ``bits``-bit code in the ``bitfields`` layout, low bits
    first: widths are 8, 4, 2 or 1, widest first (e.g. 7 -> [(4, 0), (2, 4), (1, 6)])."""
    if not 1 <= bits <= 8:
        raise KernelError(f"bit fields: bit-width must be 1..8, got {bits}")
    fields, offset = [], 0
    while offset < bits:
        width = next(w for w in (8, 4, 2, 1) if w <= bits - offset)
        fields.append((width, offset))
        offset += width
    return fields


def pack_bitfields(codes: torch.Tensor | np.ndarray, bits: int) -> np.ndarray:
    """Codes ``[N, K]`` of ``bits`` bits -> uint32 ``[ceil(N/16), ceil(K/32), bits, 16]``."""
    return extension().pack_intbp(as_codes(codes, bits), bits)


def unpack_bitfields(words: np.ndarray, n: int, k: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bitfields`: uint8 ``[n, k]``."""
    return extension().unpack_intbp(np.ascontiguousarray(words, dtype=np.uint32), n, k, bits)


def pack_bitfields_reference(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pure-numpy definition of the bit-field layout (for tests)."""
    n, k = codes.shape
    padded = np.zeros((round_up(n, INT_TILE_ROWS), round_up(k, INT_CHUNK_COLS)), dtype=np.uint32)
    padded[:n, :k] = codes
    tiles, chunks = padded.shape[0] // INT_TILE_ROWS, padded.shape[1] // INT_CHUNK_COLS
    vectors = []
    for width, offset in bit_fields(bits):
        field = (padded >> offset) & ((1 << width) - 1)
        # column 32c + v*(32/w) + 4p + i -> [tiles, rows, chunks, v, p, i]
        field = field.reshape(tiles, INT_TILE_ROWS, chunks, width, 8 // width, 4)
        shifts = (width * np.arange(8 // width, dtype=np.uint32)).reshape(1, 1, 1, 1, -1, 1)
        byte = (field << shifts).sum(axis=4)  # [tiles, rows, chunks, v, i]; fields never overlap
        vectors.append(byte.transpose(0, 2, 3, 1, 4))  # [tiles, chunks, v, rows, i]
    data = np.concatenate(vectors, axis=2).astype(np.uint8)  # [tiles, chunks, bits, 16, 4]
    words = np.ascontiguousarray(data).view("<u4").reshape(tiles, chunks, bits, INT_TILE_ROWS)
    return words.astype(np.uint32)


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
