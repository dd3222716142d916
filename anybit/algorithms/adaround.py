"""Learned rounding (AdaRound) on any grid of the core: INT, FP ExMy, NF, dINT, BitMoD.

Papers: Nagel, Amjad, van Baalen, Louizos, Blankevoort, "Up or Down? Adaptive Rounding for
Post-Training Quantization" (ICML 2020, arXiv 2004.10568); used for FP4/FP8 grids in Chen, Lee,
Wu, Wang, Zhang, "Low-Bitwidth Floating Point Quantization for Efficient High-Quality Diffusion
Models" (2024, arXiv 2408.06995): the rounding variable chooses between the two *neighbouring
representable values* of the non-uniform grid instead of floor/ceil of an integer grid.

Objective, per linear ``W`` ([out, in]) with calibration inputs ``X`` ([tokens, in]):

    min_V  ||W X^T - W~(V) X^T||_F^2 / ||W X^T||_F^2  +  lam * mean_i (1 - |2 h(V_i) - 1|^beta)

    W~(V) = dequant(lo + h(V) * (hi - lo)),   h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)

where ``lo <= W / s (+ z) <= hi`` are the two consecutive levels of the format around each weight's
unit-grid value (``fmt.levels``; in the shifted domain ``W / s + z`` for integer zero points, and
``(W - m) / s`` for float offsets), ``zeta = 1.1, gamma = -0.1`` (the paper's rectified sigmoid),
``beta`` annealed linearly from 20 to 2 after a warm-up of 20% of the iterations without the
regularizer (the paper's schedule). The final weight takes ``hi`` where ``h >= 1/2``.

What is implemented (CPU):

- scales, zero points (and, for a family such as BitMoD, each group's member type) are the core's
  RTN choice for the scheme (``clip=mse`` included), stored in the scheme's scale format before
  the optimization; only the rounding is learned, so every scale format works (``dual`` too: its
  INT8 code bounds clip the two neighbours);
- the reconstruction term uses the Gram matrix ``H = X^T X`` of the layer's calibration inputs
  (accumulated over up to ``adaround.max_tokens`` rows spread over all samples), so an iteration
  costs one ``[out, in] x [in, in]`` product whatever the number of tokens; that product runs in
  bfloat16 (4-5x faster on this CPU; it only feeds the gradient), the losses that decide anything
  are computed in float32;
- true-sequential inside the block: linears reading the same input (q/k/v, gate/up) are solved
  from one capture; later inputs are captured with the earlier linears already quantized;
- ``V`` starts where ``h`` equals the fractional position of the weight between its neighbours
  (so the soft weight starts at the float weight, and hard rounding at this point is RTN);
- a safety net: a layer whose learned rounding has a larger calibration error than RTN keeps
  RTN's codes (logged); it never happens in the tests but keeps a bad optimization harmless.

Departures from the paper: Adam with a larger learning rate (``adaround.lr``, default 3e-2) and far
fewer iterations (``adaround.iters``, default 300; paper 10k-20k) so that a 30-block model takes
minutes on two cores; the reconstruction term is normalized by the layer's output energy (so one
``lam`` serves every layer: ``adaround.lambda``, default 1.0, tuned on the tiny models; the paper's
0.01 multiplies a sum over weights against an unnormalized output MSE); the loss is the linear's
output (the paper may include the following activation function, which a Llama linear lacks).
Other options: ``adaround.max_tokens`` (default 8192), ``adaround.warmup`` (fraction, default 0.2).

The layer-wise machinery (input-sharing stages, Gram capture, exact QTensor assembly) lives in
:mod:`anybit.algorithms.layerwise`, shared with AdaQuant, DGQ and ABQ-LLM.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from anybit.algorithms.base import Algorithm, BlockContext, register
from anybit.algorithms.layerwise import (  # noqa: F401  (re-exported: the layer-wise API moved here)
    DEFAULT_MAX_TOKENS,
    GridSetup,
    LayerSolver,
    LayerStats,
    build_qtensor,
    capture_stats,
    check_known_options,
    check_weight_schemes,
    grid_setup,
    input_stages,
    number_option,
    recipe_weight_schemes,
    relative_error,
    sequential_quantize,
)
from anybit.errors import AlgorithmError
from anybit.grouping import to_groups
from anybit.qtensor import QTensor
from anybit.recipe import Recipe
from anybit.scheme import QScheme

log = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1  # rectified sigmoid stretch (Nagel et al. 2020, section 4)
BETA_START, BETA_END = 20.0, 2.0  # regularizer temperature schedule (paper)
DEFAULT_ITERS = 300
DEFAULT_LR = 3e-2
DEFAULT_LAMBDA = 1.0
DEFAULT_WARMUP = 0.2  # fraction of the iterations without the regularizer (paper: 20%)


# ===== AdaRound ===================================================================================
def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def inverse_rectified_sigmoid(h: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V) = h`` for ``h`` in [0, 1] (finite: the stretch keeps sigmoid off 0 and 1)."""
    p = (h - GAMMA) / (ZETA - GAMMA)
    return torch.log(p / (1 - p))


