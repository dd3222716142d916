"""BitMoD mixture of data types (Chen et al., "BitMoD: Bit-serial Mixture-of-Datatype LLM
Acceleration", HPCA 2025; public code abdelfattah-lab/BitMoD-HPCA-25, quant_weight.py).

Idea: a low-bit FP grid (FP4 E2M1, FP3) has a redundant negative-zero code. BitMoD repurposes it
as one *special value* per type, and each group of weights picks the type (and so the special
value) that quantizes it with the least error; a 2-bit type id is stored per group.

Members (unit scale, in E2M1 units; the code's tables are these values x2):

- bitmod4 (4 bits): FP4 E2M1 ``{0, +-0.5, +-1, +-1.5, +-2, +-3, +-4, +-6}`` plus one of
  ``+5`` (er_pos, extra resolution), ``-5`` (er_neg), ``+8`` (ea_pos, extra asymmetry), ``-8`` (ea_neg);
- bitmod3 (3 bits): FP3 ``{0, +-1, +-2, +-4}`` plus one of ``+3``, ``-3``, ``+6``, ``-6``.

Type ids 0..3 follow that order (BitMoD's ``mixed_bitmod`` list). Codes are level indices of the
chosen member. Storage: k bits per code + 2 bits per group + the group scale (BitMoD: fp16, group
128, so bitmod4:g128:scale=fp16 costs 4 + 18/128 = 4.14 bits/weight).

Selection: each member quantizes the group; the least squared error wins (ties: lowest id, as the
paper's strict "<" comparison does).

Departure: BitMoD scales a group by ``absmax / max|levels|`` (so an ea_pos group maps a negative
outlier beyond -6 by saturation). anybit's symmetric scale is the smallest one that clips nothing,
``max(max x / max L, min x / min L)`` (see :mod:`anybit.scales`), which for these asymmetric members
lets e.g. ea_pos map a positive outlier to +8 and the negative extreme to at most -6. Rounding
ties go to the even code index (BitMoD's midpoint test sends ties down); ties have measure zero on
real weights.
"""

from __future__ import annotations

from anybit.errors import FormatError
from anybit.formats.base import FormatFamily, NumberFormat

FP4_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
FP3_VALUES = (0.0, 1.0, 2.0, 4.0)
SPECIAL_VALUES = {
    4: (("er_pos", 5.0), ("er_neg", -5.0), ("ea_pos", 8.0), ("ea_neg", -8.0)),
    3: (("er_pos", 3.0), ("er_neg", -3.0), ("ea_pos", 6.0), ("ea_neg", -6.0)),
}


def make_bitmod(bits: int) -> FormatFamily:
    if bits not in SPECIAL_VALUES:
        raise FormatError(f"bitmod formats take 3 or 4 bits, got bitmod{bits}")
    base = FP4_E2M1_VALUES if bits == 4 else FP3_VALUES
    symmetric = sorted({v for b in base for v in (b, -b)})
    members = tuple(
        NumberFormat.from_values(
            f"bitmod{bits}.{label}", bits, [*symmetric, special], f"FP{bits} + special value {special:+g}"
        )
        for label, special in SPECIAL_VALUES[bits]
    )
    return FormatFamily(
        f"bitmod{bits}", bits, members, f"BitMoD {bits}-bit mixture: FP{bits} + one special value per group"
    )
