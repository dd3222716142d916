"""ABQ-LLM's bit balance grids ``int2bb`` and ``int1bb`` (Zeng et al., "ABQ-LLM: Arbitrary-Bit
Quantized Inference Acceleration for Large Language Models", arXiv 2408.08554; public code
bytedance/ABQ-LLM, ``UniformAffineQuantizer``).

Why: INT2 ``{-2, -1, 0, 1}`` is lopsided: with a symmetric weight distribution one side gets one
level fewer, and the paper shows this costs much accuracy at 2 bits. Bit balance widens the grid
to ``qmax = 2^k`` instead of ``2^k - 1``: with a zero point, ``q in {0..4}`` and
``s = (max - min) / 4``, i.e. the symmetric 5-level grid ``{-2, -1, 0, 1, 2}`` (written "W2*" in
the paper). For k = 1 the grid is ``{-1, 0, 1}``.

What it really costs: 5 levels carry log2(5) = 2.32 bits of information but are *stored in 3 bits*
(``bits = 3``); the ABQ-LLM maintainers confirm that W2* weights are stored and computed as 3-bit
(the W3 kernel; GitHub issue bytedance/ABQ-LLM#4). anybit therefore counts 3 bits per code in
bits/weight, and ``int1bb`` 2 bits. Use it with an integer zero point as ABQ-LLM does
(``int2bb:g64:asym``) or symmetric.
"""

from __future__ import annotations

from anybit.errors import FormatError
from anybit.formats.integer import IntFormat

BALANCE_FORMATS = ("int2bb", "int1bb")


def make_bit_balance(name: str) -> IntFormat:
    if name not in BALANCE_FORMATS:
        raise FormatError(f"unknown bit-balance format {name!r}; use one of {BALANCE_FORMATS}")
    logical_bits = int(name[3])
    half = 2 ** (logical_bits - 1)
    fmt = IntFormat.make(logical_bits + 1, "balanced")  # storage width: one bit more
    keep = fmt.levels.abs() <= half
    levels = fmt.levels[keep]
    codes = fmt.level_codes[: levels.numel()]
    table = fmt.decode_table.clone()
    table[:] = float("nan")
    table[: levels.numel()] = levels
    return IntFormat(
        name,
        logical_bits + 1,
        levels,
        codes,
        levels.remainder(2) == 0,
        table,
        None,
        f"ABQ-LLM bit balance: {levels.numel()} levels {{-{half}..{half}}} stored in {logical_bits + 1} bits",
    )
