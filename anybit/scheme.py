"""Quantization schemes: how values share scales.

A :class:`QScheme` is a frozen, validated description of one quantizer:

- ``format``: a number-format name (:mod:`anybit.formats`), e.g. ``int4``, ``fp4_e2m1``, ``nf4``;
- ``granularity``: who shares a scale (:class:`Granularity`): the whole ``tensor``; one per row of
  the 2-D view (``channel`` for a weight = per output channel, ``token`` for an activation = per
  token; both are "one scale per row"); a ``group`` of ``g`` consecutive values along the last
  (input) dimension; or a 2-D ``block`` of ``r x c`` values;
- ``zero_point``: ``none`` (symmetric), ``int`` (integer zero point, integer formats only:
  ``x = s * (q - z)``) or ``float`` (a float offset per group: ``x = s * q + m``, as llama.cpp's
  Q4_1);
- ``scale_format``: how scales are stored: ``fp32``/``fp16``/``bf16``; ``e8m0`` (power-of-two
  shared scale, OCP MX v1.0); ``e4m3`` (FP8 E4M3 group scales times one fp32 tensor scale,
  NVFP4); ``dual`` (DGQ: integer group scales 1..127 stored in 8 bits, times an fp32 per-channel
  scale, codes clamped so that an INT4 group dequantizes to INT8 values and an INT8 GEMM can run);
  ``dq`` (double quantization, bitsandbytes style: the fp32 group scales are themselves quantized
  to UINT8 with an fp32 scale and offset per 256 of them);
- ``clip``: how the range is chosen: ``minmax``, a fixed ``ratio`` of it, a ``percentile``
  (activations), or ``mse`` (grid search of the clipping ratio minimizing the group's squared
  error);
- ``dynamic``: for activations, scales computed at run time (True) or calibrated once (False).

Group sizes must divide the dimension they split; otherwise quantization raises a ``ShapeError``
that lists the valid sizes (kernels and exports then never meet ragged groups).

Strings. ``QScheme.parse("int4:g64:asym")`` reads the grammar in :data:`SCHEME_GRAMMAR`;
``str(scheme)`` writes the canonical string, which parses back to an equal scheme. Presets
(``mxfp4``, ``nvfp4``, ``nf4`` ...) live in :data:`PRESETS`, one line each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal

from anybit.errors import FormatError, SchemeError
from anybit.formats import FormatFamily, NumberFormat, get_format

GranularityKind = Literal["tensor", "channel", "token", "group", "block"]
ZeroPoint = Literal["none", "int", "float"]
ScaleFormat = Literal["fp32", "fp16", "bf16", "e8m0", "e4m3", "dual", "dq"]
ClipMethod = Literal["minmax", "ratio", "percentile", "mse"]

SCALE_FORMATS: tuple[str, ...] = ("fp32", "fp16", "bf16", "e8m0", "e4m3", "dual", "dq")
DQ_BLOCK = 256  # scales per double-quantization block (bitsandbytes)
MX_BLOCK = 32  # OCP MX v1.0 block size
NVFP4_BLOCK = 16

SCHEME_GRAMMAR = """\
scheme string: FORMAT_OR_PRESET[:OPTION]...
  granularity : tensor | channel (ch) | token (tok) | g{N} (group of N along the input dim)
                | b{R}x{C} (2-D block)                          default: channel
  zero point  : sym (default) | asym (integer zero for integer formats, float offset otherwise)
                | asym=int | asym=float
  scales      : scale=fp32|fp16|bf16 (default fp32) | scale=e8m0 (MX) | scale=e4m3 (NVFP4)
                | dual (DGQ: INT8 group scales x fp32 channel scale) | dq (double-quantized scales)
  clipping    : clip=minmax (default) | clip=mse | clip=p99.9 (percentile) | clip=0.9 (fixed ratio)
  activations : dynamic (default) | static
