"""DGQ: dual-grained weights found by a two-phase grid search on the layer output, and
percentile-clipping smoothing of activation outliers.

Paper: Zhang, Fei, Wu, He, Lou, Zhou, "Dual Grained Quantization: Efficient Fine-Grained
Quantization for LLM" (arXiv 2310.04836, 2023); public code ilur98/DGQ (``quantizer_helper.py``
``searchquant``, ``smooth.py`` ``smooth_ln_fcs``/``smooth_llama_mlp``), read for this module.

Dual-grained weights (the ``dual`` scale format of the core, :mod:`anybit.scales`): INT4 codes
with an integer group scale ``S2`` in 1..127 (8 bits) times an fp32 channel scale ``s_c``, codes
clamped per group so that ``S2 * (q - z)`` is an INT8 value; an INT8 x INT8 GEMM then serves
W4A8 with one float rescale per channel and token.

Two algorithms are registered here.

``dgq`` (weight quantizer). For every linear ``W`` ([out, in]) with calibration inputs ``X``
(Gram ``H = X^T X / tokens`` over up to ``dgq.max_tokens`` rows, true-sequential inside the
block, the machinery of :mod:`anybit.algorithms.adaround`):

* phase 1, per group ``g`` of every row: the clipping ratio ``r`` of the fine scale over
  ``dgq.group_grid`` values from 1.0 down to ``dgq.group_min`` (paper code: 20 values, 1.009 ..
  0.8), with the fine scales in float, minimizing the group's *output* error
  ``(W_g - Q_r(W_g)) H_gg (W_g - Q_r(W_g))^T`` (``H_gg`` the diagonal block of the group's
  columns; the paper computes ``||X_g W_g^T - X_g Q(W_g)^T||^2`` directly);
* phase 2, per row (dual schemes only): the ratio ``r`` of the channel scale
  ``s_c = r * absmax(row) / 127`` over ``dgq.channel_grid`` values from 1.0 down to
  ``dgq.channel_min`` (paper: 80 values, 1.0075 .. 0.2), with the integer group scales
  ``round(s_g / s_c)`` and the INT8 code clamp in the loop, minimizing the row's full output error
  ``(W - Q(W)) H (W - Q(W))^T``.

The result is assembled by :func:`anybit.quantizer.quantize_with_params`, so it is exactly a
QTensor of the user's scheme. ``dgq`` serves any single-format scheme whose scales round element
by element (fp32/fp16/bf16/e8m0) or ``dual``, at group or channel granularity: for a non-dual
scheme only phase 1 runs (an output-error clipping search, useful for W4A16 baselines). Both grids
contain ratio 1.0, so the search contains the plain min-max choice; a layer whose searched result
has a larger calibration output error than the core's RTN of the same scheme keeps RTN (never seen
in the tests; logged).

``pcsmooth`` (transform): DGQ's percentile clipping smoothing. For every smoothing group of the
block whose consumers quantize their activations (norm -> q/k/v, norm -> gate/up, v -> o,
up -> down), with ``a_j`` the per-channel activation magnitude, the baseline ``b`` is the ``k``-th
largest ``a_j`` with ``k = int(channels * (1 - pcsmooth.percentile / 100) + 1.5)`` (99.5: the
top 0.5%), and ``s_j = max(a_j / b, 1)``: only the outlier channels above the baseline are scaled
down to it, their range migrating into the weights; every other channel is untouched. ``a_j`` is
the minimum over calibration samples of each sample's ``max |X_j|`` (``pcsmooth.stat=min``, as
the paper's code keeps it; ``max`` uses the overall maximum). The scales fold exactly into the
producer (see :func:`anybit.algorithms.smooth.fold_scales`). It is meant for DGQ's group-wise
weights: an outlier column multiplied by ``a_j / b`` (tens) inflates the range of every group that
contains it, which a group-wise INT4 scale absorbs locally, but a per-channel weight scale spreads
over the whole row: measured on smollm2 W8A8 (``int8:channel`` weights, 16 calibration samples)
``pcsmooth`` gives +5.4% perplexity against +2.9% for plain RTN and +0.9% for SmoothQuant
(``bench/accuracy.md``).

Departures: the Gram-matrix form of the output error is exact for the objective but averages over
``dgq.max_tokens`` rows of all samples (the paper's code uses the last calibration batch only);
grids start at 1.0, not slightly above; the channel scale stays fp32 (paper: fp16);
``pcsmooth`` also smooths the v -> o pair (the paper's code has it commented out), because only
channels beyond the percentile move; the paper's extra "mean bias" centring of LayerNorm
activations (OPT) is not implemented. The full paper recipe is ``--algo pcsmooth,dgq`` with
``--weights int4:g128:dual:asym --acts int8:token``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from anybit.algorithms.base import Algorithm, BlockContext, register
from anybit.algorithms.layerwise import (
    DEFAULT_MAX_TOKENS,
    LayerStats,
    check_known_options,
    check_weight_schemes,
    number_option,
    sequential_quantize,
)
from anybit.algorithms.smooth import fold_scales, group_is_quantized, recipe_has_acts, to_channels
from anybit.errors import AlgorithmError
from anybit.grouping import from_groups, to_groups
from anybit.qtensor import QTensor
from anybit.quantizer import fake_quantize_groups, quantize, quantize_with_params
from anybit.recipe import Recipe
from anybit.scales import (
    DGQ_CHANNEL_GRID,
    DGQ_CHANNEL_MIN_RATIO,
    DGQ_GROUP_GRID,
    DGQ_GROUP_MIN_RATIO,
    ScaleContext,
    group_range,
    make_context,
    scale_from_range,
)
from anybit.scheme import QScheme

log = logging.getLogger(__name__)

SEARCH_SCALES = ("fp32", "fp16", "bf16", "e8m0", "dual")
DEFAULT_PERCENTILE = 99.5
STATS = ("min", "max")


# ===== dgq: two-phase output-error search ========================================================
@dataclass(frozen=True)
class DGQOptions:
    group_grid: int = DGQ_GROUP_GRID
    group_min: float = DGQ_GROUP_MIN_RATIO
    channel_grid: int = DGQ_CHANNEL_GRID
    channel_min: float = DGQ_CHANNEL_MIN_RATIO
    max_tokens: int = DEFAULT_MAX_TOKENS

    @staticmethod
    def from_recipe(recipe: Recipe) -> DGQOptions:
        keys = ("group_grid", "group_min", "channel_grid", "channel_min", "max_tokens")
        check_known_options(recipe, "dgq.", {f"dgq.{k}" for k in keys})
        opts = DGQOptions(
            group_grid=number_option(recipe, "dgq.group_grid", DGQ_GROUP_GRID, low=1, integer=True),
            group_min=number_option(recipe, "dgq.group_min", DGQ_GROUP_MIN_RATIO),
            channel_grid=number_option(recipe, "dgq.channel_grid", DGQ_CHANNEL_GRID, low=1, integer=True),
            channel_min=number_option(recipe, "dgq.channel_min", DGQ_CHANNEL_MIN_RATIO),
            max_tokens=number_option(recipe, "dgq.max_tokens", DEFAULT_MAX_TOKENS, integer=True),
        )
        for key, value in (("dgq.group_min", opts.group_min), ("dgq.channel_min", opts.channel_min)):
            if value >= 1.0:
                raise AlgorithmError(f"option {key}={value} must be in (0, 1): the smallest clipping ratio")
        return opts


def ratios(points: int, smallest: float) -> list[float]:
    """``points`` clipping ratios from 1.0 down to ``smallest`` (1.0 alone when ``points == 1``)."""
    if points == 1:
        return [1.0]
    return [1.0 - i * (1.0 - smallest) / (points - 1) for i in range(points)]


def refusal(scheme: QScheme) -> str | None:
    """Why ``dgq`` cannot serve ``scheme`` (None if it can): the whole error message."""
    reason = _reason(scheme)
    return None if reason is None else f"dgq cannot serve this recipe: {reason}"


def _reason(scheme: QScheme) -> str | None:
    if len(scheme.number_format.members) > 1:
        return (
            f"{scheme} is a format family (a type chosen per group); DGQ searches scales of one "
            "integer/float grid. Use rtn or gptq for families"
        )
    if scheme.scale_format not in SEARCH_SCALES:
        return (
            f"{scheme} stores scales as {scheme.scale_format}, which are quantized across groups; "
            f"dgq searches scales in {', '.join(SEARCH_SCALES)}. Use rtn or gptq for this scheme"
        )
    if scheme.granularity.kind not in ("group", "channel"):
        return f"{scheme} has {scheme.granularity.kind} granularity; dgq searches group or channel scales"
    return None


def group_blocks(gram: torch.Tensor, groups: int, size: int) -> torch.Tensor:
    """The diagonal blocks ``[B, n, n]`` of a Gram matrix for ``B`` groups of ``n`` columns."""
    return gram.reshape(groups, size, groups, size).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def output_error_groups(delta: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Per group ``[A, B]``: ``d H_gg d^T`` for weight errors ``delta`` ``[A, B, n]``."""
    return torch.einsum("abi,bij,abj->ab", delta, blocks, delta)


