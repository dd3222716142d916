"""``quantize(t, scheme) -> QTensor`` and ``fake_quantize(t, scheme) -> Tensor``.

Steps, per group (see :mod:`anybit.grouping` for what a group is):

1. range: min-max, ratio, percentile, or an MSE grid search over clipping ratios (:mod:`anybit.scales`);
2. scale from the range, rounded to the scale format (fp16, E8M0, E4M3 x fp32, DGQ UINT8 x fp32, ...);
3. zero point from the rounded scale (integer: ``z = round(min L - lo / s)``; float: ``m = lo - s min L``);
4. codes: nearest level of ``x / s + z`` (integer zero) or ``(x - m) / s`` (float offset);
5. for a format family (BitMoD), steps 1-4 run for every member and each group keeps the member
   with the least squared error; its id is stored.

``fake_quantize`` runs the same arithmetic but rounds to values instead of codes, and equals
``quantize(t, scheme).dequantize()`` exactly (tested). Computation is in float32 whatever the
input dtype; the output has the input's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anybit.errors import SchemeError
from anybit.formats import NumberFormat, check_finite
from anybit.grouping import as_rows, check_divisible, from_groups, to_groups
from anybit.qtensor import QTensor
from anybit.scales import (
    DGQ_CHANNEL_GRID,
    DGQ_CHANNEL_MIN_RATIO,
    DGQ_GROUP_GRID,
    DGQ_GROUP_MIN_RATIO,
    MSE_GRID_POINTS,
    MSE_MIN_RATIO,
    ScaleContext,
    dual_code_bounds,
    effective_of_stored,
    group_range,
    make_context,
    round_scales,
    scale_from_range,
    store_scales,
)
from anybit.scheme import QScheme, parse_scheme


def _zero_of(lo: torch.Tensor, s: torch.Tensor, scheme: QScheme, fmt: NumberFormat) -> torch.Tensor | None:
    """Effective zero: integer level ``z`` or float offset ``m`` (already rounded to storage)."""
    if scheme.zero_point == "int":
        safe = torch.where(s > 0, s, torch.ones_like(s))
        return torch.round(fmt.min_level - lo / safe).clamp(fmt.min_level, fmt.max_level)
    if scheme.zero_point == "float":
        m = lo - s * fmt.min_level
        return m.to(_zero_dtype(scheme)).float()
    return None


def _zero_dtype(scheme: QScheme) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(scheme.scale_format, torch.float32)


def _to_unit(g: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, scheme: QScheme) -> torch.Tensor:
    """Values on the format's unit grid: ``x / s + z`` or ``(x - m) / s``; 0 where s == 0."""
    s3 = s.unsqueeze(-1)
    safe = torch.where(s3 > 0, s3, torch.ones_like(s3))
    if scheme.zero_point == "float":
        assert z is not None
        y = (g - z.unsqueeze(-1)) / safe
    else:
        y = g / safe
        if z is not None:
            y = y + z.unsqueeze(-1)
    return torch.where(s3 > 0, y, torch.zeros_like(y))


def _from_unit(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, scheme: QScheme) -> torch.Tensor:
    """Inverse of :func:`_to_unit` on rounded values, exactly as ``QTensor.dequantize`` does it."""
    s3 = s.unsqueeze(-1)
    if scheme.zero_point == "int":
        assert z is not None
        return (q - z.unsqueeze(-1)) * s3
    if scheme.zero_point == "float":
        assert z is not None
        return q * s3 + z.unsqueeze(-1)
    return q * s3