presets: {presets}
examples: int4:g64:asym  int3:g64  fp4_e2m1:g32  int4:g128:dual  mxfp4  nvfp4  nf4  int8:token
          fp8_e4m3:tensor:static  int8:channel:clip=mse  bitmod4:g128  dint4:g64:scale=fp16"""


@dataclass(frozen=True)
class Granularity:
    """Who shares a scale. Use the constructors: ``Granularity.group(64)`` etc."""

    kind: GranularityKind
    group_size: int | None = None
    block_shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("tensor", "channel", "token", "group", "block"):
            raise SchemeError(
                f"granularity kind {self.kind!r} is not one of tensor, channel, token, group, block"
            )
        if self.kind == "group" and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise SchemeError(f"group granularity needs a positive group size, got {self.group_size!r}")
        if self.kind != "group" and self.group_size is not None:
            raise SchemeError(f"{self.kind} granularity takes no group size (got {self.group_size})")
        if self.kind == "block":
            if (
                self.block_shape is None
                or len(self.block_shape) != 2
                or any((not isinstance(v, int)) or v < 1 for v in self.block_shape)
            ):
                raise SchemeError(f"block granularity needs (rows, cols) > 0, got {self.block_shape!r}")
        elif self.block_shape is not None:
            raise SchemeError(f"{self.kind} granularity takes no block shape")

    @staticmethod
    def tensor() -> Granularity:
        return Granularity("tensor")

    @staticmethod
    def channel() -> Granularity:
        return Granularity("channel")

    @staticmethod
    def token() -> Granularity:
        return Granularity("token")

    @staticmethod
    def group(size: int) -> Granularity:
        return Granularity("group", group_size=size)

    @staticmethod
    def block(rows: int, cols: int) -> Granularity:
        return Granularity("block", block_shape=(rows, cols))

    def __str__(self) -> str:
        if self.kind == "group":
            return f"g{self.group_size}"
        if self.kind == "block":
            assert self.block_shape is not None
            return f"b{self.block_shape[0]}x{self.block_shape[1]}"
        return self.kind


@dataclass(frozen=True)
class QScheme:
    """One quantizer's configuration; validated on construction (see module docstring)."""

    format: str
    granularity: Granularity = field(default_factory=Granularity.channel)
    zero_point: ZeroPoint = "none"
    scale_format: ScaleFormat = "fp32"
    clip: ClipMethod = "minmax"
    clip_value: float | None = None  # ratio in (0, 1] for "ratio", percent in (0, 100] for "percentile"
    dynamic: bool = True

    def __post_init__(self) -> None:
        try:
            fmt = get_format(self.format)
        except FormatError as err:
            raise SchemeError(f"scheme format: {err}") from None
        object.__setattr__(self, "format", fmt.name)  # canonical spelling
        if not isinstance(self.granularity, Granularity):
            raise SchemeError(f"granularity must be a Granularity, got {self.granularity!r}")
        if self.zero_point not in ("none", "int", "float"):
            raise SchemeError(f"zero_point must be none, int or float, got {self.zero_point!r}")
        if self.scale_format not in SCALE_FORMATS:
            raise SchemeError(f"scale_format {self.scale_format!r} is not one of {', '.join(SCALE_FORMATS)}")
        self._check_clip()
        self._check_consistency(fmt)

    def _check_clip(self) -> None:
        c, v = self.clip, self.clip_value
        if c == "minmax" or c == "mse":
            if v is not None:
                raise SchemeError(f"clip={c} takes no value (got {v})")
        elif c == "ratio":
            if v is None or not 0 < v <= 1:
                raise SchemeError(f"clip ratio must be in (0, 1], got {v!r}; e.g. clip=0.9")
        elif c == "percentile":
            if v is None or not 0 < v <= 100:
                raise SchemeError(f"clip percentile must be in (0, 100], got {v!r}; e.g. clip=p99.9")
        else:
            raise SchemeError(f"clip must be minmax, ratio, percentile or mse, got {c!r}")

    def _check_consistency(self, fmt: NumberFormat | FormatFamily) -> None:
        where = f"scheme {self}"
        if self.zero_point == "int" and not fmt.is_uniform_integer:
            raise SchemeError(
                f"{where}: an integer zero point needs an integer format, not {fmt.name}; "
                "use asym=float (a float offset) or a symmetric scheme"
            )
        if self.scale_format in ("e8m0", "e4m3") and self.zero_point != "none":
            raise SchemeError(f"{where}: scale={self.scale_format} (MX/NVFP4 style) is symmetric; drop asym")
        if self.scale_format in ("e8m0", "e4m3", "dual") and not fmt.signed and self.zero_point == "none":
            raise SchemeError(f"{where}: scale={self.scale_format} needs a signed format, not {fmt.name}")
        if self.scale_format == "dual":
            if not fmt.is_uniform_integer:
                raise SchemeError(f"{where}: dual-grained scales (DGQ) need an integer format such as int4")
            if self.granularity.kind != "group":
                raise SchemeError(f"{where}: dual-grained scales need group granularity, e.g. int4:g128:dual")
        if self.scale_format in ("e8m0", "e4m3", "dual", "dq") and self.granularity.kind in (
            "tensor",
            "channel",
            "token",
        ):
            raise SchemeError(
                f"{where}: scale={self.scale_format} is for group or block scales; use e.g. :g32 with it"
            )
        if self.zero_point == "float" and self.scale_format == "dual":
            raise SchemeError(
                f"{where}: dual-grained scales take an integer zero point (asym), not a float one"
            )

    # ----- derived ----------------------------------------------------------------------------
    @property
    def number_format(self) -> NumberFormat | FormatFamily:
        return get_format(self.format)

    @property
    def bits(self) -> int:
        return self.number_format.bits

    def with_(self, **changes: object) -> QScheme:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    # ----- strings ----------------------------------------------------------------------------
    def __str__(self) -> str:
        parts = [self.format, str(self.granularity)]
        if self.zero_point != "none":
            default_zp = "int" if get_format(self.format).is_uniform_integer else "float"
            parts.append("asym" if self.zero_point == default_zp else f"asym={self.zero_point}")
        if self.scale_format == "dual":
            parts.append("dual")
        elif self.scale_format == "dq":
            parts.append("dq")
        elif self.scale_format != "fp32" or self.format in PRESETS:
            # a format named like a preset (nf4) needs its scale spelled out to parse back
            parts.append(f"scale={self.scale_format}")
        if self.clip == "mse":
            parts.append("clip=mse")
        elif self.clip == "ratio":
            parts.append(f"clip={self.clip_value:g}")
        elif self.clip == "percentile":
            parts.append(f"clip=p{self.clip_value:g}")
        if not self.dynamic:
            parts.append("static")
        return ":".join(parts)

    @staticmethod
    def parse(text: str) -> QScheme:
        """Parse a scheme string (grammar in :data:`SCHEME_GRAMMAR`)."""
        return parse_scheme(text)


