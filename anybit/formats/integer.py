"""Integer formats: ``int{k}``, ``uint{k}``, balanced ``int{k}b``.

Spec (k = 2..8 bits per code):

=============  ===========================  =======================================
name           levels                       code of level v
=============  ===========================  =======================================
``int{k}``     -2^(k-1) .. 2^(k-1)-1        v + 2^(k-1)   (offset binary, unsigned)
``uint{k}``    0 .. 2^k-1                   v
``int{k}b``    -(2^(k-1)-1) .. 2^(k-1)-1    v + 2^(k-1)-1 (one code, 2^k-1, unused)
=============  ===========================  =======================================

Codes are offset binary (what llama.cpp's Q4_0 and compressed-tensors' packed int4 store), so a
code is always an unsigned k-bit number and dequantization is ``scale * (code - offset)``.
Balanced formats drop the most negative level so the grid is symmetric about zero; storage still
costs k bits per code.

Tie rule: half-way values round to the even integer (``torch.round``), which is the generic
"even level wins" rule because even integers are marked even.
"""

from __future__ import annotations

import torch

from anybit.errors import FormatError
from anybit.formats.base import NumberFormat

MIN_INT_BITS = 2
MAX_INT_BITS = 8


class IntFormat(NumberFormat):
    """Consecutive integer levels with a round/clamp fast path."""

    @staticmethod
    def make(bits: int, kind: str) -> IntFormat:
        """``kind`` is ``"signed"``, ``"unsigned"`` or ``"balanced"``."""
        if not MIN_INT_BITS <= bits <= MAX_INT_BITS:
            raise FormatError(
                f"integer formats take {MIN_INT_BITS}..{MAX_INT_BITS} bits, got {bits}; "
                "e.g. int4, uint3, int2b"
            )
        if kind == "signed":
            lo, hi, name = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, f"int{bits}"
            desc = f"signed {bits}-bit integer, two's-complement range, offset-binary codes"
        elif kind == "unsigned":
            lo, hi, name = 0, 2**bits - 1, f"uint{bits}"
            desc = f"unsigned {bits}-bit integer"
        elif kind == "balanced":
            lo, hi, name = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1, f"int{bits}b"
            desc = f"balanced {bits}-bit integer (symmetric range, one code unused)"
        else:
            raise FormatError(f"unknown integer kind {kind!r}; use signed, unsigned or balanced")
        levels = torch.arange(lo, hi + 1, dtype=torch.float64)
        codes = torch.arange(levels.numel(), dtype=torch.int64)
        table = torch.full((2**bits,), float("nan"), dtype=torch.float64)
        table[: levels.numel()] = levels
        even = levels.remainder(2) == 0
        return IntFormat(name, bits, levels, codes, even, table, None, desc)

    def _round_fast(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x).clamp_(self.min_level, self.max_level)

    def _encode_fast(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.round(x).clamp_(self.min_level, self.max_level) - self.min_level).to(torch.uint8)
