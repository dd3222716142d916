"""ABQ-LLM: block-wise calibration with distribution correction, and bit balance for 2-bit weights.

Paper: Zeng, Liu, Xie, Liu, Wang, Wei, Yang, Chen, Mei, "ABQ-LLM: Arbitrary-Bit Quantized Inference
Acceleration for Large Language Models" (AAAI 2025, arXiv 2408.08554); public code
bytedance/ABQ-LLM (``algorithm/quantize/abq_llm.py``, ``quantize/utils.py``,
``quantize/quantizer.py``). Only the paper's abstract and a summary of its motivation (its Figure
1: quantizing ``down_proj`` costs the most; Figure 2: quantization flattens the attention on the
first token) could be read offline here; the details below were checked against the public code
(read, not copied), which is the reference for every choice this docstring does not mark as a
departure.

What ABQ-LLM does (OmniQuant-style block-wise calibration, block after block, every block on the
inputs the already quantized blocks produce):

- learnable parameters per block: **LWC** (learnable weight clipping: per weight group, the range
  ends are ``sigmoid(u) * max`` and ``sigmoid(l) * min``, logits initialised to 4), **LET**
  (learnable equivalent transformation: per-channel smoothing scales between a norm and the linears
  it feeds, v_proj -> o_proj and up_proj -> down_proj, initialised SmoothQuant-style with
  ``alpha = 0.5`` and folded into the float block at the end) and, for ``down_proj`` of the first
  three and last four blocks, a rank-1 **compensation** ``W + a b^T`` (``a = 0``, ``b = 1`` at the
  start) that is quantized with the weight;
- **distribution correction**, the loss of each block's calibration (the quantized block ``Q``
  sees the quantized-model input ``x_q``; ``F`` is the float block; ``x_f`` is the float model's
  own input of this block)::

      L =  MSE(Q(x_q), F(x_f)) + MSE(Q(x_q), F(x_q))                  (block output)
         - log|cos(Q(x_q), F(x_f))| - log|cos(Q(x_q), F(x_q))|        (DLC: double cosine)
         + KL(A_F(x_f) || A_Q(x_q)) + KL(A_Q(x_q) || A_F(x_f))        (AKL: attention maps)

  cosines are per token over the hidden dimension, averaged over tokens; ``A`` are the softmax
  attention maps. Our reading of the two targets: ``F(x_f)`` pulls the block back towards the
  float model's trajectory (correcting the error accumulated by earlier blocks), ``F(x_q)`` is
  this block's own error on the inputs it will really get; the attention KL keeps the attention
  pattern (notably the mass on the first token) that quantization otherwise flattens;
- **bit balance** (paper: W2*): 2-bit asymmetric grids have the lopsided levels
  ``{-2, -1, 0, 1}``; ABQ-LLM widens ``qmax`` by one so the grid is the symmetric
  ``{-2, -1, 0, 1, 2}`` (``s = (max - min) / 4``), stored and computed in 3 bits. In anybit that is
  the number format ``int2bb`` (:mod:`anybit.formats.balance`; ``int1bb`` for 1 bit): use
  ``--weights int2bb:g32:asym`` (ABQ-LLM's asymmetric form) or ``int2bb:g32`` (symmetric,
  ``s = absmax / 2``). Bits per weight count 3 bits per code. This algorithm serves any integer,
  FP or NF grid; bit balance is a choice of grid, not a separate step.

What is implemented here (``--algo abq``, options ``--opt abq.<key>=<value>``):

- LWC, LET (norm -> q/k/v, norm -> gate/up, v -> o with the grouped-query channel map, up ->
  down; any adapter's ``smooth_groups``), the down_proj compensation (``abq.compensation``), all
  trained jointly per block with Adam on the loss above, activation quantization of the layer plans
  in the loop (dynamic ``int8:token`` etc.; straight-through gradient);
- the learned smoothing scales are folded into the float block (norm weights, producer rows, as
  :func:`anybit.algorithms.smooth.fold_scales` does), so the float model computes the same
  function; each weight is then clipped per group to its learned range (and the compensation
  added) and quantized by the core (:func:`anybit.quantizer.quantize`): the ``QTensor`` is the
  core's for the scheme, exact by construction. During training the weight quantizer is a
  differentiable copy of the core's arithmetic (range -> scale rounded to the scheme's scale
  format -> zero point -> nearest level, straight-through rounding), so training sees exactly the
  weights that are exported (for ``clip=minmax`` and ``clip=<ratio>`` schemes; with ``clip=mse``
  the core's search runs on top of the learned clipping at export);
- AKL: attention probabilities are recomputed from forward hooks on ``q_proj``/``k_proj`` (their
  outputs; per-head ``q_norm``/``k_norm`` and the rotary embedding of the block's call kwargs
  ``position_embeddings`` applied as the model does, grouped-query heads repeated, the call's
  attention mask or a causal (+ sliding window) mask), for ``abq.attn_rows`` query rows evenly
  spread over the sequence (default 64) and all keys and heads; the float maps come from the
  float block on the float-model inputs. Architectures without rotary ``position_embeddings`` or
  separate q/k projections (GPT-2, OPT) train without the AKL term (logged);
- the float model's inputs ``x_f`` are carried from block to block by this algorithm (a float
  copy of the training samples' hidden states), as ABQ-LLM does;
- a safety net: if the learned block's loss on the training samples (with the exported weights)
  is not below RTN's, the block is quantized with RTN and nothing is folded (logged).

Departures (CPU budget: two cores; the 30-block default model must quantize in minutes, not the
paper's GPU hours):

- training budget: ``abq.epochs`` (default 2) passes over ``abq.samples`` (default 16)
  calibration sequences spread evenly over the calibration set, one sequence per step (32 Adam
  steps per block); ABQ-LLM: 20 epochs over 128 sequences of 2048 tokens. The learning rates are
  larger to match (``abq.lwc_lr`` 0.3 on the clipping logits, ``abq.let_lr`` 0.03 on log-scales,
  ``abq.comp_lr`` 1e-3; ABQ-LLM: 1e-2, 5e-3 on the scales themselves, 1e-2); they were chosen on
  the first six blocks of the default model (W2*A8 and W4A8: 0.05 -> 0.3 on the clipping logits
  cut the hidden-state error by a third; 0.05 on the log-scales and 1e-2 on the compensation
  were not better), and decay to
  zero on a cosine schedule over the block's steps (ABQ-LLM keeps them constant; with few, large
  steps the decay is what makes the last steps settle instead of oscillate);
- LET learns log-scales (always positive; ABQ-LLM clamps the raw scales away from zero); the
  q/k smoothing of OmniQuant/ABQ-LLM (``qkt_smooth_scale``) is left out: it only helps when the
  ``Q K^T`` product itself is quantized, which anybit does not do, and with rotary embeddings it
  does not keep the function exact; OPT-style channel shifts are left out (ABQ-LLM disables them
  for Llama too). For weight-only plans the LET scales start at 1 (identity) instead of the
  SmoothQuant init, which only helps activation quantization;
- the attention KL is the symmetric KL of the probabilities, summed over keys and averaged over
  the sampled query rows and heads (ABQ-LLM applies ``log_softmax`` again to probabilities with a
  ``mean`` reduction over all elements, which shrinks the term by the sequence length);
- static activation schemes are approximated in the loop by the range of each training batch
  (the pipeline calibrates the real static range afterwards);
- format families (BitMoD) and dual-grained scales (DGQ) are refused (``check``): the per-group
  type choice and the integer group scales tied to INT8 code bounds are discrete.

Note for the per-layer error table: with LET the float linears change (folded scales), so the
reference weights the pipeline snapshots before ``quantize_block`` no longer match the layers'
inputs; the folded float weights are left in ``ctx.float_reference``, which the pipeline uses as
the reference instead. The model-level metrics (perplexity, KL) are unaffected.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from anybit.algorithms.base import Algorithm, BlockContext, register
from anybit.algorithms.layerwise import (
    bool_option,
    check_known_options,
    check_weight_schemes,
    number_option,
)
from anybit.algorithms.smooth import SCALE_RANGE, fold_scales, smoothquant_scales, weight_col_max
from anybit.errors import AlgorithmError
from anybit.formats import FormatFamily
from anybit.grouping import from_groups, num_groups, to_groups
from anybit.qtensor import QTensor
from anybit.quantizer import _final_scales, _from_unit, _to_unit, _zero_of, fake_quantize, quantize
from anybit.recipe import Recipe
from anybit.scales import make_context, scale_from_range
from anybit.scheme import QScheme

if TYPE_CHECKING:  # runtime import would be circular (models.pipeline imports algorithms)
    from anybit.models.adapters import SmoothGroup

log = logging.getLogger(__name__)

LWC_INIT = 4.0  # clipping logits at the start: sigmoid(4) = 0.982 of the range (ABQ-LLM, OmniQuant)
COMPENSATION_FIRST, COMPENSATION_LAST = 3, 4  # ABQ-LLM: down_proj of blocks i <= 2 and i >= L - 4
COMPENSATED = ("down_proj", "fc2")  # the MLP output projections that get the compensation
SAFETY_SAMPLES = 8  # training samples on which the result is compared with RTN
MASKED = -1e9  # score of masked attention positions
_LOG_RANGE = (math.log(SCALE_RANGE[0]), math.log(SCALE_RANGE[1]))


# ===== options ====================================================================================
@dataclass(frozen=True)
class ABQOptions:
    epochs: int = 2
    samples: int = 16
    lwc_lr: float = 0.3
    let_lr: float = 3e-2
    comp_lr: float = 1e-3
    alpha: float = 0.5
    dlc: float = 1.0  # weight of the double-cosine term
    akl: float = 1.0  # weight of the attention KL term
    attn_rows: int = 64
    let: bool = True
    lwc: bool = True
    compensation: bool = True

    @staticmethod
    def from_recipe(recipe: Recipe) -> ABQOptions:
        d = ABQOptions()
        keys = {
            "epochs", "samples", "lwc_lr", "let_lr", "comp_lr", "alpha", "dlc", "akl",
            "attn_rows", "let", "lwc", "compensation",
        }  # fmt: skip
        check_known_options(recipe, "abq.", {f"abq.{k}" for k in keys})
        alpha = number_option(recipe, "abq.alpha", d.alpha, low=-1e-12)
        if alpha > 1:
            raise AlgorithmError(f"option abq.alpha={alpha} must be in [0, 1] (default {d.alpha})")
        return ABQOptions(
            epochs=number_option(recipe, "abq.epochs", d.epochs, low=-1e-12, integer=True),
            samples=number_option(recipe, "abq.samples", d.samples, integer=True),
            lwc_lr=number_option(recipe, "abq.lwc_lr", d.lwc_lr, low=-1e-12),
            let_lr=number_option(recipe, "abq.let_lr", d.let_lr, low=-1e-12),
            comp_lr=number_option(recipe, "abq.comp_lr", d.comp_lr, low=-1e-12),
            alpha=alpha,
            dlc=number_option(recipe, "abq.dlc", d.dlc, low=-1e-12),
            akl=number_option(recipe, "abq.akl", d.akl, low=-1e-12),
            attn_rows=number_option(recipe, "abq.attn_rows", d.attn_rows, integer=True),
            let=bool_option(recipe, "abq.let", d.let),
            lwc=bool_option(recipe, "abq.lwc", d.lwc),
            compensation=bool_option(recipe, "abq.compensation", d.compensation),
        )


def refusal(scheme: QScheme) -> str | None:
    """Why ABQ cannot serve ``scheme`` (None if it can)."""
    if isinstance(scheme.number_format, FormatFamily):
        return (
            f"abq cannot serve {scheme}: the format family {scheme.number_format.name} picks one type per "
            "group, a discrete choice no gradient flows through; use adaround or gptq for it"
        )
    if scheme.scale_format == "dual":
        return (
            f"abq cannot serve {scheme}: dual-grained (DGQ) scales are integers tied to per-group INT8 "
            "code bounds, not a range that clipping can learn; use gptq or rtn for it"
        )
    return None


# ===== the weight quantizer: the core's arithmetic, differentiable ================================
def _clip_bounds(
    g: torch.Tensor, up: torch.Tensor | None, low: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group ``(hi, lo)``: the min-max range (covering 0, as the core's) times the learned factors."""
    hi, lo = g.amax(-1).clamp(min=0), g.amin(-1).clamp(max=0)
    if up is not None and low is not None:
        hi, lo = hi * torch.sigmoid(up), lo * torch.sigmoid(low)
    return hi, lo


