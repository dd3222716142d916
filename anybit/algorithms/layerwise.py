"""Layer-wise calibration machinery shared by AdaRound, AdaQuant, DGQ and ABQ-LLM.

- option parsing for ``algo.key`` recipe options that refuses bad values up front;
- true-sequential stages inside a block: linears that read the same input (q/k/v, gate/up) are
  solved from one capture, later stages are captured with the earlier linears already quantized;
- the Gram matrix (second moment) and mean of each linear's calibration inputs, without keeping
  the rows (``capture_stats``);
- a layer's quantization grid as the core sets it up (types, scales, zeros, each weight's two
  neighbouring levels) and exact QTensor assembly from grid values (``grid_setup``,
  ``build_qtensor``), so a learned or searched result is always a valid QTensor of the scheme.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from anybit.algorithms.base import BlockContext
from anybit.errors import AlgorithmError
from anybit.formats import NumberFormat
from anybit.grouping import as_rows, from_groups, to_groups
from anybit.qtensor import QTensor
from anybit.quantizer import (
    _choose,
    _clamp_bounds,
    _final_scales,
    _from_unit,
    _round_unit,
    _to_unit,
    _zero_dtype,
    _zero_of,
)
from anybit.recipe import Recipe
from anybit.scales import ScaleContext
from anybit.scheme import QScheme

DEFAULT_MAX_TOKENS = 8192  # calibration rows per layer for the Gram matrix


# ===== options ====================================================================================
def number_option(
    recipe: Recipe, key: str, default: float, *, low: float = 0.0, integer: bool = False
) -> Any:
    """A numeric algorithm option (YAML may give a string); refuses anything not > ``low``."""
    value = recipe.option(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AlgorithmError(f"option {key}={value!r} is not a number (default {default})") from None
    if isinstance(value, bool) or not number > low or not math.isfinite(number):
        raise AlgorithmError(f"option {key}={value!r} must be a number > {low} (default {default})")
    if integer:
        if number != int(number):
            raise AlgorithmError(f"option {key}={value!r} must be an integer (default {default})")
        return int(number)
    return number


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def bool_option(recipe: Recipe, key: str, default: bool) -> bool:
    """A boolean algorithm option: a bool, 0/1, or true/false/yes/no/on/off (YAML may give a string)."""
    value = recipe.option(key, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if isinstance(value, str) and text in _TRUE + _FALSE:
        return text in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise AlgorithmError(f"option {key}={value!r} is not a boolean; use true or false")


def check_known_options(recipe: Recipe, prefix: str, known: set[str]) -> None:
    unknown = sorted(k for k, _ in recipe.options if k.startswith(prefix) and k not in known)
    if unknown:
        raise AlgorithmError(f"unknown option(s) {unknown}; known: {sorted(known)}")


def recipe_weight_schemes(recipe: Recipe) -> list[QScheme]:
    """Every weight scheme a recipe can give a layer (base and overrides)."""
    schemes = [recipe.weights, *(o.weights for o in recipe.overrides)]
    return [s for s in schemes if isinstance(s, QScheme)]


def check_weight_schemes(
    recipe: Recipe, algorithm: str, refusal: Callable[[QScheme], str | None] | None = None
) -> list[QScheme]:
    """Refuse up front a recipe that quantizes no weights, or a weight scheme ``refusal`` explains
    the algorithm cannot serve (its message is the error); returns the schemes."""
    schemes = recipe_weight_schemes(recipe)
    if not schemes:
        raise AlgorithmError(
            f"{algorithm} needs a weight scheme (--weights); the recipe quantizes no weights"
        )
    reasons = [refusal(s) for s in schemes] if refusal is not None else []
    for reason in reasons:
        if reason is not None:
            raise AlgorithmError(reason)
    return schemes


# ===== layer-wise machinery ================================================
class _StopForward(Exception):
    """Raised by a capture hook once every input the stage needs has been seen."""


@dataclass
class LayerStats:
    """Second moment and mean of a linear's calibration inputs."""

    gram: torch.Tensor  # [in, in] float32, sum_t x_t x_t^T / tokens
    mean: torch.Tensor  # [in] float32
    tokens: int