def output_error_rows(delta: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Per row ``[out]``: ``d H d^T`` for weight errors ``delta`` ``[out, in]``."""
    return ((delta @ gram) * delta).sum(1)


@torch.no_grad()
def dgq_layer(
    weight: torch.Tensor, scheme: QScheme, gram: torch.Tensor, opts: DGQOptions, name: str
) -> QTensor:
    """The two-phase output-error search for one linear; returns the QTensor (module docstring)."""
    w = weight.detach().float()
    gran = scheme.granularity
    g = to_groups(w, gran)  # [A, B, n]
    _, groups, size = g.shape
    fmt = scheme.number_format
    dual = scheme.scale_format == "dual"
    # phase 1: fine scales in float (dual) or in their own format, ratio per group
    phase1 = (scheme.with_(scale_format="fp32") if dual else scheme).with_(clip="minmax")
    hi, lo = group_range(g, phase1)
    ctx1 = ScaleContext()
    blocks = group_blocks(gram, groups, size)
    best_s = best_lo = best_err = None
    for r in ratios(opts.group_grid, opts.group_min):
        s_r = scale_from_range(hi * r, lo * r, phase1, fmt)
        err = output_error_groups(fake_quantize_groups(g, s_r, lo * r, phase1, ctx1) - g, blocks)
        if best_err is None or best_s is None or best_lo is None:
            best_s, best_lo, best_err = s_r, lo * r, err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s_r, best_s)
        best_lo = torch.where(better, lo * r, best_lo)
    assert best_s is not None and best_lo is not None
    if dual:
        # phase 2: the channel scale per row, integer group scales and INT8 clamp in the loop
        best_outer, best_row = None, None
        for r in ratios(opts.channel_grid, opts.channel_min):
            ctx_r = make_context(best_s, scheme, g, channel_ratio=r)
            values = fake_quantize_groups(g, best_s, best_lo, scheme, ctx_r)
            err = output_error_rows(from_groups(values - g, gran, tuple(w.shape)), gram)  # type: ignore[arg-type]
            assert ctx_r.outer is not None
            if best_outer is None or best_row is None:
                best_outer, best_row = ctx_r.outer, err
                continue
            better = err < best_row
            best_outer = torch.where(better.unsqueeze(-1), ctx_r.outer, best_outer)
            best_row = torch.minimum(err, best_row)
        context = ScaleContext(best_outer)
    else:
        context = make_context(best_s, scheme, g)
    searched = quantize_with_params(w, scheme, best_s, best_lo, context, name=name)
    # safety net: never worse than the core's RTN of the same scheme on the calibration objective
    rtn = quantize(w, scheme, name=name)
    err_search = float(output_error_rows(searched.dequantize() - w, gram).sum())
    err_rtn = float(output_error_rows(rtn.dequantize() - w, gram).sum())
    if err_rtn < err_search:
        log.info("DGQ %s: searched scales lose to RTN (%.3g > %.3g); RTN kept", name, err_search, err_rtn)
        return rtn
    return searched


@register
class DGQ(Algorithm):
    """Two-phase grid search of (dual-grained) scales on the layer output (module docstring)."""

    name = "dgq"
    kind = "weights"
    needs_calibration = True
    paper = "Zhang et al. 2023, Dual Grained Quantization (arXiv 2310.04836)"

    def check(self, recipe: Recipe) -> None:
        DGQOptions.from_recipe(recipe)
        check_weight_schemes(recipe, "dgq", refusal)

    def quantize_block(self, ctx: BlockContext) -> dict[str, QTensor]:
        opts = DGQOptions.from_recipe(ctx.recipe)

        def solve(name: str, linear: nn.Linear, scheme: QScheme, stats: LayerStats):
            return dgq_layer(linear.weight, scheme, stats.gram, opts, name), None

        return sequential_quantize(ctx, solve, opts.max_tokens, self.layer_seconds)


# ===== pcsmooth: percentile clipping smoothing ===================================================
def percentile_scales(act_max: torch.Tensor, percentile: float) -> torch.Tensor:
    """``s_j = max(a_j / b, 1)`` with ``b`` the ``int(n (1 - p/100) + 1.5)``-th largest ``a_j``."""
    n = act_max.numel()
    k = min(n, max(1, int(n * (1.0 - percentile / 100.0) + 1.5)))
    baseline = float(act_max.topk(k).values[-1])
    if baseline <= 1e-4:  # a (nearly) dead input: nothing to smooth (the paper skips it too)
        return torch.ones_like(act_max)
    return (act_max / baseline).clamp(min=1.0)


@torch.no_grad()
def channel_magnitudes(ctx: BlockContext, names: list[str], stat: str) -> dict[str, torch.Tensor]:
    """Per input channel of each named linear: min (or max) over samples of the sample's max |x|."""
    out: dict[str, torch.Tensor] = {}
    handles = []
    for name in dict.fromkeys(names):

        def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float().abs().amax(0)
            if name not in out:
                out[name] = x
            else:
                out[name] = torch.minimum(out[name], x) if stat == "min" else torch.maximum(out[name], x)

        handles.append(ctx.block.get_submodule(name).register_forward_pre_hook(hook))
    try:
        for x in ctx.inputs:
            ctx.run_block(ctx.block, x)
    finally:
        for h in handles:
            h.remove()
    return out


def _pcsmooth_options(recipe: Recipe) -> tuple[float, str]:
    check_known_options(recipe, "pcsmooth.", {"pcsmooth.percentile", "pcsmooth.stat"})
    percentile = number_option(recipe, "pcsmooth.percentile", DEFAULT_PERCENTILE)
    if not percentile < 100.0:
        raise AlgorithmError(f"option pcsmooth.percentile={percentile} must be in (0, 100)")
    stat = str(recipe.option("pcsmooth.stat", "min")).strip().lower()
    if stat not in STATS:
        raise AlgorithmError(f"option pcsmooth.stat={stat!r} must be one of {', '.join(STATS)}")
    return percentile, stat


@register
class PercentileSmooth(Algorithm):
    """DGQ's percentile clipping smoothing: outlier channels scaled down to the percentile."""

    name = "pcsmooth"
    kind = "transform"
    paper = "Zhang et al. 2023, Dual Grained Quantization (arXiv 2310.04836), percentile clipping"

    def check(self, recipe: Recipe) -> None:
        _pcsmooth_options(recipe)
        if not recipe_has_acts(recipe):
            raise AlgorithmError(
                "pcsmooth migrates activation outliers into the weights; this recipe quantizes no "
                "activations. Give --acts (e.g. int8:token) or leave pcsmooth out"
            )

    @torch.no_grad()
    def transform(self, ctx: BlockContext) -> None:
        percentile, stat = _pcsmooth_options(ctx.recipe)
        groups = [g for g in ctx.smooth_groups if group_is_quantized(ctx, g, need_acts=True)]
        if not groups:
            return
        mags = channel_magnitudes(ctx, [g.linear_names[0] for g in groups], stat)
        scales = [
            percentile_scales(to_channels(mags[g.linear_names[0]], g, "amax"), percentile) for g in groups
        ]
        for g, s in zip(groups, scales, strict=True):
            fold_scales(g, s)