def clip_weight(w: torch.Tensor, scheme: QScheme, up: torch.Tensor | None, low: torch.Tensor | None):
    """``w`` clamped per group to its learned range: what the core quantizes at export."""
    g = to_groups(w, scheme.granularity)
    hi, lo = _clip_bounds(g, up, low)
    g = torch.minimum(torch.maximum(g, lo.unsqueeze(-1)), hi.unsqueeze(-1))
    return from_groups(g, scheme.granularity, tuple(w.shape))  # type: ignore[arg-type]


def lwc_fake_quant(
    w: torch.Tensor, scheme: QScheme, up: torch.Tensor | None, low: torch.Tensor | None
) -> torch.Tensor:
    """Differentiable ``fake_quantize(clip_weight(w))`` (straight-through rounding).

    The core's steps on the clipped weight: min-max range (the clipped range itself; a ratio clip
    scales it), scale from range rounded to the stored scale format, zero point from the rounded
    scale, nearest level. Gradients reach ``w`` and the clipping logits through the clamp, the
    range and the scale.
    """
    fmt = scheme.number_format
    g = to_groups(w, scheme.granularity)
    hi, lo = _clip_bounds(g, up, low)
    g = torch.minimum(torch.maximum(g, lo.unsqueeze(-1)), hi.unsqueeze(-1))
    if scheme.clip == "ratio":
        assert scheme.clip_value is not None
        hi, lo = hi * scheme.clip_value, lo * scheme.clip_value
    s_raw = scale_from_range(hi, lo, scheme, fmt)  # type: ignore[arg-type]
    context = make_context(s_raw.detach(), scheme, g.detach())
    _, stored = _final_scales(s_raw.detach(), scheme, context)
    s = s_raw + (stored - s_raw).detach()
    z = _zero_of(lo, s, scheme, fmt)  # type: ignore[arg-type]
    y = _to_unit(g, s, z, scheme).clamp(fmt.min_level, fmt.max_level)  # type: ignore[union-attr]
    q = y + (fmt.round(y.detach(), check=False) - y).detach()  # type: ignore[union-attr]
    return from_groups(_from_unit(q, s, z, scheme), scheme.granularity, tuple(w.shape))  # type: ignore[arg-type]


