"""QScheme: strict validation, the string grammar and presets."""

from __future__ import annotations

import pytest

from anybit import PRESETS, Granularity, QScheme, parse_scheme
from anybit.errors import SchemeError

EXAMPLES = [
    "int4:g64:asym",
    "int3:g64",
    "fp4_e2m1:g32",
    "int4:g128:dual",
    "int4:g128:dual:asym",
    "int8:token",
    "int8:channel",
    "int8:tensor:static",
    "fp8_e4m3:tensor:static",
    "int8:channel:clip=mse",
    "int8:token:clip=p99.9",
    "int4:g32:clip=0.9",
    "bitmod4:g128:scale=fp16",
    "dint4:g64:scale=fp16",
    "uint4:g32:asym=float:scale=fp16",
    "nf4:g64:scale=fp32",
    "int4:b64x64",
    "int2bb:g64:asym",
    "fp6_e3m2:g32:scale=bf16",
    *PRESETS,
]


@pytest.mark.parametrize("text", EXAMPLES)
def test_string_round_trip(text: str) -> None:
    scheme = parse_scheme(text)
    again = parse_scheme(str(scheme))
    assert again == scheme
    assert str(again) == str(scheme)


def test_presets_are_what_the_specs_say() -> None:
    assert parse_scheme("mxfp4") == QScheme("fp4_e2m1", Granularity.group(32), scale_format="e8m0")
    assert parse_scheme("nvfp4") == QScheme("fp4_e2m1", Granularity.group(16), scale_format="e4m3")
    assert parse_scheme("nf4") == QScheme("nf4", Granularity.group(64), scale_format="dq")
    assert parse_scheme("mxfp6_e3m2").format == "fp6_e3m2"
    assert parse_scheme("mxfp6_e2m3").format == "fp6_e2m3"
    assert parse_scheme("mxfp8_e4m3").format == "fp8_e4m3"
    assert parse_scheme("mxint8").granularity == Granularity.group(32)


def test_options_override_a_preset() -> None:
    scheme = parse_scheme("mxfp4:clip=mse")
    assert scheme.scale_format == "e8m0" and scheme.clip == "mse"
    assert parse_scheme("nf4:g128").granularity == Granularity.group(128)


def test_defaults_and_canonical_spelling() -> None:
    scheme = parse_scheme("INT4")
    assert scheme.granularity == Granularity.channel() and scheme.zero_point == "none"
    assert str(parse_scheme("fp8_e4m3fn:ch")) == "fp8_e4m3:channel"
    assert parse_scheme("int4:asym").zero_point == "int"
    assert parse_scheme("fp4_e2m1:g32:asym").zero_point == "float"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("int4:g0", "group size"),
        ("int4:g64:foo", "unknown option 'foo'"),
        ("int4::g64", "empty option"),
        ("int9:g64", "neither a preset nor a number format"),
        ("", "empty scheme"),
        ("fp4_e2m1:g32:asym=int", "integer zero point needs an integer format"),
        ("fp4_e2m1:g32:scale=e9m0", "scale=e9m0 is not one of"),
        ("mxfp4:asym", "symmetric"),
        ("fp4_e2m1:g32:dual", "need an integer format"),
        ("int4:channel:dual", "group granularity"),
        ("int4:channel:scale=e8m0", "group or block scales"),
        ("int4:g64:clip=p0", "percentile must be in (0, 100]"),
        ("int4:g64:clip=1.5", "ratio must be in (0, 1]"),
        ("int4:g64:clip=best", "is not minmax, mse"),
        ("int4:g128:dual:asym=float", "integer zero point"),
    ],
)
def test_bad_scheme_strings_name_the_problem_and_print_the_grammar(text: str, fragment: str) -> None:
    with pytest.raises(SchemeError) as err:
        parse_scheme(text)
    message = str(err.value)
    assert fragment in message
    assert "scheme string: FORMAT_OR_PRESET" in message and "examples:" in message


def test_scheme_is_frozen_and_validates_fields() -> None:
    scheme = parse_scheme("int4:g64")
    with pytest.raises(AttributeError):
        scheme.format = "int3"  # type: ignore[misc]
    with pytest.raises(SchemeError, match="zero_point"):
        QScheme("int4", zero_point="maybe")  # type: ignore[arg-type]
    with pytest.raises(SchemeError, match="granularity kind"):
        Granularity("row")  # type: ignore[arg-type]
    with pytest.raises(SchemeError, match="block"):
        Granularity("block", block_shape=(0, 4))