@dataclass(frozen=True)
class AdaRoundOptions:
    iters: int = DEFAULT_ITERS
    lr: float = DEFAULT_LR
    lam: float = DEFAULT_LAMBDA
    warmup: float = DEFAULT_WARMUP
    max_tokens: int = DEFAULT_MAX_TOKENS

    @staticmethod
    def from_recipe(recipe: Recipe) -> AdaRoundOptions:
        keys = {"iters", "lr", "lambda", "warmup", "max_tokens"}
        check_known_options(recipe, "adaround.", {f"adaround.{k}" for k in keys})
        warmup = number_option(recipe, "adaround.warmup", DEFAULT_WARMUP, low=-1e-12)
        if warmup >= 1:
            raise AlgorithmError(f"option adaround.warmup={warmup} must be in [0, 1)")
        return AdaRoundOptions(
            iters=number_option(recipe, "adaround.iters", DEFAULT_ITERS, integer=True),
            lr=number_option(recipe, "adaround.lr", DEFAULT_LR),
            lam=number_option(recipe, "adaround.lambda", DEFAULT_LAMBDA, low=-1e-12),
            warmup=warmup,
            max_tokens=number_option(recipe, "adaround.max_tokens", DEFAULT_MAX_TOKENS, integer=True),
        )


def adaround_layer(
    name: str, weight: torch.Tensor, scheme: QScheme, stats: LayerStats, opts: AdaRoundOptions
) -> QTensor:
    """Learned rounding of one linear's weight (objective in the module docstring)."""
    setup = grid_setup(weight, scheme)
    gram = stats.gram
    energy = float(((setup.weight @ gram) * setup.weight).sum())
    if energy <= 0 or stats.tokens == 0:  # dead inputs: nothing to learn from, keep RTN
        return build_qtensor(setup, setup.rtn, tuple(weight.shape), name)[0]
    gap = setup.upper - setup.lower
    movable = gap > 0
    # start: h = fractional position between the neighbours (soft weight == float weight)
    frac = torch.where(movable, (setup.unit - setup.lower) / torch.where(movable, gap, 1.0), 0.0)
    v = inverse_rectified_sigmoid(frac.clamp(0, 1))
    v.grad = torch.zeros_like(v)
    optimizer = torch.optim.Adam([v], lr=opts.lr)
    gram_lp = gram.to(torch.bfloat16)
    warm = int(opts.warmup * opts.iters)
    mask = movable.float()  # weights outside the grid have one neighbour: nothing to learn
    # d W~ / d h = s * gap (the dequantization is affine in the level with slope s)
    slope = setup.scales.unsqueeze(-1) * gap * mask
    reg_scale = opts.lam / max(1, int(movable.sum()))
    granularity = setup.scheme.granularity
    for step in range(opts.iters):  # gradients by hand: autograd's overhead dominated on CPU
        # soft levels h(V) and the soft weight
        sig = torch.sigmoid(v)
        h_raw = sig * (ZETA - GAMMA) + GAMMA
        h = h_raw.clamp(0.0, 1.0)
        w_soft = setup.dequant(setup.lower + h * gap)
        # reconstruction gradient wrt W~: 2 (W~ - W) H / energy (one bfloat16 product)
        delta = (w_soft - setup.weight).to(torch.bfloat16)
        grad_w = to_groups((delta @ gram_lp).float(), granularity).mul_(2.0 / energy)
        grad_h = grad_w.mul_(slope)
        # rounding regularizer lam * mean(1 - |2h - 1|^beta), after the warm-up, beta 20 -> 2
        if step >= warm and reg_scale > 0:
            progress = (step - warm) / max(1, opts.iters - warm)
            beta = BETA_END + (BETA_START - BETA_END) * (1 - progress)
            centred = 2 * h - 1
            grad_h.addcmul_(centred.abs().pow(beta - 1) * centred.sign(), mask, value=-2 * beta * reg_scale)
        # chain through the rectified sigmoid (zero gradient where it is clipped)
        inside = (h_raw > 0) & (h_raw < 1)
        v.grad = grad_h.mul_(sig * (1 - sig) * (ZETA - GAMMA)).mul_(inside)
        optimizer.step()
    # hard rounding: the upper neighbour where h >= 1/2
    with torch.no_grad():
        levels = torch.where(rectified_sigmoid(v) >= 0.5, setup.upper, setup.lower)
        qtensor, w_hat = build_qtensor(setup, levels, tuple(weight.shape), name)
        err = relative_error(w_hat - setup.weight, gram, energy)
        err_rtn = relative_error(setup.dequant(setup.rtn) - setup.weight, gram, energy)
    if err > err_rtn:  # safety net: never worse than RTN on the calibration data
        log.warning("%s: learned rounding (%.4g) worse than RTN (%.4g); keeping RTN", name, err, err_rtn)
        return build_qtensor(setup, setup.rtn, tuple(weight.shape), name)[0]
    log.debug("%s: relative error RTN %.4g -> AdaRound %.4g", name, err_rtn, err)
    return qtensor


@register
class AdaRound(Algorithm):
    name = "adaround"
    kind = "weights"
    needs_calibration = True
    paper = "Nagel et al. 2020 (AdaRound); FP grids as in Chen et al. 2024 (arXiv 2408.06995)"

    def check(self, recipe: Recipe) -> None:
        AdaRoundOptions.from_recipe(recipe)  # refuses bad options before any work
        check_weight_schemes(recipe, "adaround")

    def quantize_block(self, ctx: BlockContext) -> dict[str, QTensor]:
        opts = AdaRoundOptions.from_recipe(ctx.recipe)

        def solve(name: str, linear: nn.Linear, scheme: QScheme, stats: LayerStats):
            return adaround_layer(name, linear.weight.detach(), scheme, stats, opts), None

        return sequential_quantize(ctx, solve, opts.max_tokens, self.layer_seconds)