def _ste_act(x: torch.Tensor, scheme: QScheme) -> torch.Tensor:
    """Activation fake quantization with a straight-through gradient."""
    xq = fake_quantize(x.detach(), scheme, name="abq activations")
    return x + (xq - x).detach()


# ===== the training view of a linear ==============================================================
Vector = Callable[[], torch.Tensor]


class _TrainLinear(nn.Module):
    """A linear of the block while it is calibrated: LET transforms, LWC fake quantization, acts.

    ``mode``: ``train`` (differentiable, learned parameters), ``export`` (exactly the weights that
    will be exported: the core's ``fake_quantize`` of the clipped weight), ``rtn`` (the core's RTN
    of the untransformed weight), ``float`` (transforms only, no quantization; for tests).
    """

    def __init__(self, linear: nn.Linear, scheme: QScheme | None, acts: QScheme | None, lwc: bool) -> None:
        super().__init__()
        self.weight0 = linear.weight.detach().float()
        self.bias0 = None if linear.bias is None else linear.bias.detach().float()
        self.scheme, self.acts = scheme, acts
        self.in_div: Vector | None = None  # norm-group smoothing: the consumer's input / s
        self.cols: list[Vector] = []  # input columns * s
        self.rows: list[Vector] = []  # output rows (and bias) / s
        self.left: nn.Parameter | None = None  # compensation W + left @ right
        self.right: nn.Parameter | None = None
        self.up: nn.Parameter | None = None
        self.low: nn.Parameter | None = None
        if scheme is not None and lwc:
            shape = num_groups(tuple(self.weight0.shape), scheme.granularity)  # type: ignore[arg-type]
            self.up = nn.Parameter(torch.full(shape, LWC_INIT))
            self.low = nn.Parameter(torch.full(shape, LWC_INIT))
        self.mode = "train"
        self._cache: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def add_compensation(self) -> None:
        out_f, in_f = self.weight0.shape
        self.left = nn.Parameter(torch.zeros(out_f, 1))
        self.right = nn.Parameter(torch.ones(1, in_f))

    def transformed(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight and bias after the smoothing transforms (float, before compensation)."""
        w, b = self.weight0, self.bias0
        for col in self.cols:
            w = w * col().unsqueeze(0)
        for row in self.rows:
            r = row()
            w = w / r.unsqueeze(1)
            b = None if b is None else b / r
        return w, b

    def target_weight(self) -> torch.Tensor:
        """The weight the quantizer sees: transformed plus the compensation."""
        w, _ = self.transformed()
        if self.left is not None and self.right is not None:
            w = w + self.left @ self.right
        return w

    def set_mode(self, mode: str) -> None:
        self.mode, self._cache = mode, None

    def _weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.mode == "rtn":
            w, b = self.weight0, self.bias0
            if self.scheme is not None:
                w = fake_quantize(w, self.scheme, name="abq rtn")
            return w, b
        _, b = self.transformed()
        w = self.target_weight()
        if self.scheme is not None and self.mode == "train":
            w = lwc_fake_quant(w, self.scheme, self.up, self.low)
        elif self.scheme is not None and self.mode == "export":
            w = fake_quantize(clip_weight(w, self.scheme, self.up, self.low), self.scheme, name="abq")
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "train":
            w, b = self._weight_and_bias()
        else:  # fixed weights: computed once per mode
            if self._cache is None:
                with torch.no_grad():
                    self._cache = self._weight_and_bias()
            w, b = self._cache
        if self.mode != "rtn" and self.in_div is not None:
            x = x / self.in_div()
        if self.acts is not None and self.mode != "float":
            x = _ste_act(x, self.acts)
        return F.linear(x, w.to(x.dtype), None if b is None else b.to(x.dtype))


def _set_submodule(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


# ===== attention maps (AKL) =======================================================================
class _AttentionProbe:
    """Log attention probabilities of a block's self-attention, recomputed from q/k projections.

    Hooks: a forward pre-hook on the attention module records its ``position_embeddings`` and
    ``attention_mask`` kwargs; forward hooks on ``q_proj``/``k_proj`` (whatever modules sit there
    when the probe is entered) record their outputs. ``log_probs()`` then applies the per-head
    norms, the rotary embedding, the scaling and the mask for ``rows`` query positions.
    """

    def __init__(self, block: nn.Module, rows: int) -> None:
        self.attn = getattr(block, "self_attn", None)
        attn = self.attn
        module = sys.modules.get(type(attn).__module__) if attn is not None else None
        self.rotary = getattr(module, "apply_rotary_pos_emb", None)
        self.supported = (
            attn is not None
            and self.rotary is not None
            and all(hasattr(attn, a) for a in ("q_proj", "k_proj", "scaling", "head_dim"))
        )
        self.rows = rows
        self.q: torch.Tensor | None = None
        self.k: torch.Tensor | None = None
        self.kwargs: dict[str, Any] = {}
        self.handles: list[Any] = []

    @contextlib.contextmanager
    def capture(self) -> Iterator[_AttentionProbe]:
        if not self.supported:
            yield self
            return
        attn = self.attn
        assert attn is not None

        def pre(_m: nn.Module, _args: tuple, kwargs: dict[str, Any]) -> None:
            self.kwargs = kwargs

        def hook_q(_m: nn.Module, _a: tuple, out: torch.Tensor) -> None:
            self.q = out

        def hook_k(_m: nn.Module, _a: tuple, out: torch.Tensor) -> None:
            self.k = out

        self.handles = [
            attn.register_forward_pre_hook(pre, with_kwargs=True),
            attn.q_proj.register_forward_hook(hook_q),
            attn.k_proj.register_forward_hook(hook_k),
        ]
        try:
            yield self
        finally:
            for h in self.handles:
                h.remove()
            self.handles = []

    def log_probs(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(log p [B, H, R, T], allowed [B or 1, 1 or H, R, T])`` of the last captured forward."""
        attn, q, k = self.attn, self.q, self.k
        self.q = self.k = None
        pos = self.kwargs.get("position_embeddings")
        if attn is None or q is None or k is None or pos is None or self.rotary is None:
            return None
        b, t, _ = q.shape
        d = int(attn.head_dim)
        q, k = q.view(b, t, -1, d), k.view(b, t, -1, d)
        if getattr(attn, "q_norm", None) is not None and getattr(attn, "k_norm", None) is not None:
            q, k = attn.q_norm(q), attn.k_norm(k)
        rows = torch.linspace(0, t - 1, min(self.rows, t)).round().long().unique()
        q, k = q[:, rows].transpose(1, 2), k.transpose(1, 2)
        cos, sin = pos
        q, _ = self.rotary(q, q, cos[:, rows], sin[:, rows])  # rotary of the sampled query rows only
        _, k = self.rotary(k, k, cos, sin)
        heads, kv_heads = q.shape[1], k.shape[1]
        if heads != kv_heads:
            k = k.repeat_interleave(heads // kv_heads, dim=1)
        scores = (q @ k.transpose(-1, -2)).float() * float(attn.scaling)
        softcap = getattr(attn, "attn_logit_softcapping", None)
        if softcap:
            scores = torch.tanh(scores / softcap) * softcap
        allowed = self._allowed(rows, t)
        scores = scores.masked_fill(~allowed, MASKED)  # finite: -inf would give NaN gradients in the KL
        return torch.log_softmax(scores, dim=-1), allowed

    def _allowed(self, rows: torch.Tensor, t: int) -> torch.Tensor:
        mask = self.kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:
            m = mask[:, :, rows, :t]
            if m.dtype == torch.bool:
                return m
            return m > torch.finfo(m.dtype).min / 2
        keys = torch.arange(t)
        allowed = keys.unsqueeze(0) <= rows.unsqueeze(1)
        window = getattr(self.attn, "sliding_window", None)
        if window:
            allowed &= keys.unsqueeze(0) > rows.unsqueeze(1) - int(window)
        return allowed.view(1, 1, len(rows), t)


def symmetric_kl(logp: torch.Tensor, logq: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``KL(p||q) + KL(q||p) = sum (p - q)(log p - log q)`` over keys, averaged over rows and heads."""
    terms = (logp.exp() - logq.exp()) * (logp - logq)
    return torch.where(allowed, terms, torch.zeros_like(terms)).sum(-1).mean()


def neg_log_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``-log |mean_token cos(a_t, b_t)|`` (cosine over the hidden dimension)."""
    cos = F.cosine_similarity(a.float(), b.float(), dim=-1).mean().abs()
    return -torch.log(cos.clamp(min=1e-8))


@dataclass
class _Targets:
    """What the loss of one training sample compares against (computed once, float block)."""

    x_q: torch.Tensor  # quantized-model input of the block
    y_f: torch.Tensor  # F(x_f): float block on the float model's input
    y_fq: torch.Tensor  # F(x_q): float block on the quantized model's input
    attn_f: tuple[torch.Tensor, torch.Tensor] | None  # log attention maps of F(x_f), mask


# ===== the algorithm ==============================================================================
@register
class ABQ(Algorithm):
    name = "abq"
    kind = "weights"
    needs_calibration = True
    paper = "Zeng et al. 2025, ABQ-LLM (arXiv 2408.08554): distribution correction, bit balance"

    def __init__(self) -> None:
        super().__init__()
        # the float model's hidden states of the training samples, carried to the next block
        self._chain: tuple[int, dict[int, torch.Tensor]] | None = None

    def check(self, recipe: Recipe) -> None:
        ABQOptions.from_recipe(recipe)  # refuses bad options before any work
        check_weight_schemes(recipe, "abq", refusal)

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _sample_indices(n: int, k: int) -> list[int]:
        if n == 0:
            return []
        return torch.linspace(0, n - 1, min(k, n)).round().long().unique().tolist()

    def _float_inputs(self, ctx: BlockContext, idx: list[int]) -> dict[int, torch.Tensor]:
        chain = self._chain
        if ctx.index > 0 and chain is not None and chain[0] == ctx.index and sorted(chain[1]) == idx:
            return chain[1]
        if ctx.index > 0:
            log.info("%s: no float-model inputs carried over; using the quantized inputs", ctx.prefix)
        return {i: ctx.inputs[i] for i in idx}

    @torch.no_grad()
    def _targets(
        self, ctx: BlockContext, idx: list[int], probe: _AttentionProbe, group_consumers: dict[int, str]
    ) -> tuple[dict[int, _Targets], dict[int, torch.Tensor]]:
        """Float-block outputs (and attention maps) for the training samples; per-group input absmax."""
        x_f = self._float_inputs(ctx, idx)
        absmax: dict[int, torch.Tensor] = {}
        handles = []
        for gi, name in group_consumers.items():

            def hook(_m: nn.Module, args: tuple, gi: int = gi) -> None:
                a = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
                absmax[gi] = a if gi not in absmax else torch.maximum(absmax[gi], a)

            handles.append(ctx.block.get_submodule(name).register_forward_pre_hook(hook))
        targets: dict[int, _Targets] = {}
        try:
            for i in idx:
                x_q = ctx.inputs[i]
                with probe.capture():
                    y_f = ctx.run_block(ctx.block, x_f[i])
                    attn_f = probe.log_probs()
                same = x_f[i] is x_q or torch.equal(x_f[i], x_q)
                y_fq = y_f if same else ctx.run_block(ctx.block, x_q)
                targets[i] = _Targets(x_q, y_f.detach(), y_fq.detach(), attn_f)
        finally:
            for h in handles:
                h.remove()
        return targets, absmax

    @staticmethod
    def _loss(
        y: torch.Tensor, tg: _Targets, probe: _AttentionProbe, opts: ABQOptions
    ) -> tuple[torch.Tensor, bool]:
        loss = F.mse_loss(y.float(), tg.y_f.float()) + F.mse_loss(y.float(), tg.y_fq.float())
        if opts.dlc > 0:
            loss = loss + opts.dlc * (neg_log_cos(y, tg.y_f) + neg_log_cos(y, tg.y_fq))
        used_akl = False
        attn_q = probe.log_probs()
        if opts.akl > 0 and tg.attn_f is not None and attn_q is not None:
            loss = loss + opts.akl * symmetric_kl(tg.attn_f[0], attn_q[0], tg.attn_f[1])
            used_akl = True
        return loss, used_akl

    # -- the block ---------------------------------------------------------------------------------
    def quantize_block(self, ctx: BlockContext) -> dict[str, QTensor]:
        opts = ABQOptions.from_recipe(ctx.recipe)
        if not ctx.linears:
            return {}
        if not ctx.inputs:
            raise AlgorithmError(f"{ctx.prefix}: abq needs calibration inputs, none given")
        idx = self._sample_indices(len(ctx.inputs), opts.samples)
        groups = [g for g in ctx.smooth_groups if opts.let and any(n in ctx.linears for n in g.linear_names)]
        probe = _AttentionProbe(ctx.block, opts.attn_rows)
        targets, absmax = self._targets(
            ctx, idx, probe, {gi: g.linear_names[0] for gi, g in enumerate(groups)}
        )
        # the float model's next input (this block in float on the float inputs); none after the last
        layers = _num_layers(ctx.config)
        last = layers > 0 and ctx.index >= layers - 1
        self._chain = None if last else (ctx.index + 1, {i: t.y_f for i, t in targets.items()})

        log_s = initial_log_scales(ctx, groups, absmax, opts.alpha)
        views, originals = build_views(ctx, groups, log_s, opts)

        with swapped(ctx.block, views, originals):
            learned_loss, rtn_loss = self._train(ctx, opts, idx, targets, probe, views, log_s)

        out: dict[str, QTensor] = {}
        with torch.no_grad():
            if learned_loss >= rtn_loss:
                log.warning(
                    "%s: abq loss %.4g is not below RTN's %.4g; keeping RTN",
                    ctx.prefix,
                    learned_loss,
                    rtn_loss,
                )
                for n, lin in ctx.linears.items():
                    scheme = ctx.plans[n].weights
                    assert scheme is not None
                    out[n] = quantize(lin.weight.detach(), scheme, name=ctx.full_name(n))
                return out
            log.info("%s: abq loss %.4g (RTN %.4g)", ctx.prefix, learned_loss, rtn_loss)
            for gi, g in enumerate(groups):
                fold_scales(g, log_s[gi].detach().clamp(*_LOG_RANGE).exp())
            reference = {}
            for n, lin in ctx.linears.items():
                view, scheme = views[n], ctx.plans[n].weights
                assert scheme is not None
                w = lin.weight.detach().float()
                reference[n] = (w.clone(), None if lin.bias is None else lin.bias.detach().float().clone())
                if view.left is not None and view.right is not None:
                    w = w + view.left.detach() @ view.right.detach()
                clipped = clip_weight(w, scheme, view.up, view.low) if opts.lwc else w
                out[n] = quantize(clipped, scheme, name=ctx.full_name(n))
            ctx.float_reference = reference  # folded float layers: the pipeline's error reference
        return out

    def _train(
        self,
        ctx: BlockContext,
        opts: ABQOptions,
        idx: list[int],
        targets: dict[int, _Targets],
        probe: _AttentionProbe,
        views: dict[str, _TrainLinear],
        log_s: list[nn.Parameter],
    ) -> tuple[float, float]:
        """Adam on the block's parameters; returns the final losses (exported weights, RTN)."""
        lwc = [p for v in views.values() for p in (v.up, v.low) if p is not None]
        comp = [p for v in views.values() for p in (v.left, v.right) if p is not None]
        groups = [
            {"params": params, "lr": lr}
            for params, lr in ((log_s, opts.let_lr), (lwc, opts.lwc_lr), (comp, opts.comp_lr))
            if params and lr > 0
        ]
        akl_used = False
        with torch.enable_grad():
            if groups and opts.epochs > 0:
                optimizer = torch.optim.Adam(groups)
                steps = opts.epochs * len(idx)
                schedule = torch.optim.lr_scheduler.LambdaLR(
                    optimizer,
                    lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)),  # cosine to 0
                )
                for v in views.values():
                    v.set_mode("train")
                for _epoch in range(opts.epochs):
                    for i in idx:
                        with probe.capture():
                            y = ctx.run_block(ctx.block, targets[i].x_q)
                            loss, used = self._loss(y, targets[i], probe, opts)
                        akl_used |= used
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        schedule.step()
        if opts.akl > 0 and not akl_used and probe.supported is False:
            log.info("%s: no rotary q/k attention found; abq trains without the attention KL", ctx.prefix)
        check = idx[:: max(1, math.ceil(len(idx) / SAFETY_SAMPLES))]
        with torch.no_grad():
            losses = []
            for mode in ("export", "rtn"):
                for v in views.values():
                    v.set_mode(mode)
                total = 0.0
                for i in check:
                    with probe.capture():
                        y = ctx.run_block(ctx.block, targets[i].x_q)
                        total += float(self._loss(y, targets[i], probe, opts)[0])
                losses.append(total / max(1, len(check)))
        return losses[0], losses[1]


def _num_layers(config: Any) -> int:
    return int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 0)


