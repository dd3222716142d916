"""dINT-k: integers with denormal values near zero (Lee et al., EMNLP 2023, "Enhancing Computation
Efficiency in Large Language Models through Weight and Activation Quantization", section 4.2).

Why: in W4A8, most small weights fall below half a quantization step and underflow to zero; the
paper shows that this underflow error, not rounding error, dominates. dINT keeps a balanced integer
grid and spends two codes on "denormal" special values ``+-d`` (d < 1 step) near zero, so small
magnitudes are not flushed. A dINT x INT8 MAC needs only a shift for the special values; the paper
reports ~2x area/power efficiency against an INT8 x INT8 MAC.

Levels implemented (unit scale, k = 3..8 bits, ``d = 1/2``):

    { 0, +-d } U { +-1, +-2, ..., +-(2^(k-1) - 2) }        (2^k - 1 levels; one code unused)

dint4 = {0, +-0.5, +-1, ..., +-6}; dint3 = {0, +-0.5, +-1, +-2}. Storage: k bits per code (plus
the scales of the scheme). Codes are level indices.

Departure / reconstruction note: the paper's full text was not available to us. The definition
above is reconstructed from its abstract ("a hybrid data format combining integer and denormal
representations"), its Fig. 5 caption ("balanced quantization range with a separate special value
for small values"), its equations giving the special values of two codes c1, c2, and its appendix
title "Sweep of the Special Value"; the half-step special value is our default. The scale is
chosen like a balanced integer's (absmax maps to the largest level).
"""

from __future__ import annotations

from anybit.errors import FormatError
from anybit.formats.base import NumberFormat

DINT_SPECIAL_VALUE = 0.5


def dint_levels(bits: int, special: float = DINT_SPECIAL_VALUE) -> list[float]:
    top = 2 ** (bits - 1) - 2
    integers = [float(v) for v in range(1, top + 1)]
    return [0.0, special, -special, *integers, *(-v for v in integers)]


def make_dint(bits: int) -> NumberFormat:
    if not 3 <= bits <= 8:
        raise FormatError(f"dint formats take 3..8 bits, got dint{bits}; e.g. dint4")
    return NumberFormat.from_values(
        f"dint{bits}",
        bits,
        dint_levels(bits),
        f"dINT{bits}: balanced integers +-1..+-{2 ** (bits - 1) - 2} plus denormals +-{DINT_SPECIAL_VALUE}",
    )
