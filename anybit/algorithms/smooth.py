"""SmoothQuant and AQAS: move activation outliers into the weights with per-channel scales.

Papers:

* **SmoothQuant** -- Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization
  for Large Language Models", ICML 2023. For every input channel ``j`` of a group of linears fed by
  the same producer (a norm, or a linear such as ``v_proj``/``up_proj``)::

      s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)        (alpha = ``smooth.alpha``, default 0.5)

  and ``X' = X diag(s)^-1`` (folded into the producer), ``W' = W diag(s)`` (folded into every
  consumer). ``max|X_j|`` comes from the block's calibration inputs, ``max|W_j|`` is the largest
  magnitude of column ``j`` over all consumers. In float the block computes exactly the same
  function (up to rounding); only the split of the dynamic range between X and W changes.

* **AQAS** -- Lee et al., "Enhancing Computation Efficiency in Large Language Models through Weight
  and Activation Quantization", EMNLP 2023 (arXiv 2311.05161), Section "activation-quantization-
  aware scaling". SmoothQuant balances ranges for W8A8; with 4-bit weights the migration that helps
  the activations can ruin the weights (and AWQ-style scaling, chosen for weights alone, can ruin
  8-bit activations). AQAS chooses the scales with *both* quantizers in the loop::

      s* = argmin_s  sum_{linears l of the group} || Q_A(X diag(s)^-1) Q_W(W_l diag(s))^T - X W_l^T ||^2

  What is implemented: the scales are searched in the SmoothQuant family
  ``s(alpha) = max|X|^alpha / max|W|^(1-alpha)`` over a grid of ``aqas.grid`` values of alpha in
  [0, 1] (default 11: 0, 0.1, ..., 1), plus ``s = 1`` (no smoothing), so the result is never worse
  than plain quantization on the calibration objective. ``Q_W`` is the layer's own weight scheme
  (any format the core supports, fake-quantized with its scale choice); ``Q_A`` is the layer's
  activation scheme: dynamic schemes are applied to every row, a static per-tensor scheme uses the
  range of ``X diag(s)^-1`` over *all* calibration tokens (computed exactly from per-channel minima
  and maxima, so the objective sees the same scale the static quantizer will freeze). The error is
  measured on ``aqas.rows`` calibration tokens (default 2048, taken evenly across the samples) to
  bound the cost; layers without an activation scheme use ``Q_A = identity`` and layers kept in
  float use ``Q_W = identity``.

  Departures (stated because the paper's appendix A.4 "Finding Scales for AQAS" could not be read
  offline here): the search is the one-parameter alpha grid above (the same parameterization as
  SmoothQuant, extended with the identity), not a per-channel optimization; one alpha is chosen per
  smoothing group (norm -> q/k/v, norm -> gate/up, v -> o, up -> down), minimizing the summed output
  error of all linears of the group.

* **SLAC** (same paper): match the calibration sequence length to the target task's. In anybit that
  is ``--calib-seqlen`` (``Recipe.calibration.seqlen``); both algorithms here take their activation
  statistics from whatever calibration inputs the pipeline gives them, so SLAC changes the scales
  (and static activation ranges) without any code here. ``bench/bench_slac.py`` measures it.

Both are *transforms*: they change the float block in place before the weight quantizer runs, and
compose with any weight quantizer (``--algo smooth,gptq``, ``--algo aqas,rtn``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from anybit.algorithms.base import Algorithm, BlockContext, register
from anybit.errors import AlgorithmError
from anybit.quantizer import fake_quantize, fake_quantize_static, static_scale
from anybit.recipe import Recipe
from anybit.scales import group_range
from anybit.scheme import QScheme

if TYPE_CHECKING:  # runtime import would be circular (models.pipeline imports algorithms)
    from anybit.models.adapters import SmoothGroup

DEFAULT_ALPHA = 0.5
DEFAULT_GRID = 11
DEFAULT_ROWS = 2048
MIN_STAT = 1e-5  # floor of channel maxima: a dead channel must not produce a zero or infinite scale
SCALE_RANGE = (1e-4, 1e4)  # clamp of the migration scales, keeps norms and weights finite


# -- folding --------------------------------------------------------------------------------------
@torch.no_grad()
def fold_scales(group: SmoothGroup, s: torch.Tensor) -> None:
    """Divide output channel ``c`` of ``group.prev`` by ``s[c]``; multiply consumer inputs by ``s``.

    The block's float function is unchanged (see :class:`SmoothGroup`): a norm's weight (and bias)
    absorbs ``1/s`` (Gemma norms multiply by ``1 + w``: ``w' = (1 + w)/s - 1``), a linear producer
    absorbs it in its weight rows and bias; grouped-query attention maps each o_proj input column to
    the v_proj channel it reads (``channel_map``).
    """
    if bool((s <= 0).any()) or not bool(torch.isfinite(s).all()):
        raise AlgorithmError(f"smoothing scales for {group.prev_name} must be finite and > 0")
    prev = group.prev
    if group.kind == "norm":
        w = prev.weight
        w.copy_(((w.float() + group.norm_offset) / s - group.norm_offset).to(w.dtype))
        if getattr(prev, "bias", None) is not None:
            prev.bias.copy_((prev.bias.float() / s).to(prev.bias.dtype))
        cols = s
    else:
        prev.weight.copy_((prev.weight.float() / s[:, None]).to(prev.weight.dtype))
        if prev.bias is not None:
            prev.bias.copy_((prev.bias.float() / s).to(prev.bias.dtype))
        cols = s if group.channel_map is None else s[group.channel_map]
    for lin in group.linears:
        lin.weight.copy_((lin.weight.float() * cols).to(lin.weight.dtype))


def to_channels(per_column: torch.Tensor, group: SmoothGroup, reduce: str) -> torch.Tensor:
    """Reduce a statistic of the consumers' input columns to the producer's output channels."""
    if group.channel_map is None:
        return per_column
    n = int(group.channel_map.max()) + 1
    out = torch.full((n,), float("-inf") if reduce == "amax" else float("inf"), dtype=per_column.dtype)
    return out.scatter_reduce(0, group.channel_map, per_column, reduce=reduce, include_self=True)


# -- calibration statistics -------------------------------------------------------------------
@dataclass
class GroupStats:
    """What the scale choice needs about the shared input ``X`` of one group's consumers."""

    col_max: torch.Tensor  # [in] max X_j over all calibration tokens (consumer input columns)
    col_min: torch.Tensor  # [in] min X_j
    rows: torch.Tensor  # [R, in] a subsample of rows of X (AQAS objective); may be empty


@torch.no_grad()
def collect_stats(ctx: BlockContext, groups: list[SmoothGroup], rows: int) -> list[GroupStats]:
    """One pass of the block over its calibration inputs; per-channel range + an even row subsample.

    Why not ``ctx.capture_linear_inputs``: it keeps every row (GBs for long calibration sets); only
    channel extrema and ``rows`` evenly strided tokens are needed here.
    """
    names = [g.linear_names[0] for g in groups]  # consumers of a group share one input
    total_tokens = sum(int(x.shape[0] * x.shape[1]) for x in ctx.inputs)
    stride = max(1, total_tokens // rows) if rows > 0 else 0
    col_max: dict[str, torch.Tensor] = {}
    col_min: dict[str, torch.Tensor] = {}
    kept: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    offset = [0]  # token index of the current sample's first row (shared by all hooks)
    handles = []
    for name in dict.fromkeys(names):
        module = ctx.block.get_submodule(name)

        def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            hi, lo = x.amax(0), x.amin(0)
            col_max[name] = hi if name not in col_max else torch.maximum(col_max[name], hi)
            col_min[name] = lo if name not in col_min else torch.minimum(col_min[name], lo)
            if stride:
                first = (-offset[0]) % stride
                kept[name].append(x[first::stride])

        handles.append(module.register_forward_pre_hook(hook))
    try:
        for x in ctx.inputs:
            ctx.run_block(ctx.block, x)
            offset[0] += int(x.shape[0] * x.shape[1])
    finally:
        for h in handles:
            h.remove()
    out = []
    for name in names:
        sub = torch.cat(kept[name])[:rows] if kept[name] else torch.empty(0, col_max[name].numel())
        out.append(GroupStats(col_max[name], col_min[name], sub))
    return out


def weight_col_max(group: SmoothGroup) -> torch.Tensor:
    """``max|W_j|`` over every consumer, per producer channel."""
    per_col = torch.stack([lin.weight.detach().float().abs().amax(0) for lin in group.linears]).amax(0)
    return to_channels(per_col, group, "amax")


def act_channel_absmax(group: SmoothGroup, stats: GroupStats) -> torch.Tensor:
    """``max|X_j|`` per producer channel."""
    per_col = torch.maximum(stats.col_max.abs(), stats.col_min.abs())
    return to_channels(per_col, group, "amax")


def smoothquant_scales(x_max: torch.Tensor, w_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = max|X|^alpha / max|W|^(1-alpha)``, normalized to geometric mean 1 and clamped."""
    x_max, w_max = x_max.clamp(min=MIN_STAT), w_max.clamp(min=MIN_STAT)
    s = x_max.pow(alpha) / w_max.pow(1.0 - alpha)
    s = s / s.log().mean().exp()  # a global factor is free; keep weights and norms near their scale
    return s.clamp(*SCALE_RANGE)


def group_is_quantized(ctx: BlockContext, group: SmoothGroup, need_acts: bool) -> bool:
    plans = [ctx.plans.get(n) for n in group.linear_names]
    if need_acts:
        return any(p is not None and p.acts is not None for p in plans)
    return any(p is not None and (p.acts is not None or p.weights is not None) for p in plans)


def recipe_has_acts(recipe: Recipe) -> bool:
    return recipe.acts is not None or any(o.acts not in ("inherit", None) for o in recipe.overrides)


def _check_alpha(value: object, key: str) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise AlgorithmError(f"{key} must be a number in [0, 1], got {value!r}")
    return float(value)


@register
class SmoothQuant(Algorithm):
    """SmoothQuant migration scales with a fixed alpha (module docstring)."""

    name = "smooth"
    kind = "transform"
    paper = "Xiao et al. 2023, SmoothQuant (arXiv 2211.10438)"

    def check(self, recipe: Recipe) -> None:
        _check_alpha(recipe.option("smooth.alpha", DEFAULT_ALPHA), "smooth.alpha")
        if not recipe_has_acts(recipe):
            raise AlgorithmError(
                "smooth migrates activation outliers into the weights; this recipe quantizes no "
                "activations, so it would only make the weights harder to quantize. Give --acts "
                "(e.g. int8:token) or use aqas, which also serves weight-only recipes"
            )

    @torch.no_grad()
    def transform(self, ctx: BlockContext) -> None:
        alpha = _check_alpha(ctx.recipe.option("smooth.alpha", DEFAULT_ALPHA), "smooth.alpha")
        groups = [g for g in ctx.smooth_groups if group_is_quantized(ctx, g, need_acts=True)]
        if not groups:
            return
        stats = collect_stats(ctx, groups, rows=0)
        scales = [
            smoothquant_scales(act_channel_absmax(g, st), weight_col_max(g), alpha)
            for g, st in zip(groups, stats, strict=True)
        ]
        for g, s in zip(groups, scales, strict=True):
            fold_scales(g, s)


# -- AQAS -----------------------------------------------------------------------------------------
def _quantize_acts(x: torch.Tensor, scheme: QScheme | None, hi: float, lo: float) -> torch.Tensor:
    """``Q_A(x)``: dynamic schemes per call; a static per-tensor scheme from the full-data range."""
    if scheme is None:
        return x
    if scheme.dynamic:
        return fake_quantize(x, scheme, name="aqas activations")
    if scheme.clip == "percentile":  # the tail needs every token; the subsample is the best we have
        h, low = group_range(x.reshape(1, 1, -1), scheme)
    else:
        h, low = group_range(torch.tensor([[[hi, lo]]]), scheme)
    scale, zero = static_scale(h, low, scheme)
    return fake_quantize_static(x, scheme, scale, zero)


@torch.no_grad()
def aqas_objective(ctx: BlockContext, group: SmoothGroup, stats: GroupStats, s: torch.Tensor) -> float:
    """``sum_l ||Q_A(X / s) Q_W(W_l s)^T - X W_l^T||^2`` on the row subsample, for producer scales s."""
    cols = s if group.channel_map is None else s[group.channel_map]
    x = stats.rows
    xs = x / cols
    # static range of X / s over all tokens: exact from the per-column extrema (s > 0)
    hi = float((stats.col_max / cols).max().clamp(min=0))
    lo = float((stats.col_min / cols).min().clamp(max=0))
    total = 0.0
    xq_cache: dict[str, torch.Tensor] = {}
    for name, lin in zip(group.linear_names, group.linears, strict=True):
        plan = ctx.plans.get(name)
        acts = plan.acts if plan is not None else None
        key = str(acts)
        if key not in xq_cache:
            xq_cache[key] = _quantize_acts(xs, acts, hi, lo)
        w = lin.weight.detach().float()
        ws = w * cols
        if plan is not None and plan.weights is not None:
            ws = fake_quantize(ws, plan.weights, name=f"aqas {name}")
        total += float((xq_cache[key] @ ws.T - x @ w.T).square().sum())
    return total


@register
class AQAS(Algorithm):
    """Activation-quantization-aware scaling: SmoothQuant scales chosen with Q_W and Q_A in the loop."""

    name = "aqas"
    kind = "transform"
    paper = "Lee et al. 2023, EMNLP (arXiv 2311.05161), activation-quantization-aware scaling"

    def check(self, recipe: Recipe) -> None:
        grid = recipe.option("aqas.grid", DEFAULT_GRID)
        rows = recipe.option("aqas.rows", DEFAULT_ROWS)
        if not isinstance(grid, int) or grid < 2:
            raise AlgorithmError(f"aqas.grid must be an integer >= 2 (alpha values in [0, 1]), got {grid!r}")
        if not isinstance(rows, int) or rows < 16:
            raise AlgorithmError(f"aqas.rows must be an integer >= 16 (calibration tokens), got {rows!r}")

    @torch.no_grad()
    def transform(self, ctx: BlockContext) -> None:
        grid = int(ctx.recipe.option("aqas.grid", DEFAULT_GRID))
        rows = int(ctx.recipe.option("aqas.rows", DEFAULT_ROWS))
        groups = [g for g in ctx.smooth_groups if group_is_quantized(ctx, g, need_acts=False)]
        if not groups:
            return
        stats = collect_stats(ctx, groups, rows=rows)
        alphas = torch.linspace(0.0, 1.0, grid).tolist()
        chosen = []
        for g, st in zip(groups, stats, strict=True):
            x_max, w_max = act_channel_absmax(g, st), weight_col_max(g)
            best_s = torch.ones_like(x_max)  # the identity is always a candidate
            best = aqas_objective(ctx, g, st, best_s)
            for alpha in alphas:
                s = smoothquant_scales(x_max, w_max, alpha)
                err = aqas_objective(ctx, g, st, s)
                if err < best:
                    best, best_s = err, s
            chosen.append(best_s)
        # fold after all searches: each group's objective was measured on the unfolded block
        for g, s in zip(groups, chosen, strict=True):
            fold_scales(g, s)
