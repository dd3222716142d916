"""GPTQ: one-shot weight quantization with second-order error feedback.

Paper: Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers" (ICLR 2023, arXiv 2210.17323); reference code IST-DASLab/gptq
(``gptq.py``), act-order with groups as in AutoGPTQ / GPTQModel.

Objective, per linear ``W`` ([out, in]) with calibration inputs ``X`` ([tokens, in]):

    min_Q ||W X^T - Q X^T||_F^2,   Q on the scheme's grid,

solved column by column (Optimal Brain Quantization): quantize column ``j``, then spread its error
over the not yet quantized columns with the inverse Hessian ``H^-1``, ``H = 2 X^T X / tokens``.

What is implemented (CPU; Hessians accumulated in float32, inverted in float64):

- Hessians from forward pre-hooks over *all* calibration samples, without storing the inputs;
- true-sequential quantization inside a block: linears that read the same input tensor (q/k/v,
  gate/up) share one Hessian and are swept together (GPTQ rows are independent, so concatenating
  their rows is exact); each later group's Hessian is captured with the earlier groups already
  quantized (their dequantized weights are written into the float modules for the capture, and the
  float weights are restored before returning, because the pipeline measures the layer errors
  against them). Capture passes stop the block's forward as soon as the needed input is seen;
- dead inputs (``H_jj = 0``): ``H_jj = 1`` and ``W[:, j] = 0``, as in the reference;
- dampening ``gptq.damp`` (default 0.01) times the mean of ``diag(H)``; a Hessian whose Cholesky
  factorisation still fails gets 10x more damping, up to :data:`DAMP_RETRIES` times, each with a
  warning naming the layer; then ``AlgorithmError`` (never a silent fallback to RTN);
- lazy batch updates in blocks of ``gptq.block_size`` (default 128) columns;
- act-order (``gptq.act_order``, default True): columns in order of decreasing ``H_jj``;
- groups: a group's scale/zero (and, for a format family such as BitMoD, its member type) is
  computed when the sweep reaches the group's *first touched* column, on the group's current,
  partially updated weights (all of its columns are still unquantized at that moment). Without
  act-order this is exactly the reference behaviour (the group's first column). With act-order the
  groups stay the scheme's contiguous groups in original column order (no ``g_idx`` permutation
  table, so the ``QTensor`` layout and every kernel are unchanged); each group's parameters are
  fixed the first time the permuted sweep touches any of its columns. This departs from AutoGPTQ's
  ``static_groups`` (all parameters from the original weights before the sweep), which is
  available as ``gptq.static_groups=True`` and is forced where lazy parameters are impossible:
  ``dq`` scales (they are double-quantized in blocks of 256 spanning many rows and groups) and
  ``tensor`` granularity (one scale for the whole matrix);
- every single-format scheme of the core: INT (any bits, sym/asym), FP ExMy, NF, dINT and other
  codebooks (rounding = the format's nearest level, ``fmt.round``), format families (type chosen
  per group with least squared error, at the group's first touched column), scale formats
  fp32/fp16/bf16/e8m0, ``e4m3`` (NVFP4: the fp32 tensor scale is fixed up front from the original
  weights, as the core does), ``dual`` (DGQ: the per-channel scale is fixed up front from the full
  original row, with the core's two-phase search when ``clip=mse``; integer group scales and the
  INT8 code clamp are applied during the sweep), ``dq`` (static groups), clip minmax/ratio/
  percentile/mse (the clip search runs on the group's current weights), granularity tensor,
  channel, group and block.

The returned ``QTensor``'s ``dequantize()`` equals, bit for bit, the matrix GPTQ used for its error
feedback (checked at run time, an ``AlgorithmError`` otherwise), so the pipeline's ``QLinear`` is
exactly what GPTQ optimized.

Capture precision (``gptq.precision``, default ``bf16``): the capture forwards run under bfloat16
autocast and each sample's ``X^T X`` is a bfloat16 product (float32 accumulation inside the product,
summed over samples in float32). On this CPU (AVX-512 BF16) that makes the captures, which are
most of GPTQ's time (each true-sequential stage re-runs the block up to its input), 2-4x faster.
The Hessian is a statistic of the inputs: bf16 changes its entries by ~0.4% (relative, random),
well under the 1% dampening, as GPU implementations that run the model in fp16 do; ``fp32`` keeps
everything in float32. The sweep itself is always float32/float64.

Other departures from the reference: the reference recomputes group parameters from weights that
miss the in-block (lazy) updates of the current block; here the group's current weights include
them. Hessians use float inputs of each linear (an activation quantizer of the recipe is not
applied during capture). The column sweep runs on one intra-op thread (its operations are tiny;
on this shared 2-core machine two threads made it 60x slower). Per-block and per-sweep seconds are
logged at INFO (logger ``anybit.algorithms.gptq``) and kept on the instance (``layer_seconds``,
``capture_seconds``, ``total_seconds``). Options: ``gptq.damp``, ``gptq.act_order``, ``gptq.block_size``,
``gptq.static_groups``, ``gptq.true_sequential`` (False: every Hessian from the float block),
``gptq.precision`` (bf16 | fp32).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from anybit.algorithms.base import Algorithm, BlockContext, register
from anybit.algorithms.layerwise import bool_option, check_weight_schemes
from anybit.errors import AlgorithmError
from anybit.formats import NumberFormat
from anybit.grouping import from_groups, to_groups
from anybit.qtensor import QTensor
from anybit.quantizer import (
    _choose,
    _clamp_bounds,
    _fake_groups,
    _from_unit,
    _mse_ratios,
    _round_unit,
    _to_unit,
    _zero_dtype,
    _zero_of,
)
from anybit.recipe import Recipe
from anybit.scales import (
    MSE_GRID_POINTS,
    MSE_MIN_RATIO,
    ScaleContext,
    effective_of_stored,
    group_range,
    make_context,
    scale_from_range,
    store_scales,
)
from anybit.scheme import Granularity, QScheme

log = logging.getLogger(__name__)

DEFAULT_DAMP = 0.01  # fraction of mean(diag H) added to the diagonal (reference: percdamp=.01)
DEFAULT_BLOCK_SIZE = 128  # columns per lazy batch update (reference: blocksize=128)
DAMP_RETRIES = 4  # extra attempts, each with 10x the damping, before giving up
DAMP_GROWTH = 10.0
PRECISIONS = ("bf16", "fp32")
DEFAULT_PRECISION = "bf16"  # capture forwards and Hessian products (see the module docstring)


class _StopForward(Exception):
    """Raised by a capture hook once the block has produced every input it needs."""


def _float_option(recipe: Recipe, key: str, default: float, *, positive: bool = True) -> float:
    value = recipe.option(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AlgorithmError(f"option {key}={value!r} is not a number") from None
    if positive and not number > 0:
        raise AlgorithmError(f"option {key}={value!r} must be > 0 (default {default})")
    return number


def _int_option(recipe: Recipe, key: str, default: int) -> int:
    value = recipe.option(key, default)
    if isinstance(value, bool) or not str(value).strip().isdigit() or int(value) < 1:
        raise AlgorithmError(f"option {key}={value!r} must be a positive integer (default {default})")
    return int(value)


def _precision_option(recipe: Recipe) -> str:
    value = str(recipe.option("gptq.precision", DEFAULT_PRECISION)).strip().lower()
    if value not in PRECISIONS:
        raise AlgorithmError(f"option gptq.precision={value!r} must be one of {', '.join(PRECISIONS)}")
    return value


@dataclass(frozen=True)
class GPTQOptions:
    damp: float = DEFAULT_DAMP
    act_order: bool = True
    block_size: int = DEFAULT_BLOCK_SIZE
    static_groups: bool = False
    true_sequential: bool = True
    precision: str = DEFAULT_PRECISION

    @staticmethod
    def from_recipe(recipe: Recipe) -> GPTQOptions:
        fields = ("damp", "act_order", "block_size", "static_groups", "true_sequential", "precision")
        known = {f"gptq.{f}" for f in fields}
        unknown = sorted(k for k, _ in recipe.options if k.startswith("gptq.") and k not in known)
        if unknown:
            raise AlgorithmError(f"unknown GPTQ option(s) {unknown}; known: {sorted(known)}")
        return GPTQOptions(
            damp=_float_option(recipe, "gptq.damp", DEFAULT_DAMP),
            act_order=bool_option(recipe, "gptq.act_order", True),
            block_size=_int_option(recipe, "gptq.block_size", DEFAULT_BLOCK_SIZE),
            static_groups=bool_option(recipe, "gptq.static_groups", False),
            true_sequential=bool_option(recipe, "gptq.true_sequential", True),
            precision=_precision_option(recipe),
        )


# ----- group parameters ------------------------------------------------------------------------
def _column_width(scheme: QScheme, cols: int) -> int:
    """Columns that share one scale along a row: the group, block width, or the whole row."""
    gran = scheme.granularity
    if gran.kind == "group":
        assert gran.group_size is not None
        return gran.group_size
    if gran.kind == "block":
        assert gran.block_shape is not None
        return gran.block_shape[1]
    return cols


def _rows_per_scale(scheme: QScheme, rows: int) -> int:
    """Rows that share one scale: ``R`` of a block, all rows for a tensor scale, else 1."""
    gran = scheme.granularity
    if gran.kind == "block":
        assert gran.block_shape is not None
        return gran.block_shape[0]
    return rows if gran.kind == "tensor" else 1


def _slice_granularity(scheme: QScheme, width: int) -> Granularity:
    """Granularity that groups one column slice ``[rows, width]`` into ``[A, 1, n]``."""
    gran = scheme.granularity
    if gran.kind == "block":
        assert gran.block_shape is not None
        return gran
    if gran.kind == "tensor":
        return gran
    return Granularity.group(width)


def _search_fixed(
    g: torch.Tensor, scheme: QScheme, fmt: NumberFormat, ctx: ScaleContext, need_error: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The core's range search (``anybit.quantizer._search``) with the outer scales held fixed.

    Objective (``clip=mse``), per group: ``min_r sum_i (Q_r(x_i) - x_i)^2`` over clipping ratios;
    other clips: the range rule of the scheme. Returns unrounded scale, range low end, error.
    """
    hi, lo = group_range(g, scheme)
    s_raw = scale_from_range(hi, lo, scheme, fmt)
    if scheme.clip != "mse":
        err = (_fake_groups(g, s_raw, lo, scheme, fmt, ctx) - g).square_().sum(-1) if need_error else None
        return s_raw, lo, err
    best_s, best_lo = s_raw.clone(), lo.clone()
    best_err = torch.full_like(s_raw, float("inf"))
    for ratio in _mse_ratios(MSE_GRID_POINTS, MSE_MIN_RATIO):
        s_r = scale_from_range(hi * ratio, lo * ratio, scheme, fmt)
        err = (_fake_groups(g, s_r, lo * ratio, scheme, fmt, ctx) - g).square_().sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s_r, best_s)
        best_lo = torch.where(better, lo * ratio, best_lo)
    return best_s, best_lo, best_err


