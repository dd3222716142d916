"""The generic number format: a finite sorted set of values on a unit scale.

Every format in anybit, however it is built (integer grid, IEEE-like ExMy, NormalFloat, dINT,
BitMoD member), ends up as the same object:

- ``levels``: the sorted, de-duplicated representable finite values (float64, unit scale);
- ``level_codes``: the bit pattern stored for each level (what a kernel reads);
- ``decode_table``: the value of each of the ``2**bits`` codes (NaN/Inf for special codes, so a
  decode of any stored byte is defined);
- ``level_even``: which levels win a tie (see below).

Encoding is "index of the nearest level", done by one generic path (``searchsorted`` on the
midpoints) that serves every format. Subclasses may add fast paths (round/clamp for integers,
exponent/mantissa arithmetic for floats); a table-driven test holds every fast path equal to the
generic one bit for bit.

Tie rule (stated once, used everywhere): a value exactly half-way between two levels goes to the
level marked *even*: for integers the even integer, for floating point the code with an even
mantissa (IEEE round-half-to-even, which is what ``ml_dtypes`` casts do), for table formats (NF,
dINT, BitMoD) the even code index. If both or neither neighbours are even, the one of smaller
magnitude wins.

Out-of-range values saturate to the largest/smallest level (quantizers clamp; they never produce
Inf or NaN codes). Non-finite input is an error: it always means a bug upstream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from anybit.errors import FormatError, InputError


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise ``InputError`` if ``x`` is empty or holds NaN/Inf, naming ``what`` and the fix."""
    if x.numel() == 0:
        raise InputError(f"{what} is empty (shape {tuple(x.shape)}); quantization needs at least one value.")
    if not x.is_floating_point():
        raise InputError(f"{what} has dtype {x.dtype}; pass a floating-point tensor (float32/16, bfloat16).")
    if not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise InputError(
            f"{what} holds {n_nan} NaN and {n_inf} Inf values; quantization needs finite input. "
            "Check the model weights or the calibration activations that produced it."
        )