def _channels(group: SmoothGroup) -> int:
    """Length of a group's scale vector: the producer's output channels."""
    if group.kind == "linear":
        return int(group.prev.weight.shape[0])
    return int(group.linears[0].in_features)


def initial_log_scales(
    ctx: BlockContext, groups: list[SmoothGroup], absmax: dict[int, torch.Tensor], alpha: float
) -> list[nn.Parameter]:
    """LET's start: SmoothQuant scales where a consumer quantizes its input, else 1 (log-scales)."""
    log_s: list[nn.Parameter] = []
    for gi, g in enumerate(groups):
        with_acts = any(n in ctx.plans and ctx.plans[n].acts is not None for n in g.linear_names)
        if with_acts and gi in absmax:
            x_max = absmax[gi]
            if g.channel_map is not None:  # consumer columns -> producer channels
                x_max = torch.zeros(_channels(g)).scatter_reduce(0, g.channel_map, x_max, reduce="amax")
            s0 = smoothquant_scales(x_max, weight_col_max(g), alpha)
        else:
            s0 = torch.ones(_channels(g))
        log_s.append(nn.Parameter(s0.float().log()))
    return log_s


def build_views(
    ctx: BlockContext, groups: list[SmoothGroup], log_s: list[torch.Tensor], opts: ABQOptions
) -> tuple[dict[str, _TrainLinear], dict[str, nn.Module]]:
    """The training view of every linear involved (quantized ones, smoothing producers/consumers).

    Norm groups divide the consumers' inputs by ``s`` and multiply their input columns by ``s``;
    linear groups divide the producer's output rows (and bias) by ``s`` and multiply the
    consumers' columns (through the grouped-query channel map). That is what
    :func:`anybit.algorithms.smooth.fold_scales` does to the float block, so the views compute
    the folded block's function. Returns ``(views, original modules)``; nothing is swapped yet.
    """

    def scale_of(gi: int, cmap: torch.Tensor | None = None) -> Vector:
        def get() -> torch.Tensor:
            s = log_s[gi].clamp(*_LOG_RANGE).exp()
            return s if cmap is None else s[cmap]

        return get

    names = list(ctx.linears)
    for g in groups:
        names += [*g.linear_names, *([g.prev_name] if g.kind == "linear" else [])]
    names = list(dict.fromkeys(names))
    originals = {n: ctx.block.get_submodule(n) for n in names}
    views: dict[str, _TrainLinear] = {}
    for n in names:
        scheme = ctx.plans[n].weights if n in ctx.linears else None
        acts = ctx.plans[n].acts if n in ctx.plans else None
        views[n] = _TrainLinear(originals[n], scheme, acts, opts.lwc)  # type: ignore[arg-type]
    for gi, g in enumerate(groups):
        if g.kind == "norm":
            for n in g.linear_names:
                views[n].in_div = scale_of(gi)
                views[n].cols.append(scale_of(gi))
        else:
            views[g.prev_name].rows.append(scale_of(gi))
            for n in g.linear_names:
                views[n].cols.append(scale_of(gi, g.channel_map))
    layers = _num_layers(ctx.config)
    compensate = opts.compensation and (
        ctx.index < COMPENSATION_FIRST or (layers > 0 and ctx.index >= layers - COMPENSATION_LAST)
    )
    if compensate:
        for n in ctx.linears:
            if n.rsplit(".", 1)[-1] in COMPENSATED:
                views[n].add_compensation()
    return views, originals


@contextlib.contextmanager
def swapped(block: nn.Module, views: dict[str, _TrainLinear], originals: dict[str, nn.Module]):
    """The block with its linears replaced by their views and its own parameters frozen."""
    requires = {p: p.requires_grad for p in block.parameters()}
    for p in requires:
        p.requires_grad_(False)
    for n, v in views.items():
        _set_submodule(block, n, v)
    try:
        yield block
    finally:
        for n, m in originals.items():
            _set_submodule(block, n, m)
        for p, flag in requires.items():
            p.requires_grad_(flag)
