"""Parse format names into (cached) format objects."""

from __future__ import annotations

import re
from functools import cache

from anybit.errors import FormatError
from anybit.formats.base import Format

FORMAT_GRAMMAR = """\
number formats (k = bits per code):
  int{k}  uint{k}  int{k}b          integers, k = 2..8 (b = balanced, symmetric range)
  int2bb                             ABQ-LLM bit-balance 2-bit grid {-2,-1,0,1,2} (3 bits stored)
  fp{k}_e{E}m{M}[_fin|_fn|_ieee]     floating point, 1+E+M = k <= 8, subnormals included
                                     (aliases: fp8 = fp8_e4m3, fp4 = fp4_e2m1, fp8_e4m3fn)
  nf{k}                              NormalFloat, k = 2..8 (nf4 = bitsandbytes NF4)
  dint{k}                            integer with denormal values near zero, k = 3..8
  bitmod{k}                          BitMoD mixture of data types, k = 3 or 4 (one type per group)
examples: int4 uint3 int2b fp8_e4m3 fp8_e5m2 fp6_e3m2 fp6_e2m3 fp4_e2m1 fp5_e2m2 nf4 dint4 bitmod3"""

_INT = re.compile(r"^(u?)int(\d+)(b?)$")
_FP = re.compile(r"^fp(\d+)_e(\d+)m(\d+)(_?)(fin|fn|ieee)?$")
_SIMPLE = re.compile(r"^(nf|dint|bitmod)(\d+)$")
_ALIASES = {"fp8": "fp8_e4m3", "fp4": "fp4_e2m1", "e4m3": "fp8_e4m3", "e5m2": "fp8_e5m2"}


def format_examples() -> list[str]:
    return FORMAT_GRAMMAR.rsplit("examples:", 1)[1].split()


def _unknown(name: str, why: str = "") -> FormatError:
    detail = f" ({why})" if why else ""
    return FormatError(f"unknown number format {name!r}{detail}.\n{FORMAT_GRAMMAR}")


_CANONICAL: dict[str, Format] = {}


@cache
def get_format(name: str) -> Format:
    """The format (or format family) called ``name``; an unknown name lists the grammar.

    Aliases return the very same object as the canonical name (``fp8_e4m3fn`` is ``fp8_e4m3``).
    """
    fmt = _build(name)
    return _CANONICAL.setdefault(fmt.name, fmt)


def _build(name: str) -> Format:
    from anybit.formats import balance, bitmod, dint, floating, integer, normal

    if not isinstance(name, str):
        raise FormatError(f"a format name must be a string, got {type(name).__name__}\n{FORMAT_GRAMMAR}")
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key in balance.BALANCE_FORMATS:
        return balance.make_bit_balance(key)
    if m := _INT.match(key):
        unsigned, bits, balanced = m.group(1) == "u", int(m.group(2)), m.group(3) == "b"
        if unsigned and balanced:
            raise _unknown(name, "a balanced format is signed: use int{k}b")
        kind = "unsigned" if unsigned else ("balanced" if balanced else "signed")
        try:
            return integer.IntFormat.make(bits, kind)
        except FormatError as err:
            raise _unknown(name, str(err)) from None
    if m := _FP.match(key):
        bits, exp_bits, man_bits = int(m.group(1)), int(m.group(2)), int(m.group(3))
        underscore, variant = m.group(4), m.group(5)
        if bits != 1 + exp_bits + man_bits:
            raise _unknown(name, f"fp{bits} needs 1 + E + M = {bits}, but E={exp_bits}, M={man_bits}")
        if underscore and variant is None:
            raise _unknown(name, "a trailing '_' needs a variant: _fin, _fn or _ieee")
        if variant == "fn" and not underscore and bits < 8:
            variant = "fin"  # ml_dtypes spelling: float6_e3m2fn / float4_e2m1fn are all-finite
        try:
            return floating.FloatFormat.make(exp_bits, man_bits, variant)
        except FormatError as err:
            raise _unknown(name, str(err)) from None
    if m := _SIMPLE.match(key):
        family, bits = m.group(1), int(m.group(2))
        maker = {"nf": normal.make_normal_float, "dint": dint.make_dint, "bitmod": bitmod.make_bitmod}[family]
        try:
            return maker(bits)
        except FormatError as err:
            raise _unknown(name, str(err)) from None
    raise _unknown(name)