@dataclass(frozen=True, eq=False)
class NumberFormat:
    """One number format: ``bits`` per code and its finite ``levels`` at unit scale.

    Build instances through the subclasses' constructors or :func:`anybit.formats.get_format`.
    """

    name: str
    bits: int
    levels: torch.Tensor  # float64, sorted ascending, unique, finite
    level_codes: torch.Tensor  # int64, code of each level
    level_even: torch.Tensor  # bool, which level wins a tie
    decode_table: torch.Tensor  # float64 [2**bits], value of every code (NaN/Inf allowed)
    negative_zero_code: int | None = None  # code for -0 (FP formats), used when x < 0 rounds to 0
    description: str = ""
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ----- construction helpers ---------------------------------------------------------------
    @staticmethod
    def from_values(
        name: str,
        bits: int,
        values: Sequence[float] | torch.Tensor,
        description: str = "",
    ) -> NumberFormat:
        """A table format whose code is the index of the value in ascending order."""
        levels = torch.as_tensor(values, dtype=torch.float64).flatten()
        levels, _ = torch.sort(levels)
        if levels.numel() > 2**bits:
            raise FormatError(f"format {name!r}: {levels.numel()} values do not fit in {bits} bits")
        if levels.numel() < 2:
            raise FormatError(f"format {name!r}: needs at least two values, got {levels.tolist()}")
        if bool((levels[1:] == levels[:-1]).any()):
            raise FormatError(f"format {name!r}: values must be distinct, got {levels.tolist()}")
        codes = torch.arange(levels.numel(), dtype=torch.int64)
        table = torch.full((2**bits,), math.nan, dtype=torch.float64)
        table[: levels.numel()] = levels
        return NumberFormat(name, bits, levels, codes, codes % 2 == 0, table, None, description)

    # ----- properties -------------------------------------------------------------------------
    @property
    def members(self) -> tuple[NumberFormat, ...]:
        """A single format is a family of one (see :class:`FormatFamily`)."""
        return (self,)

    @property
    def id_bits(self) -> int:
        return 0

    @property
    def num_levels(self) -> int:
        return int(self.levels.numel())

    @property
    def min_level(self) -> float:
        return float(self.levels[0])

    @property
    def max_level(self) -> float:
        return float(self.levels[-1])

    @property
    def max_abs(self) -> float:
        """Largest magnitude representable (either side)."""
        return max(-self.min_level, self.max_level)

    @property
    def signed(self) -> bool:
        return self.min_level < 0

    @property
    def symmetric_max(self) -> float:
        """Largest magnitude reachable on *both* sides; symmetric scales map absmax to it.

        For int4 ([-8, 7]) this is 7: absmax maps to +-7 and nothing is clipped; -8 is reached only
        by rounding. For formats symmetric about zero it is simply the largest level.
        """
        if not self.signed:
            return self.max_level
        return min(-self.min_level, self.max_level)

    @property
    def is_uniform_integer(self) -> bool:
        """True when the levels are consecutive integers (so integer zero points make sense)."""
        lv = self.levels
        return bool(torch.all(lv == torch.round(lv))) and bool(torch.all(lv[1:] - lv[:-1] == 1))

    def __repr__(self) -> str:
        return f"NumberFormat({self.name!r}, bits={self.bits}, levels={self.num_levels})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NumberFormat) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    # ----- cached derived tables --------------------------------------------------------------
    def _tables(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(levels, midpoints, tie_goes_up) in ``dtype`` (float64 if midpoints are inexact)."""
        key = ("tables", dtype)
        if key not in self._cache:
            lv = self.levels
            mid = (lv[1:] + lv[:-1]) / 2
            work = dtype if bool(torch.all(mid.to(dtype).double() == mid)) else torch.float64
            even = self.level_even
            lower_abs, upper_abs = lv[:-1].abs(), lv[1:].abs()
            same_parity = even[:-1] == even[1:]
            tie_up = torch.where(same_parity, upper_abs < lower_abs, even[1:])
            self._cache[key] = (lv.to(work), mid.to(work), tie_up)
        return self._cache[key]

    def _decode_table(self, dtype: torch.dtype) -> torch.Tensor:
        key = ("decode", dtype)
        if key not in self._cache:
            self._cache[key] = self.decode_table.to(dtype)
        return self._cache[key]

    # ----- the generic path -------------------------------------------------------------------
    def nearest_index_generic(self, x: torch.Tensor) -> torch.Tensor:
        """Index into ``levels`` of the nearest level (tie rule in the module docstring)."""
        _, mid, tie_up = self._tables(x.dtype)
        xw = x.to(mid.dtype)
        idx = torch.searchsorted(mid, xw.contiguous(), right=False)  # count of midpoints < x
        at_mid = idx.clamp(max=mid.numel() - 1)
        tie = (idx < mid.numel()) & (xw == mid[at_mid])
        return idx + (tie & tie_up[at_mid]).to(idx.dtype)

    def encode_generic(self, x: torch.Tensor) -> torch.Tensor:
        idx = self.nearest_index_generic(x)
        codes = self.level_codes[idx]
        if self.negative_zero_code is not None:
            neg_zero = (self.levels[idx] == 0) & torch.signbit(x)
            codes = torch.where(neg_zero, torch.full_like(codes, self.negative_zero_code), codes)
        return codes.to(torch.uint8)

    def round_generic(self, x: torch.Tensor) -> torch.Tensor:
        return self.levels.to(x.dtype)[self.nearest_index_generic(x)]

    # ----- fast paths (subclasses override; must agree with the generic path) -----------------
    def _encode_fast(self, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def _round_fast(self, x: torch.Tensor) -> torch.Tensor | None:
        return None

    # ----- public API -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """Codes (uint8) of the nearest levels to ``x`` (already divided by its scale)."""
        if check:
            check_finite(x, f"input to {self.name} encode")
        out = self._encode_fast(x)
        return out if out is not None else self.encode_generic(x)

    def decode(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Values of ``codes`` at unit scale."""
        if codes.dtype not in (torch.uint8, torch.int16, torch.int32, torch.int64):
            raise InputError(f"{self.name} decode expects integer codes, got dtype {codes.dtype}")
        return self._decode_table(dtype)[codes.long()]

    def round(self, x: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """Nearest representable value (``decode(encode(x))`` without materializing codes)."""
        if check:
            check_finite(x, f"input to {self.name} round")
        out = self._round_fast(x)
        return out if out is not None else self.round_generic(x)


@dataclass(frozen=True, eq=False)
class FormatFamily:
    """A set of same-width formats; one member is chosen per group and its id stored (BitMoD)."""

    name: str
    bits: int
    members: tuple[NumberFormat, ...]
    description: str = ""
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise FormatError(f"family {self.name!r} needs at least two members")
        for m in self.members:
            if m.bits != self.bits:
                raise FormatError(f"family {self.name!r}: member {m.name} has {m.bits} bits, not {self.bits}")

    def __repr__(self) -> str:
        return f"FormatFamily({self.name!r}, bits={self.bits}, members={[m.name for m in self.members]})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FormatFamily) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    @property
    def id_bits(self) -> int:
        return max(1, math.ceil(math.log2(len(self.members))))

    @property
    def signed(self) -> bool:
        return all(m.signed for m in self.members)

    @property
    def max_abs(self) -> float:
        return max(m.max_abs for m in self.members)

    @property
    def is_uniform_integer(self) -> bool:
        return False

    def decode_tables(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[members, 2**bits] value of each code for each member."""
        key = ("decode", dtype)
        if key not in self._cache:
            self._cache[key] = torch.stack([m.decode_table for m in self.members]).to(dtype)
        return self._cache[key]

    def decode(
        self, codes: torch.Tensor, type_ids: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Values of ``codes`` where ``type_ids`` (broadcastable to codes) picks the member."""
        table = self.decode_tables(dtype)
        flat = type_ids.long() * (2**self.bits) + codes.long()
        return table.flatten()[flat]


Format = NumberFormat | FormatFamily
