"""Floating-point formats ``fp{k}_e{E}m{M}[_fin|_fn|_ieee]`` for any 1 + E + M = k <= 8.

Spec. A code is ``sign | exponent (E bits) | mantissa (M bits)``, exponent bias
``b = 2^(E-1) - 1``. Exponent field 0 is subnormal: ``(-1)^s * (m / 2^M) * 2^(1-b)``; otherwise
``(-1)^s * (1 + m / 2^M) * 2^(e-b)``. Three conventions for the top exponent (``e = 2^E - 1``):

- ``fin``: all codes are finite numbers (OCP FP6 E3M2/E2M3, FP4 E2M1; ml_dtypes ``*fn`` 6/4-bit).
- ``fn``: finite, with NaN only at the all-ones code ``S.11..1.11..1`` (OCP FP8 E4M3, max 448;
  ml_dtypes ``float8_e4m3fn``).
- ``ieee``: the top exponent is reserved for Inf (mantissa 0) and NaN (IEEE 754 style; OCP FP8
  E5M2, max 57344; ml_dtypes ``float8_e5m2``, ``float8_e4m3``, ``float8_e3m4``).

Default convention when the name has no suffix: ``fp8_e4m3`` is ``fn`` (OCP), other 8-bit formats
are ``ieee``, formats narrower than 8 bits are ``fin``. So ``fp8_e4m3``, ``fp8_e5m2``,
``fp6_e3m2``, ``fp6_e2m3`` and ``fp4_e2m1`` are exactly the OCP/ml_dtypes formats, and
``fp8_e4m3_ieee`` is ml_dtypes ``float8_e4m3`` (max 240).

Rounding: to nearest, ties to even mantissa (IEEE), values beyond the largest finite level
saturate to it (quantization never produces Inf/NaN; ml_dtypes would give Inf/NaN there). Negative
inputs that round to zero keep the sign (code ``1000..0``), as ml_dtypes does.

Fast path: exponent from ``frexp``, then ``round(|x| / ulp) * ulp`` with ``ulp = 2^(max(e, 1-b) - M)``;
exact for every format because ``ulp`` is a power of two. Formats with M = 0 have no mantissa bit
to be even; their ties go to the even code (the exponent's last bit) through the generic path.
"""

from __future__ import annotations

import math

import torch

from anybit.errors import FormatError
from anybit.formats.base import NumberFormat

FP_VARIANTS = ("fin", "fn", "ieee")


def default_variant(exp_bits: int, man_bits: int) -> str:
    total = 1 + exp_bits + man_bits
    if total == 8:
        return "fn" if (exp_bits, man_bits) == (4, 3) else "ieee"
    return "fin"


class FloatFormat(NumberFormat):
    """An ExMy floating-point format with an exponent/mantissa fast path."""

    exp_bits: int
    man_bits: int
    bias: int
    variant: str

    @staticmethod
    def make(exp_bits: int, man_bits: int, variant: str | None = None) -> FloatFormat:
        bits = 1 + exp_bits + man_bits
        if exp_bits < 1 or man_bits < 0 or bits > 8 or bits < 3:
            raise FormatError(
                f"fp{bits}_e{exp_bits}m{man_bits}: need E >= 1, M >= 0 and 3 <= 1+E+M <= 8 "
                "(e.g. fp8_e4m3, fp6_e3m2, fp4_e2m1, fp3_e1m1)"
            )
        variant = variant or default_variant(exp_bits, man_bits)
        if variant not in FP_VARIANTS:
            raise FormatError(f"unknown FP variant {variant!r}; use one of {FP_VARIANTS}")
        if variant == "ieee" and exp_bits < 2:
            raise FormatError("an ieee FP format needs E >= 2 (E = 1 leaves only subnormals)")
        bias = 2 ** (exp_bits - 1) - 1
        table = torch.empty(2**bits, dtype=torch.float64)
        top = 2**exp_bits - 1
        for code in range(2**bits):
            sign = -1.0 if code >> (bits - 1) else 1.0
            e = (code >> man_bits) & top
            m = code & (2**man_bits - 1)
            if variant == "ieee" and e == top:
                value = math.inf if m == 0 else math.nan
            elif variant == "fn" and e == top and m == 2**man_bits - 1:
                value = math.nan
            elif e == 0:
                value = (m / 2**man_bits) * 2.0 ** (1 - bias)
            else:
                value = (1 + m / 2**man_bits) * 2.0 ** (e - bias)
            table[code] = sign * value
        finite = torch.isfinite(table)
        codes_all = torch.arange(2**bits, dtype=torch.int64)
        neg_zero_code = 1 << (bits - 1)
        keep = finite & (codes_all != neg_zero_code)  # -0 is merged into 0 (code 0)
        levels, order = torch.sort(table[keep])
        level_codes = codes_all[keep][order]
        suffix = "" if variant == default_variant(exp_bits, man_bits) else f"_{variant}"
        name = f"fp{bits}_e{exp_bits}m{man_bits}{suffix}"
        fmt = FloatFormat(
            name,
            bits,
            levels,
            level_codes,
            level_codes % 2 == 0,
            table,
            neg_zero_code,
            f"floating point E{exp_bits}M{man_bits} ({variant}), bias {bias}, max {levels[-1].item():g}",
        )
        object.__setattr__(fmt, "exp_bits", exp_bits)
        object.__setattr__(fmt, "man_bits", man_bits)
        object.__setattr__(fmt, "bias", bias)
        object.__setattr__(fmt, "variant", variant)
        return fmt

    @property
    def min_normal_exp(self) -> int:
        return 1 - self.bias

    def _ulp_exponent(self, a: torch.Tensor) -> torch.Tensor:
        """Exponent of the spacing of levels around ``a >= 0`` (subnormals share the lowest one)."""
        _, e = torch.frexp(a)  # a = f * 2^e, f in [0.5, 1)
        return (e - 1).clamp_(min=self.min_normal_exp) - self.man_bits

    def _round_fast(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.man_bits == 0:  # no mantissa to be even: ties follow the even code (generic path)
            return None
        a = x.abs().clamp_(max=self.max_level)
        ulp_exp = self._ulp_exponent(a)
        q = torch.ldexp(torch.round(torch.ldexp(a, -ulp_exp)), ulp_exp)
        return torch.copysign(q, x)

    def _encode_fast(self, x: torch.Tensor) -> torch.Tensor | None:
        rounded = self._round_fast(x)
        if rounded is None:
            return None
        a = rounded.abs_()
        _, e = torch.frexp(a)
        e = e - 1
        normal = (e >= self.min_normal_exp) & (a > 0)
        ulp_exp = e.clamp(min=self.min_normal_exp) - self.man_bits
        mant = torch.ldexp(a, -ulp_exp).to(torch.int32)  # integer significand incl. hidden bit
        exp_field = torch.where(normal, e + self.bias, torch.zeros_like(e))
        mant = torch.where(normal, mant - (1 << self.man_bits), mant)
        sign = torch.signbit(x).to(torch.int32) << (self.exp_bits + self.man_bits)
        return (sign | (exp_field << self.man_bits) | mant).to(torch.uint8)
