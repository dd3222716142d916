"""Scales: choosing each group's range, and storing scales in their scale format.

Range (per group of values ``x``; ``L`` are the format's levels):

- ``minmax``: ``[lo, hi] = [min x, max x]``, widened to include 0 (so 0 is always exact);
- ``ratio r``: the min-max range times ``r``;
- ``percentile p``: ``lo, hi`` = the (100-p)-th and p-th percentiles of ``x``; meant for
  activations with outliers;
- ``mse``: the ratio ``r`` in a grid of :data:`MSE_GRID_POINTS` values from 1 down to
  :data:`MSE_MIN_RATIO` that minimizes the group's squared error ``sum (Q_r(x) - x)^2``, with the
  scale rounded to its storage format inside the loop (so the search sees what will be stored).

Scale from range: symmetric ``s = max(hi / max L, lo / min L)``, the smallest scale that clips
neither end (for a grid symmetric about zero that is ``absmax / max L``; for int4 ``[-8, 7]`` a
group whose negative extreme dominates uses the -8 level, as llama.cpp's Q4_0 does with a signed
scale); asymmetric ``s = (hi - lo) / (max L - min L)``. For
E8M0 (OCP MX v1.0, section 6.3) the shared scale is ``2^(floor(log2 a) - emax)`` with ``emax`` the
exponent of the largest power of two in the element grid (FP4 E2M1: 2, FP8 E4M3: 8, INT8: 6);
values above the grid saturate, as the spec says.

Scale formats (:class:`anybit.scheme.QScheme` ``scale_format``):

- ``fp32``/``fp16``/``bf16``: round to the dtype (a non-zero scale never underflows to zero);
- ``e8m0``: power of two, exponent clamped to [-127, 127] (stored as ``torch.float8_e8m0fnu``);
- ``e4m3`` (NVFP4): ``S = max(s) / 448`` per tensor (= amax / (6 * 448) for FP4), block scale
  ``e4m3(s / S)``, effective ``e4m3(s / S) * S``; stored as a ``QTensor`` of FP8 E4M3 codes with
  one fp32 scale;
- ``dual`` (DGQ, Zhang et al. 2023, code ilur98/DGQ): per channel (row) an fp32 scale
  ``s_c = r * absmax(row) / 127`` (the INT8 grid of the row; ``r`` = 1 or searched), group scales
  ``S2 = round(s_g / s_c)`` in ``1..127`` stored in 8 bits, effective ``S2 * s_c``; codes are
  clamped per group so that ``S2 * (q - z)`` stays in ``[-127, 127]``: the INT8 weight of an INT8
  GEMM. DGQ stores S2 as int8 and the channel scale in fp16; we keep it fp32;
- ``dq``: the fp32 scales quantized again with ``uint8`` min-max (float offset) per block of 256
  scales (bitsandbytes' double quantization; it uses a dynamic 8-bit map of the scales minus their
  mean, we use a linear grid: 8 + 64/256 bits per scale instead of 8 + 32/256).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from anybit.formats import FormatFamily, NumberFormat, get_format
from anybit.scheme import DQ_BLOCK, Granularity, QScheme

MSE_GRID_POINTS = 64
MSE_MIN_RATIO = 0.25
DGQ_GROUP_GRID, DGQ_GROUP_MIN_RATIO = 20, 0.8  # DGQ phase 1: fine (group) scale ratios
DGQ_CHANNEL_GRID, DGQ_CHANNEL_MIN_RATIO = 80, 0.2  # DGQ phase 2: coarse (channel) scale ratios
E8M0_MIN_EXP, E8M0_MAX_EXP = -127, 127
E4M3_MAX = 448.0
DUAL_SCALE_FORMAT = "uint8"  # DGQ stores integer group scales (1..127) in 8 bits
DUAL_MAX = 127
INT8_MAX = 127.0


def e8m0_target(fmt: NumberFormat) -> float:
    """``2^emax``: the largest power of two not above the format's largest level (OCP MX)."""
    return 2.0 ** math.floor(math.log2(fmt.max_abs))