@torch.no_grad()
def input_stages(ctx: BlockContext) -> list[list[str]]:
    """The block's linears in call order, grouped by the input tensor they read (q/k/v, gate/up)."""
    names = list(ctx.linears)
    order: list[tuple[str, torch.Tensor]] = []
    handles = []
    for name in names:

        def pre_hook(_m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            if all(n != name for n, _ in order):
                order.append((name, args[0]))

        handles.append(ctx.block.get_submodule(name).register_forward_pre_hook(pre_hook))
    try:
        ctx.run_block(ctx.block, ctx.inputs[0])
    finally:
        for h in handles:
            h.remove()
    stages: list[list[str]] = []
    leaders: list[torch.Tensor] = []
    for name, x in order:
        for stage, lead in zip(stages, leaders, strict=True):
            if lead is x or (lead.shape == x.shape and torch.equal(lead, x)):
                stage.append(name)
                break
        else:
            stages.append([name])
            leaders.append(x)
    missing = [n for n in names if all(n not in s for s in stages)]
    return stages + [[n] for n in missing]  # never called on the probe: solved alone, last


@torch.no_grad()
def capture_stats(ctx: BlockContext, names: list[str], max_tokens: int) -> dict[str, LayerStats]:
    """Gram matrix and mean of each named linear's inputs over the calibration samples.

    ``max_tokens`` rows in all, taken as whole samples spread evenly over the calibration set
    (every sample's rows when that is fewer): running a sample costs a block forward whatever
    number of its rows is kept, so 8192 rows come from 16 samples of 512 tokens, not a few rows of
    each of 128. The forward of a sample stops as soon as every named linear has seen its input.
    """
    inputs = ctx.inputs
    tokens_per_sample = max(1, int(inputs[0].shape[0] * inputs[0].shape[1])) if inputs else 1
    wanted = min(len(inputs), max(1, math.ceil(max_tokens / tokens_per_sample)))
    if wanted < len(inputs):
        pick = torch.linspace(0, len(inputs) - 1, wanted).round().long().unique().tolist()
        inputs = [inputs[i] for i in pick]
    per_sample = max(1, math.ceil(max_tokens / max(1, len(inputs))))
    stats: dict[str, list[Any]] = {}
    seen: set[str] = set()
    handles = []
    for name in names:
        module = ctx.block.get_submodule(name)
        stats[name] = [
            torch.zeros(module.in_features, module.in_features),
            torch.zeros(module.in_features),
            0,
        ]

        def pre_hook(_m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            if x.shape[0] > per_sample:
                x = x[torch.linspace(0, x.shape[0] - 1, per_sample).round().long()]
            entry = stats[name]
            entry[0].addmm_(x.T, x)
            entry[1].add_(x.sum(0))
            entry[2] += x.shape[0]
            seen.add(name)
            if len(seen) == len(names):
                raise _StopForward

        handles.append(module.register_forward_pre_hook(pre_hook))
    try:
        for x in inputs:
            seen.clear()
            with contextlib.suppress(_StopForward):
                ctx.run_block(ctx.block, x)
    finally:
        for h in handles:
            h.remove()
    return {n: LayerStats(g / max(1, t), m / max(1, t), t) for n, (g, m, t) in stats.items()}


# A layer solver: (layer name, linear, scheme, input stats) -> (QTensor, bias correction or None)
LayerSolver = Callable[[str, nn.Linear, QScheme, LayerStats], tuple[QTensor, torch.Tensor | None]]


@torch.no_grad()
def sequential_quantize(
    ctx: BlockContext, solve: LayerSolver, max_tokens: int, timings: dict[str, float] | None = None
) -> dict[str, QTensor]:
    """Solve the block's linears stage by stage; later stages see the earlier ones quantized.

    Each solved linear's weight is replaced by its dequantized value (and its bias by the corrected
    one) for the later captures; the float weights are put back before returning, because the
    pipeline measures every layer's error against them. Corrected biases stay (a linear without a
    bias gets one): the pipeline's ``QLinear`` takes the module's bias.
    """
    out: dict[str, QTensor] = {}
    floats: dict[str, torch.Tensor] = {}
    try:
        for stage in input_stages(ctx):
            stats = capture_stats(ctx, stage, max_tokens)
            for name in stage:
                linear = ctx.linears[name]
                scheme = ctx.plans[name].weights
                assert scheme is not None
                tic = time.perf_counter()
                qtensor, delta = solve(ctx.full_name(name), linear, scheme, stats[name])
                if timings is not None:
                    timings[ctx.full_name(name)] = time.perf_counter() - tic
                out[name] = qtensor
                floats[name] = linear.weight.detach().clone()
                linear.weight.copy_(qtensor.dequantize(linear.weight.dtype))
                if delta is not None:
                    if linear.bias is None:
                        linear.bias = nn.Parameter(delta.to(linear.weight.dtype), requires_grad=False)
                    else:
                        linear.bias.add_(delta.to(linear.bias.dtype))
    finally:
        for name, weight in floats.items():
            ctx.linears[name].weight.copy_(weight)
    return out


def relative_error(delta_w: torch.Tensor, gram: torch.Tensor, energy: float) -> float:
    """``||dW X^T||^2 / ||W X^T||^2`` from the Gram matrix (float32)."""
    return float(((delta_w @ gram) * delta_w).sum()) / energy


# ===== grids: the core's scales, zeros and types, and exact QTensor assembly ======================
@dataclass
class GridSetup:
    """A weight in groups ``[A, B, n]`` with the core's RTN quantization parameters."""

    weight: torch.Tensor  # [out, in] float32
    groups: torch.Tensor  # [A, B, n] float32
    scheme: QScheme
    ids: torch.Tensor | None  # [A, B] member index (format families) or None
    stored_scales: Any  # Tensor | QTensor, as stored
    scales: torch.Tensor  # [A, B] effective float32 scales
    zero: torch.Tensor | None  # [A, B] effective zero (integer level or float offset)
    unit: torch.Tensor  # [A, B, n] unit-grid values (W / s + z or (W - m) / s)
    lower: torch.Tensor  # [A, B, n] largest allowed level <= unit (the smallest one below the grid)
    upper: torch.Tensor  # [A, B, n] smallest allowed level >= lower's successor (== lower at the ends)
    rtn: torch.Tensor  # [A, B, n] the core's round-to-nearest levels
    context: ScaleContext

    def dequant(self, levels: torch.Tensor) -> torch.Tensor:
        """``[out, in]`` weights of unit-grid values, exactly as ``QTensor.dequantize`` computes them."""
        values = _from_unit(levels, self.scales, self.zero, self.scheme)
        return from_groups(values, self.scheme.granularity, tuple(self.weight.shape))  # type: ignore[arg-type]


def _neighbours(y: torch.Tensor, fmt: NumberFormat, bounds: tuple[torch.Tensor, torch.Tensor] | None):
    """Consecutive levels ``lo <= y <= hi`` of ``fmt`` (both the end level outside the grid)."""
    levels = fmt.levels.to(torch.float32)
    idx = torch.searchsorted(levels, y.contiguous(), right=True) - 1
    lo_idx = idx.clamp(0, levels.numel() - 1)
    hi_idx = (idx + 1).clamp(0, levels.numel() - 1)
    lo, hi = levels[lo_idx], levels[hi_idx]
    below = y < levels[0]
    hi = torch.where(below, lo, hi)  # below the grid: both neighbours are the smallest level
    if bounds is not None:  # DGQ's INT8 code bounds (integer levels): clip both neighbours
        b_lo, b_hi = bounds[0].unsqueeze(-1), bounds[1].unsqueeze(-1)
        lo = torch.minimum(torch.maximum(lo, b_lo), b_hi)
        hi = torch.minimum(torch.maximum(hi, b_lo), b_hi)
    return lo, hi


def grid_setup(weight: torch.Tensor, scheme: QScheme) -> GridSetup:
    """The core's choice of types, scales and zeros (as ``quantize`` makes it) and each weight's
    neighbouring levels."""
    w = as_rows(weight.detach()).float()
    g = to_groups(w, scheme.granularity)
    ids, s_raw, lo_range, ctx, _ = _choose(g, scheme)
    stored, s = _final_scales(s_raw, scheme, ctx)
    fmt = scheme.number_format
    parts: list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for member in fmt.members:
        z = _zero_of(lo_range, s, scheme, member)
        bounds = _clamp_bounds(s, z, scheme, member, ctx)
        y = _to_unit(g, s, z, scheme)
        lo, hi = _neighbours(y, member, bounds)
        parts.append((z, y, lo, hi, _round_unit(y, member, bounds)))
    z, y, lo, hi, rtn = parts[0]
    if ids is not None:  # a family: each group takes its chosen member's values
        for index, (zm, ym, lom, him, rm) in enumerate(parts[1:], start=1):
            pick = (ids == index).unsqueeze(-1)
            y, lo, hi, rtn = (torch.where(pick, a, b) for a, b in ((ym, y), (lom, lo), (him, hi), (rm, rtn)))
            if zm is not None and z is not None:
                z = torch.where(ids == index, zm, z)
    return GridSetup(w, g, scheme, ids, stored, s, z, y, lo, hi, rtn, ctx)


def build_qtensor(
    setup: GridSetup,
    levels: torch.Tensor,
    shape: tuple[int, ...],
    name: str,
    *,
    stored_scales: Any = None,
    scales: torch.Tensor | None = None,
    zero: torch.Tensor | None = None,
) -> tuple[QTensor, torch.Tensor]:
    """``QTensor`` of unit-grid ``levels`` (exactly on the grid) and the weight it dequantizes to.

    ``stored_scales``/``scales``/``zero`` override the setup's (AdaQuant learns them). Raises
    ``AlgorithmError`` if the ``QTensor`` does not dequantize bit for bit to that weight.
    """
    scheme, fmt = setup.scheme, setup.scheme.number_format
    stored = setup.stored_scales if stored_scales is None else stored_scales
    s = setup.scales if scales is None else scales
    z = setup.zero if zero is None else zero
    codes = torch.zeros(levels.shape, dtype=torch.uint8)
    for index, member in enumerate(fmt.members):
        member_codes = member.encode(levels, check=False)  # levels are on the grid: encode is exact
        codes = (
            member_codes
            if setup.ids is None
            else torch.where((setup.ids == index).unsqueeze(-1), member_codes, codes)
        )
    zeros = None
    if scheme.zero_point == "int":
        assert z is not None and isinstance(fmt, NumberFormat)
        zeros = (z - fmt.min_level).to(torch.uint8)  # code of the zero level
    elif scheme.zero_point == "float":
        assert z is not None
        zeros = z.to(_zero_dtype(scheme))
    rows = tuple(setup.weight.shape)
    codes2d = from_groups(codes, scheme.granularity, rows)  # type: ignore[arg-type]
    type_ids = setup.ids.to(torch.uint8) if setup.ids is not None else None
    qtensor = QTensor(codes2d.reshape(shape).contiguous(), stored, scheme, shape, zeros, type_ids)
    values = _from_unit(levels, s, z, scheme)
    expected = from_groups(values, scheme.granularity, rows)  # type: ignore[arg-type]
    if not torch.equal(qtensor.dequantize().reshape(rows), expected):
        raise AlgorithmError(
            f"{name}: internal error, the QTensor does not dequantize to the optimized weight"
        )
    return qtensor, expected
