"""Packing layouts: the C++ packers equal the pure-numpy layout definitions, and unpack inverts pack."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anybit.errors import KernelError
from anybit.kernels import dispatch

pytestmark = pytest.mark.skipif(not dispatch.is_available(), reason=str(dispatch.EXTENSION_ERROR))

if dispatch.is_available():
    from anybit.kernels import packing


@st.composite
def code_matrices(draw: st.DrawFn, max_bits: int = 8) -> tuple[np.ndarray, int]:
    bits = draw(st.integers(1, max_bits))
    n = draw(st.integers(1, 40))
    k = draw(st.integers(1, 100))
    seed = draw(st.integers(0, 2**32 - 1))
    codes = np.random.default_rng(seed).integers(0, 1 << bits, size=(n, k), dtype=np.uint8)
    return codes, bits


@settings(max_examples=60, deadline=None)
@given(code_matrices())
def test_bitfields_round_trip_and_layout(case: tuple[np.ndarray, int]) -> None:
    codes, bits = case
    words = packing.pack_bitfields(codes, bits)
    assert words.dtype == np.uint32
    assert words.shape == (-(-codes.shape[0] // 16), -(-codes.shape[1] // 32), bits, 16)
    np.testing.assert_array_equal(words, packing.pack_bitfields_reference(codes, bits))
    np.testing.assert_array_equal(packing.unpack_bitfields(words, *codes.shape, bits), codes)


def test_bit_fields_split_codes_into_byte_divisors() -> None:
    assert packing.bit_fields(4) == [(4, 0)]
    assert packing.bit_fields(3) == [(2, 0), (1, 2)]
    assert packing.bit_fields(7) == [(4, 0), (2, 4), (1, 6)]
    for bits in range(1, 9):
        fields = packing.bit_fields(bits)
        assert sum(w for w, _ in fields) == bits and all(8 % w == 0 for w, _ in fields)
    with pytest.raises(KernelError, match=r"1\.\.8"):
        packing.bit_fields(9)


def test_bitfields_byte_positions() -> None:
    """Spot checks of the documented formula: int2 code of row 17, column 32 + 16 + 4*1 + 2."""
    codes = np.zeros((20, 64), dtype=np.uint8)
    codes[17, 32 + 16 + 4 + 2] = 3  # tile 1, row 1, chunk 1, vector 1, position 1, byte 2
    data = packing.pack_bitfields(codes, 2).view(np.uint8).reshape(2, 2, 2, 64)
    assert np.flatnonzero(data).tolist() == [np.ravel_multi_index((1, 1, 1, 4 * 1 + 2), data.shape)]
    assert data[1, 1, 1, 6] == 3 << 2


@settings(max_examples=60, deadline=None)
@given(code_matrices(max_bits=4))
def test_nibbles_round_trip_and_layout(case: tuple[np.ndarray, int]) -> None:
    codes, _ = case
    packed = packing.pack_nibbles(codes)
    np.testing.assert_array_equal(packed, packing.pack_nibbles_reference(codes))
    np.testing.assert_array_equal(packing.unpack_nibbles(packed, *codes.shape), codes)
    vnni = packing.pack_vnni_nibbles(codes)
    np.testing.assert_array_equal(vnni, packing.pack_vnni_nibbles_reference(codes))
    np.testing.assert_array_equal(packing.unpack_vnni_nibbles(vnni, *codes.shape), codes)


@settings(max_examples=60, deadline=None)
@given(code_matrices(max_bits=8), st.sampled_from([16, 32, 64]))
def test_vnni_bytes_round_trip_and_layout(case: tuple[np.ndarray, int], k_multiple: int) -> None:
    codes, _ = case
    packed = packing.pack_vnni_bytes(codes, k_multiple)
    np.testing.assert_array_equal(packed, packing.pack_vnni_bytes_reference(codes, k_multiple))
    np.testing.assert_array_equal(packing.unpack_vnni_bytes(packed, *codes.shape), codes)


def test_packed_sizes_are_bits_per_code() -> None:
    codes = np.zeros((64, 128), dtype=np.uint8)
    for bits in range(1, 9):
        assert packing.pack_bitfields(codes, bits).nbytes == 64 * 128 * bits // 8
    assert packing.pack_nibbles(codes).nbytes == 64 * 128 // 2
    assert packing.pack_vnni_bytes(codes).nbytes == 64 * 128


def test_codes_too_wide_are_rejected() -> None:
    codes = np.full((2, 8), 4, dtype=np.uint8)
    with pytest.raises(KernelError, match="does not fit in 2 bits"):
        packing.pack_bitfields(codes, 2)
    with pytest.raises(KernelError, match="does not fit in 4 bits"):
        packing.pack_nibbles(np.full((2, 8), 16, dtype=np.uint8))
    with pytest.raises(KernelError, match="2-D uint8"):
        packing.pack_nibbles(np.zeros((2, 8), dtype=np.int32))