def group_range(g: torch.Tensor, scheme: QScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hi, lo)`` per group, shapes [A, B]: the range the grid must cover (before ``mse``)."""
    clip, value = scheme.clip, scheme.clip_value
    n = g.shape[-1]
    if clip == "percentile":
        assert value is not None
        k_hi = max(1, min(n, math.ceil(value / 100 * n)))
        k_lo = max(1, min(n, n + 1 - k_hi))
        hi = g.kthvalue(k_hi, dim=-1).values if k_hi < n else g.amax(dim=-1)
        lo = g.kthvalue(k_lo, dim=-1).values if k_lo > 1 else g.amin(dim=-1)
    else:
        hi, lo = g.amax(dim=-1), g.amin(dim=-1)
    hi, lo = hi.clamp(min=0), lo.clamp(max=0)  # the grid always covers 0
    if clip == "ratio":
        hi, lo = hi * value, lo * value
    return hi, lo


def scale_from_range(hi: torch.Tensor, lo: torch.Tensor, scheme: QScheme, fmt: NumberFormat) -> torch.Tensor:
    """The unrounded scale that maps ``[lo, hi]`` onto the grid (module docstring)."""
    if scheme.zero_point != "none":
        return (hi - lo) / (fmt.max_level - fmt.min_level)
    if scheme.scale_format == "e8m0":
        return torch.maximum(hi, -lo) / e8m0_target(fmt)
    s = hi / fmt.max_level
    if fmt.min_level < 0:  # smallest scale that clips neither end
        s = torch.maximum(s, lo / fmt.min_level)
    return s


@dataclass
class ScaleContext:
    """Second-level scales fixed before the search: NVFP4's tensor scale, DGQ's channel scales."""

    outer: torch.Tensor | None = None  # [1, 1] (e4m3) or [A, 1] (dual)


def make_context(
    s_minmax: torch.Tensor, scheme: QScheme, g: torch.Tensor, channel_ratio: float = 1.0
) -> ScaleContext:
    """Fix the outer scales: NVFP4 ``max(s) / 448``; DGQ ``ratio * absmax(row) / 127``."""
    if scheme.scale_format == "e4m3":
        outer = s_minmax.amax().reshape(1, 1) / E4M3_MAX
    elif scheme.scale_format == "dual":
        outer = g.abs().amax(dim=-1).amax(dim=-1, keepdim=True) * channel_ratio / INT8_MAX
    else:
        return ScaleContext()
    return ScaleContext(torch.where(outer > 0, outer, torch.ones_like(outer)).float())


def dual_code_bounds(
    s_eff: torch.Tensor, z: torch.Tensor | None, ctx_outer: torch.Tensor, fmt: NumberFormat
) -> tuple[torch.Tensor, torch.Tensor]:
    """DGQ: per group, the level range that keeps ``S2 * (q - z)`` inside INT8 ``[-127, 127]``."""
    s2 = torch.round(s_eff / ctx_outer).clamp(1, DUAL_MAX)
    reach = torch.floor(INT8_MAX / s2)
    centre = z if z is not None else torch.zeros_like(s2)
    return (centre - reach).clamp(min=fmt.min_level), (centre + reach).clamp(max=fmt.max_level)


def _positive_min(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).tiny) if dtype != torch.float16 else 2.0**-24


def round_scales(s: torch.Tensor, scheme: QScheme, ctx: ScaleContext) -> torch.Tensor:
    """Scales as they will be stored (float32 values), for use inside the range search."""
    sf = scheme.scale_format
    if sf in ("fp32", "dq"):
        return s
    if sf in ("fp16", "bf16"):
        dtype = torch.float16 if sf == "fp16" else torch.bfloat16
        finfo_max = float(torch.finfo(dtype).max)
        r = s.clamp(max=finfo_max).to(dtype).float()
        return torch.where((r == 0) & (s > 0), torch.full_like(s, _positive_min(dtype)), r)
    if sf == "e8m0":
        exp = torch.floor(torch.log2(s.clamp(min=2.0**E8M0_MIN_EXP))).clamp(E8M0_MIN_EXP, E8M0_MAX_EXP)
        return torch.exp2(exp)
    if sf == "e4m3":
        assert ctx.outer is not None
        return get_format("fp8_e4m3").round(s / ctx.outer, check=False) * ctx.outer
    if sf == "dual":
        assert ctx.outer is not None
        return torch.round(s / ctx.outer).clamp(1, DUAL_MAX) * ctx.outer
    raise AssertionError(sf)


def store_scales(s: torch.Tensor, scheme: QScheme, ctx: ScaleContext):  # -> Tensor | QTensor
    """The stored form of the (unrounded) scales ``s`` ([A, B])."""
    from anybit.qtensor import QTensor
    from anybit.quantizer import quantize

    sf = scheme.scale_format
    if sf == "fp32":
        return s.float().contiguous()
    if sf in ("fp16", "bf16"):
        dtype = torch.float16 if sf == "fp16" else torch.bfloat16
        return round_scales(s, scheme, ctx).to(dtype)
    if sf == "e8m0":
        return round_scales(s, scheme, ctx).to(torch.float8_e8m0fnu)
    if sf == "e4m3":
        assert ctx.outer is not None
        codes = get_format("fp8_e4m3").encode(s / ctx.outer, check=False)
        inner = QScheme("fp8_e4m3", Granularity.tensor())
        return QTensor(codes, ctx.outer.reshape(1, 1).float().clone(), inner, tuple(s.shape))
    if sf == "dual":
        assert ctx.outer is not None
        integer = torch.round(s / ctx.outer).clamp(1, DUAL_MAX)
        inner = QScheme(DUAL_SCALE_FORMAT, Granularity.channel())
        return QTensor(integer.to(torch.uint8), ctx.outer.float().clone(), inner, tuple(s.shape))
    if sf == "dq":
        inner = QScheme("uint8", Granularity.group(DQ_BLOCK), zero_point="float")
        return quantize(s.reshape(-1), inner, allow_ragged=True)
    raise AssertionError(sf)


def effective_of_stored(stored, shape: tuple[int, int]) -> torch.Tensor:  # stored: Tensor | QTensor
    from anybit.qtensor import QTensor

    if isinstance(stored, QTensor):
        return stored.dequantize().reshape(shape)
    return stored.float()


def member_formats(fmt: NumberFormat | FormatFamily) -> tuple[NumberFormat, ...]:
    return fmt.members
