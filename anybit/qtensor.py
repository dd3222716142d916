"""``QTensor``: a quantized tensor as stored, and the reference dequantization.

Fields (named, never a metadata dict):

- ``codes``: uint8, the logical shape of the tensor, one code per value (packing into words is
  the kernels' business; bits are counted at the format's width);
- ``scales``: ``[A, B]`` per group (see :mod:`anybit.grouping`), either a plain tensor in its
  storage dtype (float32/float16/bfloat16, ``float8_e8m0fnu`` for MX) or itself a ``QTensor``
  when scales are quantized (NVFP4's E4M3 block scales x fp32 tensor scale, DGQ's UINT8 group
  scales x fp32 channel scales, double-quantized scales);
- ``zeros``: ``[A, B]`` or None: integer zero points as codes of the element format, or float
  offsets in the scale dtype;
- ``type_ids``: ``[A, B]`` uint8 or None: the member of a format family chosen per group (BitMoD);
- ``scheme`` and ``shape``.

Dequantization (the reference every kernel is tested against), per group with effective scale
``s``:

    symmetric:        x = s * level(code)
    integer zero z:   x = s * (level(code) - level(z))
    float offset m:   x = s * level(code) + m

``total_bits`` counts everything stored (codes, scales and their own scales, zeros, type ids), so
``bits_per_weight`` is comparable with llama.cpp's bpw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anybit.formats import FormatFamily
from anybit.grouping import as_rows, from_groups, to_groups
from anybit.scheme import QScheme

_BITS_OF_DTYPE = {
    torch.float32: 32,
    torch.float16: 16,
    torch.bfloat16: 16,
    torch.float8_e8m0fnu: 8,
    torch.float8_e4m3fn: 8,
    torch.uint8: 8,
    torch.int8: 8,
}


def stored_bits(t: torch.Tensor | QTensor | None, element_bits: int | None = None) -> int:
    """Bits taken by a stored field (``element_bits`` overrides the dtype width for codes)."""
    if t is None:
        return 0
    if isinstance(t, QTensor):
        return t.total_bits
    width = element_bits if element_bits is not None else _BITS_OF_DTYPE.get(t.dtype, t.element_size() * 8)
    return t.numel() * width


@dataclass
class QTensor:
    codes: torch.Tensor
    scales: torch.Tensor | QTensor
    scheme: QScheme
    shape: tuple[int, ...]
    zeros: torch.Tensor | None = None
    type_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        if tuple(self.codes.shape) != self.shape:
            raise ValueError(f"QTensor codes shape {tuple(self.codes.shape)} != shape {self.shape}")
        if self.codes.dtype != torch.uint8:
            raise ValueError(f"QTensor codes must be uint8, got {self.codes.dtype}")

    # ----- sizes ------------------------------------------------------------------------------
    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def total_bits(self) -> int:
        fmt = self.scheme.number_format
        zero_bits = fmt.bits if self.scheme.zero_point == "int" else None
        id_bits = fmt.id_bits if isinstance(fmt, FormatFamily) else None
        return (
            stored_bits(self.codes, fmt.bits)
            + stored_bits(self.scales)
            + stored_bits(self.zeros, zero_bits)
            + stored_bits(self.type_ids, id_bits)
        )

    @property
    def bits_per_weight(self) -> float:
        return self.total_bits / self.numel

    @property
    def nbytes(self) -> int:
        """Bytes once packed (bits rounded up to whole bytes)."""
        return (self.total_bits + 7) // 8

    # ----- dequantization ---------------------------------------------------------------------
    def effective_scales(self) -> torch.Tensor:
        """``[A, B]`` float32 scales as the dequantizer uses them."""
        if isinstance(self.scales, QTensor):
            return self.scales.dequantize().reshape(self._scales_shape())
        return self.scales.float()

    def _scales_shape(self) -> tuple[int, int]:
        from anybit.grouping import num_groups

        return num_groups(tuple(as_rows(self.codes).shape), self.scheme.granularity)  # type: ignore[arg-type]

    def levels_of_codes(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[A, B, n]`` unit-scale values of the codes (grouped view)."""
        fmt = self.scheme.number_format
        codes = to_groups(as_rows(self.codes), self.scheme.granularity)
        if isinstance(fmt, FormatFamily):
            assert self.type_ids is not None, "a format family needs type_ids"
            return fmt.decode(codes, self.type_ids.unsqueeze(-1), dtype)
        return fmt.decode(codes, dtype)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The reference dequantization (module docstring), in ``dtype``."""
        fmt = self.scheme.number_format
        values = self.levels_of_codes(torch.float32)
        scale = self.effective_scales().unsqueeze(-1)
        if self.scheme.zero_point == "int":
            assert self.zeros is not None and not isinstance(fmt, FormatFamily)
            zero = fmt.decode(self.zeros, torch.float32).unsqueeze(-1)
            out = (values - zero) * scale
        elif self.scheme.zero_point == "float":
            assert self.zeros is not None
            out = values * scale + self.zeros.float().unsqueeze(-1)
        else:
            out = values * scale
        rows2d = tuple(as_rows(self.codes).shape)
        return from_groups(out, self.scheme.granularity, rows2d).reshape(self.shape).to(dtype)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"QTensor(shape={self.shape}, scheme={self.scheme}, bits/weight={self.bits_per_weight:.4f})"
