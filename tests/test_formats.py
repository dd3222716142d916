"""Number formats: nearest-level encoding, fast == generic paths, ml_dtypes equivalence, tables."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anybit.errors import FormatError, InputError
from anybit.formats import FormatFamily, NumberFormat, get_format

ALL_FORMATS = [
    *[f"int{k}" for k in range(2, 9)],
    *[f"uint{k}" for k in range(2, 9)],
    *[f"int{k}b" for k in range(2, 9)],
    "int2bb",
    "int1bb",
    "fp8_e4m3",
    "fp8_e5m2",
    "fp8_e4m3_ieee",
    "fp8_e3m4",
    "fp8_e2m5",
    "fp8_e5m2_fn",
    "fp7_e3m3",
    "fp6_e3m2",
    "fp6_e2m3",
    "fp6_e4m1",
    "fp5_e2m2",
    "fp5_e3m1",
    "fp4_e2m1",
    "fp4_e3m0",
    "fp4_e1m2",
    "fp3_e1m1",
    "fp3_e2m0",
    *[f"nf{k}" for k in range(2, 9)],
    *[f"dint{k}" for k in range(3, 9)],
]
FAMILY_MEMBERS = [m.name for k in (3, 4) for m in get_format(f"bitmod{k}").members]

# name in anybit -> ml_dtypes type: must agree bit for bit (encode within range, decode everywhere)
ML_DTYPES_PAIRS = {
    "fp8_e4m3": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
    "fp8_e4m3_ieee": ml_dtypes.float8_e4m3,
    "fp8_e3m4": ml_dtypes.float8_e3m4,
    "fp6_e3m2": ml_dtypes.float6_e3m2fn,
    "fp6_e2m3": ml_dtypes.float6_e2m3fn,
    "fp4_e2m1": ml_dtypes.float4_e2m1fn,
}

BNB_NF4 = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]  # bitsandbytes functional.py NF4 table


def _member(name: str) -> NumberFormat:
    if name in FAMILY_MEMBERS:
        family = get_format(name.split(".")[0])
        assert isinstance(family, FormatFamily)
        return next(m for m in family.members if m.name == name)
    fmt = get_format(name)
    assert isinstance(fmt, NumberFormat)
    return fmt


def _probe_values(fmt: NumberFormat) -> torch.Tensor:
    """Levels, midpoints (ties), near-midpoints, out-of-range and random values."""
    lv = fmt.levels.float()
    mid = (lv[1:] + lv[:-1]) / 2
    span = float(lv[-1] - lv[0])
    eps = torch.finfo(torch.float32).eps
    gen = torch.Generator().manual_seed(0)
    rand = (torch.rand(20000, generator=gen) * 1.4 - 0.7) * span * 2
    return torch.cat(
        [
            lv,
            mid,
            mid * (1 + eps),
            mid * (1 - eps),
            lv[:1] * 3,
            lv[-1:] * 3,
            torch.tensor([0.0, -0.0, 1e-30, -1e-30]),
            rand,
        ]
    )


@pytest.mark.parametrize("name", ALL_FORMATS + FAMILY_MEMBERS)
def test_levels_are_sorted_distinct_and_fit_in_bits(name: str) -> None:
    fmt = _member(name)
    assert fmt.num_levels <= 2**fmt.bits
    assert torch.all(fmt.levels[1:] > fmt.levels[:-1])
    assert fmt.decode_table.numel() == 2**fmt.bits
    assert torch.equal(fmt.decode_table[fmt.level_codes], fmt.levels)


@pytest.mark.parametrize("name", ALL_FORMATS + FAMILY_MEMBERS)
def test_fast_path_equals_generic_path_bit_for_bit(name: str) -> None:
    fmt = _member(name)
    x = _probe_values(fmt)
    assert torch.equal(fmt.encode(x), fmt.encode_generic(x))
    assert torch.equal(fmt.round(x), fmt.round_generic(x))
    assert torch.equal(fmt.decode(fmt.encode(x)), fmt.round(x))


@pytest.mark.parametrize("name", ALL_FORMATS + FAMILY_MEMBERS)
def test_decode_of_encoded_level_is_the_level(name: str) -> None:
    fmt = _member(name)
    lv = fmt.levels.float()
    assert torch.equal(fmt.decode(fmt.encode(lv)), lv)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(ALL_FORMATS + FAMILY_MEMBERS),
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=64),
)
def test_encode_picks_a_nearest_level(name: str, values: list[float]) -> None:
    fmt = _member(name)
    x = torch.tensor(values, dtype=torch.float32)
    got = fmt.decode(fmt.encode(x), torch.float64)
    best = (fmt.levels.unsqueeze(0) - x.double().unsqueeze(1)).abs().min(dim=1).values
    assert torch.all((got - x.double()).abs() <= best)


@pytest.mark.parametrize("name", sorted(ML_DTYPES_PAIRS))
def test_decode_matches_ml_dtypes_for_every_bit_pattern(name: str) -> None:
    fmt = _member(name)
    dtype = ML_DTYPES_PAIRS[name]
    patterns = np.arange(2**fmt.bits, dtype=np.uint8)
    reference = patterns.view(dtype).astype(np.float64)
    ours = fmt.decode(torch.from_numpy(patterns), torch.float64).numpy()
    np.testing.assert_array_equal(ours, reference)  # NaN == NaN and Inf == Inf for assert_array_equal


@pytest.mark.parametrize("name", sorted(ML_DTYPES_PAIRS))
def test_encode_matches_ml_dtypes_cast_within_range(name: str) -> None:
    fmt = _member(name)
    dtype = ML_DTYPES_PAIRS[name]
    x = _probe_values(fmt)
    x = x[x.abs() <= fmt.max_abs]  # beyond the range we saturate, ml_dtypes gives Inf/NaN
    reference = x.numpy().astype(dtype).view(np.uint8)
    ours = fmt.encode(x).numpy()
    np.testing.assert_array_equal(ours, reference)


def test_nf4_equals_bitsandbytes_table() -> None:
    assert get_format("nf4").levels.float().tolist() == BNB_NF4


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("int4", 0.5, 0.0),  # ties to even integer
        ("int4", 1.5, 2.0),
        ("int4", -2.5, -2.0),
        ("int4", 100.0, 7.0),  # saturation
        ("int4", -100.0, -8.0),
        ("int4b", -100.0, -7.0),
        ("fp4_e2m1", 2.5, 2.0),  # ties to even mantissa
        ("fp4_e2m1", 5.0, 4.0),
        ("fp4_e2m1", 0.25, 0.0),
        ("fp4_e2m1", 0.75, 1.0),
        ("fp4_e2m1", 7.0, 6.0),
        ("fp8_e4m3", 1000.0, 448.0),
        ("fp8_e5m2", 1e6, 57344.0),
        ("dint4", 0.3, 0.5),
        ("dint4", 0.2, 0.0),
        ("int2bb", 1.7, 2.0),
    ],
)
def test_rounding_rules(name: str, value: float, expected: float) -> None:
    fmt = _member(name)
    assert fmt.round(torch.tensor([value])).item() == expected


def test_negative_values_rounding_to_zero_keep_the_sign_code() -> None:
    fmt = _member("fp8_e4m3")
    assert fmt.encode(torch.tensor([-1e-6])).item() == 0x80
    assert fmt.encode(torch.tensor([1e-6])).item() == 0


@pytest.mark.parametrize(
    ("name", "levels"),
    [
        ("int3", [-4, -3, -2, -1, 0, 1, 2, 3]),
        ("uint2", [0, 1, 2, 3]),
        ("int3b", [-3, -2, -1, 0, 1, 2, 3]),
        ("int2bb", [-2, -1, 0, 1, 2]),
        ("fp4_e2m1", [-6, -4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4, 6]),
        ("dint3", [-2, -1, -0.5, 0, 0.5, 1, 2]),
        ("fp3_e1m1", [-3, -2, -1, 0, 1, 2, 3]),
    ],
)
def test_small_format_levels_written_out(name: str, levels: list[float]) -> None:
    assert _member(name).levels.tolist() == levels


def test_fp_special_values_and_maxima() -> None:
    assert get_format("fp8_e4m3").max_level == 448
    assert get_format("fp8_e5m2").max_level == 57344
    assert get_format("fp8_e4m3_ieee").max_level == 240
    assert get_format("fp6_e3m2").max_level == 28
    assert get_format("fp6_e2m3").max_level == 7.5
    assert get_format("fp5_e2m2_fn").max_level == 6.0  # top code 0.11.11 is NaN: max 1.5 * 2^2
    assert get_format("fp5_e2m2").max_level == 7.0  # all finite: 1.75 * 2^2
    assert math.isnan(get_format("fp8_e4m3").decode_table[0x7F].item())
    assert math.isinf(get_format("fp8_e5m2").decode_table[0x7C].item())
    assert get_format("fp8_e4m3fn") is get_format("fp8_e4m3")
    assert get_format("fp6_e3m2fn").name == "fp6_e3m2"


def test_bitmod_family_members_and_ids() -> None:
    family = get_format("bitmod4")
    assert isinstance(family, FormatFamily)
    specials = [
        sorted(set(m.levels.tolist()) - set(get_format("fp4_e2m1").levels.tolist())) for m in family.members
    ]
    assert specials == [[5.0], [-5.0], [8.0], [-8.0]]
    assert family.id_bits == 2
    family3 = get_format("bitmod3")
    assert [m.num_levels for m in family3.members] == [8, 8, 8, 8]


@pytest.mark.parametrize(
    "bad",
    [
        "int9",
        "int1",
        "uint1",
        "fp9_e4m4",
        "fp8_e4m2",
        "fp2_e1m0",
        "nf1",
        "nf9",
        "dint2",
        "bitmod5",
        "int4bb",
        "float4",
        "",
        "uint4b",
    ],
)
def test_bad_format_names_list_the_grammar(bad: str) -> None:
    with pytest.raises(FormatError) as err:
        get_format(bad)
    assert "number formats" in str(err.value) and "examples" in str(err.value)
    assert repr(bad) in str(err.value)


def test_nan_inf_and_empty_input_are_clear_errors() -> None:
    fmt = get_format("int4")
    with pytest.raises(InputError, match="NaN"):
        fmt.encode(torch.tensor([1.0, float("nan")]))
    with pytest.raises(InputError, match="Inf"):
        fmt.round(torch.tensor([float("inf")]))
    with pytest.raises(InputError, match="empty"):
        fmt.encode(torch.tensor([]))
    with pytest.raises(InputError, match="dtype"):
        fmt.encode(torch.tensor([1, 2]))