@dataclass
class _Segment:
    """One linear's rows inside the concatenated weight of a Hessian group."""

    name: str
    start: int
    stop: int
    ctx: ScaleContext  # outer scales fixed up front (NVFP4 tensor scale, DGQ channel scales)


class GroupQuantizer:
    """Per-row, per-column-group quantization parameters of a (row-concatenated) weight matrix.

    Parameters are kept expanded to every row (``[rows, B]``, ``B`` column groups), so linears of
    different heights can be swept together; :meth:`qtensor` folds them back per linear.
    """

    def __init__(self, weight: torch.Tensor, segments: list[tuple[str, int]], scheme: QScheme, static: bool):
        rows, cols = weight.shape
        self.scheme = scheme
        self.fmt = scheme.number_format
        self.members: tuple[NumberFormat, ...] = self.fmt.members
        self.width = _column_width(scheme, cols)
        self.groups = cols // self.width
        self.scale = torch.zeros(rows, self.groups)  # effective scale per row and column group
        self.s_raw = torch.zeros(rows, self.groups)  # unrounded scale (what store_scales takes)
        self.zero = torch.zeros(rows, self.groups) if scheme.zero_point != "none" else None
        self.low = torch.full((rows, self.groups), -float("inf"))  # level bounds (DGQ INT8 clamp)
        self.high = torch.full((rows, self.groups), float("inf"))
        self.ids = torch.zeros(rows, self.groups, dtype=torch.long)
        self.ready = torch.zeros(self.groups, dtype=torch.bool)
        self.segments: list[_Segment] = []
        start = 0
        for name, height in segments:
            part = weight[start : start + height]
            self.segments.append(_Segment(name, start, start + height, self._outer_context(part)))
            start += height
        # dq scales are double-quantized across groups and rows, a tensor scale spans every column:
        # neither can be fixed lazily, so they always use static groups
        self.static = static or scheme.scale_format == "dq" or scheme.granularity.kind == "tensor"
        if self.static:
            for seg in self.segments:
                self._static_params(weight[seg.start : seg.stop], seg)
            self.ready[:] = True

    # -- set-up ----------------------------------------------------------------------------------
    def _outer_context(self, part: torch.Tensor) -> ScaleContext:
        """NVFP4 tensor scale / DGQ channel scales of one linear, from its original weights."""
        scheme = self.scheme
        if scheme.scale_format not in ("e4m3", "dual"):
            return ScaleContext()
        g = to_groups(part.float(), scheme.granularity)
        if scheme.scale_format == "dual":
            # DGQ: channel scale from the full row (two-phase search of the core when clip=mse)
            return _choose(g, scheme)[3]
        # NVFP4: max over the members' min-max scales of the whole tensor, / 448
        s_max = torch.stack([scale_from_range(*group_range(g, scheme), scheme, m) for m in self.members])
        return make_context(s_max.amax(0), scheme, g)

    def _static_params(self, part: torch.Tensor, seg: _Segment) -> None:
        """All groups of one linear from its original weights, exactly as the core's ``quantize``."""
        scheme = self.scheme
        g = to_groups(part.float(), scheme.granularity)
        ids, s_raw, lo, ctx = _choose(g, scheme)[:4]  # (ids, s_raw, lo, ctx, ...)
        seg.ctx = ctx
        s = effective_of_stored(store_scales(s_raw, scheme, ctx), tuple(s_raw.shape))
        ids_t = torch.zeros_like(s, dtype=torch.long) if ids is None else ids.long()
        zero, low, high = self._zero_and_bounds(lo, s, ids_t, ctx)
        self._write_rows(seg, slice(None), s_raw, s, zero, low, high, ids_t)

    def _zero_and_bounds(self, lo: torch.Tensor, s: torch.Tensor, ids: torch.Tensor, ctx: ScaleContext):
        """Effective zero and level bounds of the chosen member per group."""
        zero = torch.zeros_like(s) if self.zero is not None else None
        low, high = torch.full_like(s, -float("inf")), torch.full_like(s, float("inf"))
        for index, member in enumerate(self.members):
            chosen = ids == index
            z = _zero_of(lo, s, self.scheme, member)
            if zero is not None and z is not None:
                zero = torch.where(chosen, z, zero)
            bounds = _clamp_bounds(s, z, self.scheme, member, ctx)
            if bounds is not None:
                low, high = torch.where(chosen, bounds[0], low), torch.where(chosen, bounds[1], high)
        return zero, low, high

    def _write_rows(self, seg, cols, s_raw, s, zero, low, high, ids) -> None:
        """Expand ``[A, b]`` per-group values to the segment's rows (``R`` rows per scale)."""
        repeat = (seg.stop - seg.start) // s.shape[0]
        rows = slice(seg.start, seg.stop)

        def expand(t: torch.Tensor) -> torch.Tensor:
            return t.repeat_interleave(repeat, dim=0)

        self.s_raw[rows, cols] = expand(s_raw)
        self.scale[rows, cols] = expand(s)
        if self.zero is not None and zero is not None:
            self.zero[rows, cols] = expand(zero)
        self.low[rows, cols], self.high[rows, cols] = expand(low), expand(high)
        self.ids[rows, cols] = expand(ids)

    # -- during the sweep ------------------------------------------------------------------------
    def prepare(self, group: int, current: torch.Tensor) -> None:
        """Scale/zero/type of column group ``group`` from its current weights ``[rows, width]``."""
        scheme = self.scheme
        gran = _slice_granularity(scheme, self.width)
        for seg in self.segments:
            g = to_groups(current[seg.start : seg.stop], gran)  # [A, 1, n]
            # range search of every member with the outer scales fixed; keep the least-error member
            results = [_search_fixed(g, scheme, m, seg.ctx, len(self.members) > 1) for m in self.members]
            if len(results) == 1:
                s_raw, lo = results[0][0], results[0][1]
                ids = torch.zeros_like(s_raw, dtype=torch.long)
            else:
                ids = torch.stack([r[2] for r in results]).argmin(0)  # type: ignore[misc]
                s_raw = torch.stack([r[0] for r in results]).gather(0, ids[None]).squeeze(0)
                lo = torch.stack([r[1] for r in results]).gather(0, ids[None]).squeeze(0)
            # the scale as it will be stored (fp16, e8m0, e4m3 x tensor scale, INT8 x channel scale)
            s = effective_of_stored(store_scales(s_raw, scheme, seg.ctx), tuple(s_raw.shape))
            zero, low, high = self._zero_and_bounds(lo, s, ids, seg.ctx)
            self._write_rows(seg, slice(group, group + 1), s_raw, s, zero, low, high, ids)
        self.ready[group] = True

    def round_column(self, w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(grid value, dequantized value) of one column ``w`` [rows] with its group's parameters."""
        s = self.scale[:, group]
        z = None if self.zero is None else self.zero[:, group]
        bounds = (self.low[:, group], self.high[:, group])
        y = _to_unit(w[:, None], s, z, self.scheme)
        level = None
        for index, member in enumerate(self.members):
            q = _round_unit(y, member, bounds if self.scheme.scale_format == "dual" else None)
            level = q if level is None else torch.where((self.ids[:, group] == index)[:, None], q, level)
        assert level is not None
        return level[:, 0], _from_unit(level, s, z, self.scheme)[:, 0]

    # -- result ----------------------------------------------------------------------------------
    def qtensor(self, levels: torch.Tensor, seg: _Segment, shape: tuple[int, ...]) -> QTensor:
        """The ``QTensor`` of one linear from the grid values chosen by the sweep."""
        scheme = self.scheme
        rows = slice(seg.start, seg.stop)
        repeat = _rows_per_scale(scheme, seg.stop - seg.start)
        pick = slice(None, None, repeat)
        s_raw = self.s_raw[rows][pick]  # [A, B]
        stored = store_scales(s_raw, scheme, seg.ctx)
        ids = self.ids[rows][pick]
        part = levels[rows]
        g = to_groups(part, scheme.granularity)
        code_groups = torch.zeros(g.shape, dtype=torch.uint8)
        for index, member in enumerate(self.members):
            codes = member.encode(g, check=False)  # values are on the member's grid: exact
            code_groups = torch.where((ids == index).unsqueeze(-1), codes, code_groups)
        codes = from_groups(code_groups, scheme.granularity, tuple(part.shape))  # type: ignore[arg-type]
        zeros = None
        if self.zero is not None:
            zero = self.zero[rows][pick]
            if scheme.zero_point == "int":
                assert isinstance(self.fmt, NumberFormat)
                zeros = (zero - self.fmt.min_level).to(torch.uint8)  # code of the zero level
            else:
                zeros = zero.to(_zero_dtype(scheme))
        type_ids = ids.to(torch.uint8) if len(self.members) > 1 else None
        return QTensor(codes.reshape(shape).contiguous(), stored, scheme, shape, zeros, type_ids)


# ----- the sweep -------------------------------------------------------------------------------
@contextlib.contextmanager
def _single_thread():
    """Run the column loop on one intra-op thread.

    Its operations are tiny (one column of a few thousand values); with several threads on a
    shared CPU each one pays thread wake-ups, measured 60x slower here (12 s against 0.2 s for a
    960 x 576 sweep); so is a 576 x 576 Cholesky inverse (1.7 s against 0.01 s). The large matmuls
    (Hessian accumulation, the block's forwards) keep the default thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def inverse_cholesky(hessian: torch.Tensor, damp: float, name: str) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1`` (float64), with retries.

    A factorisation that fails (H not positive definite in floating point) is retried with
    :data:`DAMP_GROWTH` times more damping, up to :data:`DAMP_RETRIES` times, each with a warning.
    """
    eye = torch.eye(hessian.shape[0], dtype=torch.float64)
    mean_diag = float(torch.diagonal(hessian).mean())
    factor = damp
    for attempt in range(DAMP_RETRIES + 1):
        damped = hessian + factor * mean_diag * eye
        lower, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0 and bool(torch.isfinite(upper).all()):
                return upper
        if attempt < DAMP_RETRIES:
            log.warning(
                "GPTQ %s: Hessian is not positive definite with damp=%g; retrying with damp=%g",
                name,
                factor,
                factor * DAMP_GROWTH,
            )
        factor *= DAMP_GROWTH
    raise AlgorithmError(
        f"GPTQ {name}: the Hessian is not positive definite even with damp={factor / DAMP_GROWTH:g} "
        f"({DAMP_RETRIES} retries from gptq.damp={damp:g}); check the calibration inputs of this layer "
        "(NaN/inf activations?) or raise gptq.damp"
    )


def gptq_sweep(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    quantizer: GroupQuantizer,
    *,
    damp: float = DEFAULT_DAMP,
    act_order: bool = True,
    block_size: int = DEFAULT_BLOCK_SIZE,
    name: str = "layer",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``weight`` [rows, cols] against ``hessian`` [cols, cols]; returns (grid values, Q).

    Objective: ``min_Q tr((W - Q) H (W - Q)^T)``, column by column with OBQ error feedback.
    """
    W = weight.detach().float().clone()
    H = hessian.detach().double().clone()
    cols = W.shape[1]
    # dead inputs: the reference sets H_jj = 1 and zeroes the column (it never matters)
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    # act-order: quantize the columns with the largest H_jj (most salient inputs) first
    perm = torch.argsort(torch.diagonal(H), descending=True, stable=True) if act_order else torch.arange(cols)
    inv_perm = torch.argsort(perm)
    W, H = W[:, perm], H[perm][:, perm]
    Q = torch.zeros_like(W)
    levels = torch.zeros_like(W)
    with _single_thread():
        # dampening + Cholesky of the inverse Hessian (upper factor: row j holds column j's updates)
        Hinv = inverse_cholesky(H, damp, name).float()
        del H
        _sweep_blocks(W, Hinv, Q, levels, quantizer, perm, inv_perm, block_size)
    return levels[:, inv_perm], Q[:, inv_perm]


def _sweep_blocks(
    W: torch.Tensor,
    Hinv: torch.Tensor,
    Q: torch.Tensor,
    levels: torch.Tensor,
    quantizer: GroupQuantizer,
    perm: torch.Tensor,
    inv_perm: torch.Tensor,
    block_size: int,
) -> None:
    """The column loop of :func:`gptq_sweep` on permuted ``W``; fills ``Q`` and ``levels``."""
    rows, cols = W.shape
    group_of = perm // quantizer.width  # column group (original order) of every permuted position
    positions = inv_perm.reshape(quantizer.groups, quantizer.width)  # permuted positions of each group
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            group = int(group_of[i1 + i])
            if not quantizer.ready[group]:
                # group parameters at its first touched column, from its current (updated) weights
                pos = positions[group]
                current = torch.empty(rows, quantizer.width)
                inside = pos < i2
                current[:, inside] = W1[:, pos[inside] - i1]
                later = pos[~inside]
                current[:, ~inside] = W[:, later] - Err1[:, :i] @ Hinv[i1 : i1 + i][:, later]
                quantizer.prepare(group, current)
            w = W1[:, i]
            # round the column to its group's grid
            level, q = quantizer.round_column(w, group)
            Q[:, i1 + i], levels[:, i1 + i] = q, level
            # OBQ update: spread the scaled error over the remaining columns of the block
            err = (w - q) / Hinv1[i, i]
            W1[:, i:].sub_(torch.outer(err, Hinv1[i, i:]))
            Err1[:, i] = err
        # lazy batch update of the columns after the block
        W[:, i2:].sub_(Err1 @ Hinv[i1:i2, i2:])


# ----- the algorithm ---------------------------------------------------------------------------
@dataclass
class _Capture:
    """Hessian of one input shared by ``names`` (row-concatenated in the sweep)."""

    names: list[str]
    hessian: torch.Tensor
    tokens: int


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride())


@register
class GPTQ(Algorithm):
    name = "gptq"
    kind = "weights"
    needs_calibration = True
    paper = "Frantar et al. 2022, GPTQ (arXiv 2210.17323)"

    def __init__(self) -> None:
        super().__init__()  # layer_seconds: full layer name -> sweep seconds (its Hessian group)
        self.capture_seconds = 0.0
        self.total_seconds = 0.0

    def check(self, recipe: Recipe) -> None:
        GPTQOptions.from_recipe(recipe)  # refuses bad options before any work
        check_weight_schemes(recipe, "GPTQ")

    # -- capture ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _capture(
        self, ctx: BlockContext, remaining: list[str], one_group: bool, precision: str = DEFAULT_PRECISION
    ) -> list[_Capture]:
        """Hessians of the next input(s) of the block, over all calibration samples.

        ``one_group``: only the first remaining input (the leader linear and those that read the
        same tensor), stopping the forward there (true-sequential); else every remaining input.
        """
        modules = {n: ctx.block.get_submodule(n) for n in remaining}
        groups: list[_Capture] = []
        owner: dict[str, _Capture] = {}  # linear -> its group (known after the first sample)
        seen: list[tuple[torch.Tensor, _Capture]] = []
        first = [True]

        def hook(name: str):
            def pre_hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
                x = args[0]
                if first[0]:
                    for tensor, cap in seen:
                        if _same_tensor(tensor, x):
                            cap.names.append(name)
                            owner[name] = cap
                            return
                    if one_group and groups:
                        raise _StopForward
                    cap = _Capture([name], torch.zeros(x.shape[-1], x.shape[-1]), 0)
                    groups.append(cap)
                    owner[name] = cap
                    seen.append((x, cap))
                elif name not in owner or owner[name].names[0] != name:
                    return  # not captured, or shares the leader's input
                cap = owner[name]
                rows = x.detach().reshape(-1, x.shape[-1])
                if bf16:  # one bf16 product per sample, summed in float32
                    rows = rows.to(torch.bfloat16)
                    cap.hessian.add_((rows.T @ rows).float())
                else:
                    rows = rows.float()
                    cap.hessian.addmm_(rows.T, rows)
                cap.tokens += rows.shape[0]
                if not first[0] and one_group:
                    raise _StopForward

            return pre_hook

        bf16 = precision == "bf16"
        handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
        try:
            for index, x in enumerate(ctx.inputs):
                first[0] = index == 0
                with contextlib.suppress(_StopForward), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    ctx.run_block(ctx.block, x)
                if index == 0:
                    seen.clear()
        finally:
            for h in handles:
                h.remove()
        for cap in groups:
            cap.hessian.mul_(2.0 / max(cap.tokens, 1))  # H = 2 X^T X / tokens
        return groups

    # -- quantize --------------------------------------------------------------------------------
    def quantize_block(self, ctx: BlockContext) -> dict[str, QTensor]:
        opts = GPTQOptions.from_recipe(ctx.recipe)
        start, capture_before = time.perf_counter(), self.capture_seconds
        originals = {n: m.weight.detach().clone() for n, m in ctx.linears.items()}
        remaining = list(ctx.linears)
        out: dict[str, QTensor] = {}
        try:
            if not opts.true_sequential:
                tic = time.perf_counter()
                captures = self._capture(ctx, remaining, one_group=False, precision=opts.precision)
                self.capture_seconds += time.perf_counter() - tic
            while remaining:
                if opts.true_sequential:
                    tic = time.perf_counter()
                    captures = self._capture(ctx, remaining, one_group=True, precision=opts.precision)
                    self.capture_seconds += time.perf_counter() - tic
                if not captures:
                    raise AlgorithmError(
                        f"GPTQ {ctx.prefix}: linears {remaining} never ran on the calibration inputs"
                    )
                cap = captures.pop(0)
                out.update(self._quantize_group(ctx, cap, opts))
                remaining = [n for n in remaining if n not in cap.names]
        finally:
            for name, weight in originals.items():  # the pipeline measures errors against these
                ctx.linears[name].weight.data.copy_(weight)
        seconds = time.perf_counter() - start
        self.total_seconds += seconds
        log.info(
            "GPTQ %s: %.2f s, of which Hessian capture %.2f s (GPTQ total %.1f s)",
            ctx.prefix,
            seconds,
            self.capture_seconds - capture_before,
            self.total_seconds,
        )
        return out

    def _quantize_group(self, ctx: BlockContext, cap: _Capture, opts: GPTQOptions) -> dict[str, QTensor]:
        """Sweep the linears of one Hessian (per scheme) and write their dequantized weights back."""
        out: dict[str, QTensor] = {}
        by_scheme: dict[QScheme, list[str]] = {}
        for name in cap.names:
            scheme = ctx.plans[name].weights
            assert scheme is not None
            by_scheme.setdefault(scheme, []).append(name)
        for scheme, names in by_scheme.items():
            tic = time.perf_counter()
            linears = [ctx.linears[n] for n in names]
            weight = torch.cat([lin.weight.detach().float() for lin in linears])
            segments = [(n, lin.out_features) for n, lin in zip(names, linears, strict=True)]
            label = "+".join(ctx.full_name(n) for n in names)
            with _single_thread():  # small tensor operations only (see _single_thread)
                quantizer = GroupQuantizer(weight, segments, scheme, opts.static_groups)
                levels, deq = gptq_sweep(
                    weight,
                    cap.hessian,
                    quantizer,
                    damp=opts.damp,
                    act_order=opts.act_order,
                    block_size=opts.block_size,
                    name=label,
                )
                for seg, lin in zip(quantizer.segments, linears, strict=True):
                    qt = quantizer.qtensor(levels, seg, tuple(lin.weight.shape))
                    used = deq[seg.start : seg.stop]
                    if not torch.equal(qt.dequantize(), used):
                        raise AlgorithmError(
                            f"GPTQ {ctx.full_name(seg.name)}: internal error, the QTensor does not "
                            f"dequantize to the weights GPTQ optimized (scheme {scheme}); please report it"
                        )
                    lin.weight.data.copy_(used.to(lin.weight.dtype))  # later captures see quantized weights
                    out[seg.name] = qt
            seconds = time.perf_counter() - tic
            for n in names:
                self.layer_seconds[ctx.full_name(n)] = seconds
            log.info("GPTQ %s (%s): %.2f s", label, scheme, seconds)
        return out