# ----- presets: one line each ------------------------------------------------------------------
PRESETS: dict[str, QScheme] = {
    # OCP Microscaling v1.0: blocks of 32 elements share one E8M0 (power of two) scale.
    "mxfp4": QScheme("fp4_e2m1", Granularity.group(MX_BLOCK), scale_format="e8m0"),
    "mxfp6_e3m2": QScheme("fp6_e3m2", Granularity.group(MX_BLOCK), scale_format="e8m0"),
    "mxfp6_e2m3": QScheme("fp6_e2m3", Granularity.group(MX_BLOCK), scale_format="e8m0"),
    "mxfp8_e4m3": QScheme("fp8_e4m3", Granularity.group(MX_BLOCK), scale_format="e8m0"),
    "mxfp8_e5m2": QScheme("fp8_e5m2", Granularity.group(MX_BLOCK), scale_format="e8m0"),
    # MXINT8: int8 elements (implicit 2^-6) under an E8M0 scale; we use the symmetric range [-127, 127].
    "mxint8": QScheme("int8b", Granularity.group(MX_BLOCK), scale_format="e8m0"),
    # NVIDIA NVFP4: FP4 E2M1 in blocks of 16, FP8 E4M3 block scales, one fp32 tensor scale.
    "nvfp4": QScheme("fp4_e2m1", Granularity.group(NVFP4_BLOCK), scale_format="e4m3"),
    # bitsandbytes NF4: absmax blocks of 64, scales double-quantized (8-bit, blocks of 256).
    "nf4": QScheme("nf4", Granularity.group(64), scale_format="dq"),
}


