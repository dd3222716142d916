"""AdaQuant: layer-wise optimization of weights and scales on calibration data, plus bias correction.

Paper: Hubara, Nahshan, Hanani, Banner, Soudry, "Improving Post Training Neural Quantization:
Layer-wise Calibration and Integer Programming" (ICML 2021, arXiv 2006.10518), section 3
(AdaQuant) and the bias correction of its "light" pipeline; reference code papers-submission/
CalibTIP (``adaquant``: Adam on the layer's weight, bias and quantizer ranges, straight-through
rounding, mean squared output error).

Objective, per linear ``W`` ([out, in]) with calibration inputs ``X`` ([tokens, in]), mean ``mu``:

    min_{V, log s (, m), b}  || W X^T - (Q_s(W + s0 V) X^T + b 1^T) ||_F^2 / || W X^T ||_F^2

    Q_s(w) = s * (clamp(round(w / s + z)) - z)   (float offset: s * clamp(round((w - m) / s)) + m)

with ``round`` the format's nearest level (INT, FP ExMy, NF, dINT) and a straight-through gradient
(identity inside the grid, zero outside, so the scale gets LSQ's gradient). The bias is solved in
closed form: for any ``Q``, the best ``b`` is ``(W - Q) mu`` (per output channel,
``E[W x] - E[Q x]``: the paper's bias correction), and what remains is the error with the
*centred* second moment ``C = X^T X / T - mu mu^T``. So the optimization uses ``C`` and the bias
correction is added afterwards; both together are the exact joint optimum over the bias
(``adaquant.bias_correction=false``: plain second moment, no bias).

Steps, per linear (true-sequential inside the block, as in :mod:`anybit.algorithms.adaround`):

1. the core's RTN choice of scales and zero points for the scheme (``clip=mse`` included);
2. Adam on ``V`` (weight perturbation in units of the initial scales, start 0), ``log s`` (start:
   RTN's scales) and, for float offsets, ``m``; integer zero points stay RTN's;
3. the learned scales are rounded to the scheme's scale format (``store_scales``: fp16, bf16, dq,
   NVFP4's E4M3 x fp32) and the codes re-derived by nearest rounding of ``W + s0 V`` with them;
   float offsets are rounded to their storage dtype;
4. a safety net: if the result has a larger calibration error than RTN, RTN's codes are kept;
5. bias correction ``b += (W - Q) mu`` (a linear without a bias gets one; ``QLinear`` and the
   checkpoint format carry biases).

Refused up front (``check``): format families (BitMoD: the per-group type choice is discrete, no
gradient flows through it; use ``adaround`` or ``gptq``) and ``dual`` scales (DGQ: integer group
scales tied to per-group INT8 code bounds, not a continuous scale). ``e8m0`` scales (MX) are
powers of two: they are held at RTN's and only the weights are optimized.

Departures from the paper: the paper also quantizes activations inside the loop and tunes their
ranges; here weights only (activation quantizers of the recipe are not applied during capture);
learning rates are relative to the scales (``adaquant.lr`` for ``V`` and offsets, default 3e-4;
``adaquant.scale_lr`` for ``log s``, default 3e-3; tuned on the tiny models) instead of absolute;
``adaquant.iters`` (default 200; paper: 100 mini-batches of 50) full-batch iterations on the Gram
matrix of up to ``adaquant.max_tokens`` (default 8192) rows, products in bfloat16 for the gradient
only. A layer whose optimization ends worse than RTN keeps RTN (logged).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from anybit.algorithms.base import Algorithm, BlockContext, register
from anybit.algorithms.layerwise import (
    GridSetup,
    LayerStats,
    bool_option,
    build_qtensor,
    check_known_options,
    check_weight_schemes,
    grid_setup,
    number_option,
    relative_error,
    sequential_quantize,
)
from anybit.formats import FormatFamily, NumberFormat
from anybit.grouping import from_groups, to_groups
from anybit.qtensor import QTensor
from anybit.quantizer import _to_unit, _zero_dtype
from anybit.recipe import Recipe
from anybit.scales import effective_of_stored, store_scales
from anybit.scheme import QScheme

log = logging.getLogger(__name__)

DEFAULT_ITERS = 200
DEFAULT_LR = 3e-4  # weight perturbation V and float offsets, in units of the initial scale
DEFAULT_SCALE_LR = 3e-3  # log-scales
DEFAULT_MAX_TOKENS = 8192
FIXED_SCALE_FORMATS = ("e8m0",)  # powers of two: a continuous scale would only be snapped back


@dataclass(frozen=True)
class AdaQuantOptions:
    iters: int = DEFAULT_ITERS
    lr: float = DEFAULT_LR
    scale_lr: float = DEFAULT_SCALE_LR
    max_tokens: int = DEFAULT_MAX_TOKENS
    bias_correction: bool = True

    @staticmethod
    def from_recipe(recipe: Recipe) -> AdaQuantOptions:
        keys = {"iters", "lr", "scale_lr", "max_tokens", "bias_correction"}
        check_known_options(recipe, "adaquant.", {f"adaquant.{k}" for k in keys})
        return AdaQuantOptions(
            iters=number_option(recipe, "adaquant.iters", DEFAULT_ITERS, integer=True),
            lr=number_option(recipe, "adaquant.lr", DEFAULT_LR),
            scale_lr=number_option(recipe, "adaquant.scale_lr", DEFAULT_SCALE_LR, low=-1e-12),
            max_tokens=number_option(recipe, "adaquant.max_tokens", DEFAULT_MAX_TOKENS, integer=True),
            bias_correction=bool_option(recipe, "adaquant.bias_correction", True),
        )


def refusal(scheme: QScheme) -> str | None:
    """Why AdaQuant cannot serve ``scheme`` (None if it can)."""
    if isinstance(scheme.number_format, FormatFamily):
        return (
            f"adaquant cannot serve {scheme}: the format family {scheme.number_format.name} picks one type "
            "per group, a discrete choice no gradient flows through; use adaround or gptq for it"
        )
    if scheme.scale_format == "dual":
        return (
            f"adaquant cannot serve {scheme}: dual-grained (DGQ) scales are integers tied to per-group "
            "INT8 code bounds, not a continuous scale; use gptq or rtn for it"
        )
    return None


def adaquant_layer(
    name: str, weight: torch.Tensor, scheme: QScheme, stats: LayerStats, opts: AdaQuantOptions
) -> tuple[QTensor, torch.Tensor | None]:
    """AdaQuant of one linear (objective in the module docstring): (QTensor, bias correction)."""
    setup = grid_setup(weight, scheme)
    fmt = scheme.number_format
    assert isinstance(fmt, NumberFormat)
    shape = tuple(weight.shape)
    # the error metric: centred second moment when the bias absorbs the mean error
    gram = stats.gram
    if opts.bias_correction:
        gram = gram - torch.outer(stats.mean, stats.mean)
    energy = float(((setup.weight @ stats.gram) * setup.weight).sum())  # ||W X^T||^2 (uncentred)
    w_rtn = setup.dequant(setup.rtn)
    if energy <= 0 or stats.tokens == 0:  # dead inputs: nothing to learn from, keep RTN
        return build_rtn(setup, name, shape), None

    # step 1: RTN's scales and zeros are the start
    s0 = setup.scales.unsqueeze(-1)
    live = setup.scales > 0  # all-zero groups keep s = 0 (their weights are exactly 0)
    safe0 = torch.where(s0 > 0, s0, torch.ones_like(s0))
    z = setup.zero
    granularity, shape2d = scheme.granularity, tuple(setup.weight.shape)
    learn_scales = scheme.scale_format not in FIXED_SCALE_FORMATS and opts.scale_lr > 0
    lo_level, hi_level = fmt.min_level, fmt.max_level

    # step 2: Adam on V, log s (and m) with straight-through rounding
    v = torch.zeros_like(setup.groups, requires_grad=True)
    log_s = torch.log(torch.where(live, setup.scales, torch.ones_like(setup.scales))).requires_grad_(True)
    params: list[dict] = [{"params": [v], "lr": opts.lr}]
    if learn_scales:
        params.append({"params": [log_s], "lr": opts.scale_lr})
    offset = None
    if scheme.zero_point == "float":
        assert z is not None
        offset = torch.zeros_like(z, requires_grad=True)  # m = m0 + s0 * offset
        params.append({"params": [offset], "lr": opts.lr})
    optimizer = torch.optim.Adam(params)
    gram_lp = gram.to(torch.bfloat16)

    def soft_weight() -> torch.Tensor:
        """``Q_s(W + s0 V)`` in groups, differentiable through the straight-through estimator."""
        s = torch.where(live, log_s.exp(), torch.zeros_like(log_s)).unsqueeze(-1)
        s_div = torch.where(s > 0, s, torch.ones_like(s))
        w = setup.groups + safe0 * v
        if scheme.zero_point == "float":
            assert z is not None and offset is not None
            m = (z + setup.scales * offset).unsqueeze(-1)
            y = (w - m) / s_div
        else:
            m = None
            y = w / s_div + (z.unsqueeze(-1) if z is not None else 0.0)
        y = y.clamp(lo_level, hi_level)  # zero gradient outside the grid
        q = y + (fmt.round(y.detach(), check=False) - y).detach()  # straight-through rounding
        if scheme.zero_point == "float":
            return q * s + m
        return (q - z.unsqueeze(-1)) * s if z is not None else q * s

    with torch.enable_grad():  # the pipeline runs under no_grad
        for _ in range(opts.iters):
            w_hat = soft_weight()
            # output-error gradient 2 (Q - W) C / energy, by one bfloat16 product
            with torch.no_grad():
                delta = from_groups(w_hat.detach(), granularity, shape2d) - setup.weight
                grad = to_groups((delta.to(torch.bfloat16) @ gram_lp).float(), granularity).mul_(2 / energy)
            optimizer.zero_grad(set_to_none=True)
            w_hat.backward(grad)
            optimizer.step()

    with torch.no_grad():
        # step 3: scales to their storage format, codes re-derived with them
        s_learned = torch.where(live, log_s.exp(), setup.scales)
        if learn_scales:
            stored = store_scales(s_learned, scheme, setup.context)
            s_final = effective_of_stored(stored, tuple(s_learned.shape))
        else:
            stored, s_final = setup.stored_scales, setup.scales
        z_final = z
        if scheme.zero_point == "float":
            assert z is not None and offset is not None
            z_final = (z + setup.scales * offset).to(_zero_dtype(scheme)).float()
        w_target = setup.groups + safe0 * v
        levels = fmt.round(_to_unit(w_target, s_final, z_final, scheme), check=False)
        qtensor, w_hat = build_qtensor(
            setup, levels, shape, name, stored_scales=stored, scales=s_final, zero=z_final
        )
        # step 4: never worse than RTN on the calibration data
        err = relative_error(w_hat - setup.weight, gram, energy)
        err_rtn = relative_error(w_rtn - setup.weight, gram, energy)
        if err > err_rtn:
            log.warning("%s: AdaQuant (%.4g) worse than RTN (%.4g); keeping RTN", name, err, err_rtn)
            qtensor, w_hat = build_rtn(setup, name, shape), w_rtn
        log.debug("%s: relative error RTN %.4g -> AdaQuant %.4g", name, err_rtn, min(err, err_rtn))
        # step 5: bias correction E[W x] - E[Q x] per output channel
        delta_bias = (setup.weight - w_hat) @ stats.mean if opts.bias_correction else None
    return qtensor, delta_bias


def build_rtn(setup: GridSetup, name: str, shape: tuple[int, ...]) -> QTensor:
    return build_qtensor(setup, setup.rtn, shape, name)[0]


@register
class AdaQuant(Algorithm):
    name = "adaquant"
    kind = "weights"
    needs_calibration = True
    paper = "Hubara et al. 2021, Improving Post Training Neural Quantization (AdaQuant + bias correction)"

    def check(self, recipe: Recipe) -> None:
        AdaQuantOptions.from_recipe(recipe)  # refuses bad options before any work
        check_weight_schemes(recipe, "adaquant", refusal)

    def quantize_block(self, ctx: BlockContext) -> dict[str, QTensor]:
        opts = AdaQuantOptions.from_recipe(ctx.recipe)

        def solve(name: str, linear: nn.Linear, scheme: QScheme, stats: LayerStats):
            return adaquant_layer(name, linear.weight.detach(), scheme, stats, opts)

        return sequential_quantize(ctx, solve, opts.max_tokens, self.layer_seconds)