def _clamp_bounds(
    s: torch.Tensor, z: torch.Tensor | None, scheme: QScheme, fmt: NumberFormat, ctx: ScaleContext
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-group level bounds beyond the format's own (DGQ's INT8 constraint), or None."""
    if scheme.scale_format != "dual":
        return None
    assert ctx.outer is not None
    return dual_code_bounds(s, z, ctx.outer, fmt)


def _round_unit(
    y: torch.Tensor, fmt: NumberFormat, bounds: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    q = fmt.round(y, check=False)
    if bounds is not None:  # integer formats only: clamp after rounding = nearest in range
        q = torch.maximum(torch.minimum(q, bounds[1].unsqueeze(-1)), bounds[0].unsqueeze(-1))
    return q


def _fake_groups(
    g: torch.Tensor,
    s_raw: torch.Tensor,
    lo: torch.Tensor,
    scheme: QScheme,
    fmt: NumberFormat,
    ctx: ScaleContext,
) -> torch.Tensor:
    s = round_scales(s_raw, scheme, ctx)
    z = _zero_of(lo, s, scheme, fmt)
    bounds = _clamp_bounds(s, z, scheme, fmt, ctx)
    return _from_unit(_round_unit(_to_unit(g, s, z, scheme), fmt, bounds), s, z, scheme)


def fake_quantize_groups(
    g: torch.Tensor,
    s_raw: torch.Tensor,
    lo: torch.Tensor,
    scheme: QScheme,
    ctx: ScaleContext,
    fmt: NumberFormat | None = None,
) -> torch.Tensor:
    """Groups ``g`` ``[A, B, n]`` fake-quantized with candidate parameters (a search's inner step).

    ``s_raw``/``lo`` are ``[A, B]``; the scale is rounded to its storage format inside, so the
    values equal what :func:`quantize_with_params` would produce for the same parameters.
    """
    member = scheme.number_format if fmt is None else fmt
    assert isinstance(member, NumberFormat), "format families need their member format"
    return _fake_groups(g, s_raw, lo, scheme, member, ctx)


def _mse_ratios(points: int, min_ratio: float) -> list[float]:
    return [1.0 - i * (1.0 - min_ratio) / (points - 1) for i in range(points)]


@dataclass
class _Candidate:
    """One member format's search result per group (values kept only when a family needs them)."""

    s_raw: torch.Tensor
    lo: torch.Tensor
    err: torch.Tensor | None = None
    values: torch.Tensor | None = None  # fake-quantized groups at the chosen scales


def _search(g: torch.Tensor, scheme: QScheme, fmt: NumberFormat, need_error: bool) -> _Candidate:
    """Unrounded scales, lower range ends and squared error per group, for one member format.

    Objective of the ``mse`` search, per group: ``min_r sum_i (Q_r(x_i) - x_i)^2`` over clipping
    ratios ``r`` (scales rounded to their storage inside the loop).
    """
    hi, lo = group_range(g, scheme)
    s_raw = scale_from_range(hi, lo, scheme, fmt)
    ctx = make_context(s_raw, scheme, g)
    if scheme.clip != "mse":
        if not need_error:
            return _Candidate(s_raw, lo)
        values = _fake_groups(g, s_raw, lo, scheme, fmt, ctx)
        return _Candidate(s_raw, lo, (values - g).square_().sum(-1), values)
    best = _Candidate(s_raw.clone(), lo.clone(), torch.full_like(s_raw, float("inf")))
    for ratio in _mse_ratios(MSE_GRID_POINTS, MSE_MIN_RATIO):
        hi_r, lo_r = hi * ratio, lo * ratio
        s_r = scale_from_range(hi_r, lo_r, scheme, fmt)
        values = _fake_groups(g, s_r, lo_r, scheme, fmt, ctx)
        err = (values - g).square_().sum(-1)
        better = err < best.err
        best.err = torch.where(better, err, best.err)  # type: ignore[arg-type]
        best.s_raw = torch.where(better, s_r, best.s_raw)
        best.lo = torch.where(better, lo_r, best.lo)
        if need_error:
            best.values = (
                values if best.values is None else torch.where(better.unsqueeze(-1), values, best.values)
            )
    return best


def _dual_two_phase(g: torch.Tensor, scheme: QScheme, fmt: NumberFormat):
    """DGQ's two-phase grid search of dual-grained scales (Zhang et al. 2023, section 3.3).

    Phase 1, per group: the clipping ratio of the fine (group) scale, with scales in float
    (``clip=mse``: :data:`DGQ_GROUP_GRID` ratios from 1.0 to 0.8, as DGQ's 20-point grid).
    Phase 2, per output channel: the ratio ``r`` of the coarse scale ``r * absmax / 127`` over
    :data:`DGQ_CHANNEL_GRID` values from 1.0 to 0.2 (DGQ: 80), with the integer group scales and
    the INT8 code clamp in the loop; objective ``min_r sum_row (Q(w) - w)^2``. DGQ minimizes the
    layer *output* error on calibration data instead; the calibration algorithm in
    ``anybit.algorithms.dgq`` does that, this core version uses the weights alone.
    """
    phase1 = scheme.with_(scale_format="fp32")
    if scheme.clip == "mse":
        hi, lo = group_range(g, phase1)
        s_best, lo_best = scale_from_range(hi, lo, phase1, fmt), lo
        err_best = torch.full_like(s_best, float("inf"))
        for ratio in _mse_ratios(DGQ_GROUP_GRID, DGQ_GROUP_MIN_RATIO):
            s_r = scale_from_range(hi * ratio, lo * ratio, phase1, fmt)
            err = (_fake_groups(g, s_r, lo * ratio, phase1, fmt, ScaleContext()) - g).square_().sum(-1)
            better = err < err_best
            err_best = torch.where(better, err, err_best)
            s_best, lo_best = torch.where(better, s_r, s_best), torch.where(better, lo * ratio, lo_best)
        channel_ratios = _mse_ratios(DGQ_CHANNEL_GRID, DGQ_CHANNEL_MIN_RATIO)
    else:
        hi, lo_best = group_range(g, phase1)
        s_best = scale_from_range(hi, lo_best, phase1, fmt)
        channel_ratios = [1.0]
    best_outer, best_err = None, None
    for ratio in channel_ratios:
        ctx = make_context(s_best, scheme, g, channel_ratio=ratio)
        err = (_fake_groups(g, s_best, lo_best, scheme, fmt, ctx) - g).square_().sum(dim=(1, 2))
        assert ctx.outer is not None
        if best_outer is None or best_err is None:
            best_outer, best_err = ctx.outer, err
        else:
            better = (err < best_err).unsqueeze(-1)
            best_outer = torch.where(better, ctx.outer, best_outer)
            best_err = torch.minimum(err, best_err)
    return s_best, lo_best, ScaleContext(best_outer)


def _prepare(t: torch.Tensor, scheme: QScheme | str, what: str, allow_ragged: bool):
    scheme = parse_scheme(scheme) if isinstance(scheme, str) else scheme
    if not isinstance(scheme, QScheme):
        raise SchemeError(f"{what}: expected a QScheme or a scheme string, got {type(scheme).__name__}")
    if not isinstance(t, torch.Tensor):
        raise SchemeError(f"{what}: expected a torch.Tensor, got {type(t).__name__}")
    check_finite(t, what)
    rows = as_rows(t.detach()).float()
    if not allow_ragged:
        check_divisible(tuple(rows.shape), scheme.granularity, what)  # type: ignore[arg-type]
    return scheme, rows


ELEMENTWISE_SCALES = ("fp32", "fp16", "bf16", "e8m0")  # rounding of one scale ignores all others


def _choose(g: torch.Tensor, scheme: QScheme):
    """Per group: the chosen member index (families), unrounded scale, range low end; the
    outer-scale context the final scales use; and, for families whose scales round elementwise,
    the already fake-quantized groups of the chosen members (so they need not be recomputed)."""
    fmt = scheme.number_format
    if scheme.scale_format == "dual":
        assert isinstance(fmt, NumberFormat)
        s_raw, lo, ctx = _dual_two_phase(g, scheme, fmt)
        return None, s_raw, lo, ctx, None
    need_error = len(fmt.members) > 1
    results = [_search(g, scheme, member, need_error) for member in fmt.members]
    if len(results) == 1:
        only = results[0]
        return None, only.s_raw, only.lo, make_context(only.s_raw, scheme, g), None
    ids = torch.stack([r.err for r in results]).argmin(dim=0)  # type: ignore[misc]  # ties: lowest id
    pick = ids.unsqueeze(0)
    s_raw = torch.stack([r.s_raw for r in results]).gather(0, pick).squeeze(0)
    lo = torch.stack([r.lo for r in results]).gather(0, pick).squeeze(0)
    values = None
    if scheme.scale_format in ELEMENTWISE_SCALES:
        values = results[0].values
        for index, r in enumerate(results[1:], start=1):
            values = torch.where((ids == index).unsqueeze(-1), r.values, values)  # type: ignore[arg-type]
    return ids, s_raw, lo, make_context(s_raw, scheme, g), values


def _final_scales(s_raw: torch.Tensor, scheme: QScheme, ctx: ScaleContext):
    stored = store_scales(s_raw, scheme, ctx)
    return stored, effective_of_stored(stored, tuple(s_raw.shape))


def _member_values(
    g: torch.Tensor,
    s: torch.Tensor,
    lo: torch.Tensor,
    scheme: QScheme,
    member: NumberFormat,
    ctx: ScaleContext,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(effective zero, rounded unit-grid values) of every group for one member format."""
    z = _zero_of(lo, s, scheme, member)
    bounds = _clamp_bounds(s, z, scheme, member, ctx)
    return z, _round_unit(_to_unit(g, s, z, scheme), member, bounds)


def quantize(
    t: torch.Tensor, scheme: QScheme | str, *, name: str = "tensor", allow_ragged: bool = False
) -> QTensor:
    """Quantize ``t`` with ``scheme``; ``name`` is used in error messages."""
    scheme, rows = _prepare(t, scheme, name, allow_ragged)
    g = to_groups(rows, scheme.granularity)
    ids, s_raw, lo, ctx, _ = _choose(g, scheme)
    return _assemble(g, tuple(rows.shape), tuple(t.shape), scheme, s_raw, lo, ctx, ids)


def quantize_with_params(
    t: torch.Tensor,
    scheme: QScheme,
    s_raw: torch.Tensor,
    lo: torch.Tensor,
    ctx: ScaleContext | None = None,
    ids: torch.Tensor | None = None,
    *,
    name: str = "tensor",
) -> QTensor:
    """Quantize ``t`` with group parameters chosen elsewhere (a calibration algorithm's search).

    ``s_raw`` and ``lo`` are ``[A, B]`` per group (the unrounded scale and the low end of the
    range, as the core's own search returns them), ``ctx`` the outer
    scales (DGQ channel scales, NVFP4 tensor scale; computed from ``s_raw`` when omitted) and
    ``ids`` the member index per group of a format family. Scales are rounded to their storage
    format and codes chosen exactly as :func:`quantize` does, so the result is a valid QTensor.
    """
    scheme, rows = _prepare(t, scheme, name, False)
    g = to_groups(rows, scheme.granularity)
    if s_raw.shape != g.shape[:2] or lo.shape != g.shape[:2]:
        raise SchemeError(
            f"{name}: group parameters of shape {tuple(s_raw.shape)}/{tuple(lo.shape)} do not match "
            f"the {tuple(g.shape[:2])} groups of scheme {scheme}"
        )
    if ctx is None:
        ctx = make_context(s_raw, scheme, g)
    return _assemble(g, tuple(rows.shape), tuple(t.shape), scheme, s_raw, lo, ctx, ids)


def _assemble(
    g: torch.Tensor,
    rows_shape: tuple[int, ...],
    shape: tuple[int, ...],
    scheme: QScheme,
    s_raw: torch.Tensor,
    lo: torch.Tensor,
    ctx: ScaleContext,
    ids: torch.Tensor | None,
) -> QTensor:
    """Codes, stored scales, zeros and type ids of groups ``g`` with fixed parameters."""
    fmt = scheme.number_format
    stored_scales, s = _final_scales(s_raw, scheme, ctx)
    code_groups = torch.zeros(g.shape, dtype=torch.uint8)
    zero_eff = None
    for index, member in enumerate(fmt.members):
        z, q = _member_values(g, s, lo, scheme, member, ctx)
        codes = member.encode(q, check=False)  # q is on the grid: encode is exact
        if ids is None:
            code_groups, zero_eff = codes, z
        else:
            chosen = ids == index
            code_groups = torch.where(chosen.unsqueeze(-1), codes, code_groups)
            if z is not None:
                zero_eff = z if zero_eff is None else torch.where(chosen, z, zero_eff)
    zeros = None
    if scheme.zero_point == "int":
        assert zero_eff is not None and isinstance(fmt, NumberFormat)
        zeros = (zero_eff - fmt.min_level).to(torch.uint8)  # code of the zero level
    elif scheme.zero_point == "float":
        assert zero_eff is not None
        zeros = zero_eff.to(_zero_dtype(scheme))
    codes2d = from_groups(code_groups, scheme.granularity, rows_shape)  # type: ignore[arg-type]
    type_ids = ids.to(torch.uint8) if ids is not None else None
    return QTensor(codes2d.reshape(shape).contiguous(), stored_scales, scheme, shape, zeros, type_ids)


def fake_quantize(t: torch.Tensor, scheme: QScheme | str, *, name: str = "tensor") -> torch.Tensor:
    """``quantize(t, scheme).dequantize()`` computed without materializing codes, in ``t.dtype``."""
    scheme, rows = _prepare(t, scheme, name, allow_ragged=False)
    fmt = scheme.number_format
    g = to_groups(rows, scheme.granularity)
    ids, s_raw, lo, ctx, out = _choose(g, scheme)
    _, s = _final_scales(s_raw, scheme, ctx)
    members = fmt.members if out is None else ()  # a family's chosen values may be ready already
    for index, member in enumerate(members):
        z, q = _member_values(g, s, lo, scheme, member, ctx)
        values = _from_unit(q, s, z, scheme)
        if ids is None:
            out = values
        else:
            out = values if out is None else torch.where((ids == index).unsqueeze(-1), values, out)
    assert out is not None
    result = from_groups(out, scheme.granularity, tuple(rows.shape))  # type: ignore[arg-type]
    return result.reshape(t.shape).to(t.dtype)


def static_scale(
    hi: torch.Tensor, lo: torch.Tensor, scheme: QScheme
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale and effective zero of a calibrated (static) per-tensor quantizer from an observed range."""
    fmt = scheme.number_format
    if not isinstance(fmt, NumberFormat):
        raise SchemeError(f"static activation quantization needs a single format, not the family {fmt.name}")
    hi, lo = hi.reshape(1, 1).float().clamp(min=0), lo.reshape(1, 1).float().clamp(max=0)
    s_raw = scale_from_range(hi, lo, scheme, fmt)
    ctx = make_context(s_raw, scheme, hi.reshape(1, 1, 1))
    s = round_scales(s_raw, scheme, ctx)
    return s, _zero_of(lo, s, scheme, fmt)


def fake_quantize_static(
    x: torch.Tensor, scheme: QScheme, scale: torch.Tensor, zero: torch.Tensor | None
) -> torch.Tensor:
    """Fake-quantize ``x`` with a fixed per-tensor ``scale`` (and zero) from :func:`static_scale`."""
    fmt = scheme.number_format
    assert isinstance(fmt, NumberFormat)
    g = x.detach().float().reshape(1, 1, -1)
    q = _round_unit(_to_unit(g, scale, zero, scheme), fmt, None)
    return _from_unit(q, scale, zero, scheme).reshape(x.shape).to(x.dtype)