_GROUP = re.compile(r"^g(\d+)$")
_BLOCK = re.compile(r"^b(\d+)x(\d+)$")
_PCT = re.compile(r"^p(\d+(?:\.\d*)?)$")


def scheme_grammar() -> str:
    return SCHEME_GRAMMAR.replace("{presets}", " ".join(PRESETS))


def _bad(text: str, why: str) -> SchemeError:
    return SchemeError(f"invalid scheme {text!r}: {why}\n{scheme_grammar()}")


def parse_scheme(text: str) -> QScheme:
    """Parse ``FORMAT_OR_PRESET[:OPTION]...`` into a validated :class:`QScheme`."""
    if isinstance(text, QScheme):
        return text
    if not isinstance(text, str) or not text.strip():
        raise _bad(str(text), "empty scheme string")
    head, *options = [t.strip().lower() for t in text.strip().split(":")]
    fields: dict[str, object] = {}
    if head in PRESETS:
        base = PRESETS[head]
        fields = {
            "format": base.format,
            "granularity": base.granularity,
            "zero_point": base.zero_point,
            "scale_format": base.scale_format,
            "clip": base.clip,
            "clip_value": base.clip_value,
            "dynamic": base.dynamic,
        }
    else:
        try:
            get_format(head)
        except FormatError:
            raise _bad(text, f"{head!r} is neither a preset nor a number format") from None
        fields["format"] = head
    asym: str | None = None
    for opt in options:
        if not opt:
            raise _bad(text, "empty option (two colons in a row?)")
        if opt in ("tensor", "channel", "ch", "token", "tok"):
            kind = {"ch": "channel", "tok": "token"}.get(opt, opt)
            fields["granularity"] = Granularity(kind)  # type: ignore[arg-type]
        elif m := _GROUP.match(opt):
            if int(m.group(1)) < 1:
                raise _bad(text, "group size must be positive")
            fields["granularity"] = Granularity.group(int(m.group(1)))
        elif m := _BLOCK.match(opt):
            fields["granularity"] = Granularity.block(int(m.group(1)), int(m.group(2)))
        elif opt == "sym":
            asym = "none"
        elif opt in ("asym", "asym=int", "asym=float"):
            asym = opt.partition("=")[2] or "auto"
        elif opt == "dual":
            fields["scale_format"] = "dual"
        elif opt == "dq":
            fields["scale_format"] = "dq"
        elif opt.startswith("scale="):
            value = opt.partition("=")[2]
            if value not in SCALE_FORMATS:
                raise _bad(text, f"scale={value} is not one of {', '.join(SCALE_FORMATS)}")
            fields["scale_format"] = value
        elif opt.startswith("clip="):
            value = opt.partition("=")[2]
            if value in ("minmax", "mse"):
                fields["clip"], fields["clip_value"] = value, None
            elif m := _PCT.match(value):
                fields["clip"], fields["clip_value"] = "percentile", float(m.group(1))
            else:
                try:
                    ratio = float(value)
                except ValueError:
                    raise _bad(text, f"clip={value} is not minmax, mse, p<percent> or a ratio") from None
                fields["clip"], fields["clip_value"] = "ratio", ratio
        elif opt in ("static", "dynamic"):
            fields["dynamic"] = opt == "dynamic"
        else:
            raise _bad(text, f"unknown option {opt!r}")
    if asym is not None:
        if asym == "auto":
            asym = "int" if get_format(str(fields["format"])).is_uniform_integer else "float"
        fields["zero_point"] = asym
    try:
        return QScheme(**fields)  # type: ignore[arg-type]
    except SchemeError as err:
        raise _bad(text, str(err)) from None
