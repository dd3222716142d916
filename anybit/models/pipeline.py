"""The sequential pipeline: quantize a model block by block with bounded memory.

For block i (the GPTQ/OmniQuant ordering, so every block is calibrated on the inputs that the
*quantized* blocks before it really produce):

1. the calibration inputs of block i are in hand (block 0: the embeddings of the calibration
   samples, recorded by :func:`anybit.models.block_inputs` together with the extra arguments each
   block is called with: masks, rotary embeddings);
2. transforms (smoothing, rotation ...) change the float block;
3. the weight quantizer (RTN, GPTQ ...) returns a ``QTensor`` per planned linear; each linear is
   replaced by a ``QLinear`` with its activation quantizer (static ones observe the calibration
   inputs, then freeze);
4. the quantized block runs on the inputs; hooks measure each layer's relative output error
   ``||y_q - y||^2 / ||y||^2`` against the same layer in float on the same input (on the first
   :data:`METER_SAMPLES` samples); the outputs are the inputs of block i+1, and block i's inputs
   are freed.

``lm_head`` and the embeddings are quantized on request (RTN with the plan of their name; a tied
``lm_head`` gets its own quantized copy). Peak memory (max RSS) is reported.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from anybit.algorithms import BlockContext, resolve
from anybit.errors import SchemeError
from anybit.models.adapters import block_inputs, get_adapter, run_block, set_module
from anybit.nn import ActQuantizer, QEmbedding, QLinear
from anybit.quantizer import quantize
from anybit.recipe import LayerPlan, Recipe

ERROR_SAMPLES = 4  # calibration samples used for the per-layer error table when nothing else needs data
METER_SAMPLES = 16  # at most this many samples feed the per-layer error table (its float reference
# recomputes every linear, which would otherwise cost a quarter of a GPTQ run)


@dataclass
class LayerReport:
    name: str
    weights: str
    acts: str | None
    params: int
    bits: int
    rel_error: float | None = None  # relative output error on calibration data (weights and acts)
    seconds: float | None = None  # the weight quantizer's own time for this layer (if it reports one;
    # layers solved together, such as GPTQ's q/k/v, share one figure)
    block_seconds: float | None = None  # wall time of the layer's whole block (transforms, captures)

    @property
    def bits_per_weight(self) -> float:
        return self.bits / self.params


@dataclass
class QuantizationResult:
    layers: list[LayerReport]
    seconds: float
    peak_rss_mb: float
    algorithms: list[str]
    calibration_tokens: int
    notes: list[str] = field(default_factory=list)

    @property
    def quantized_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def bits_per_weight(self) -> float:
        """Bits per weight over the quantized modules (codes, scales, zeros, ids)."""
        params = self.quantized_params
        return sum(layer.bits for layer in self.layers) / params if params else float("nan")

    @property
    def mean_rel_error(self) -> float | None:
        """Mean relative output error over the layers (None unless every layer's was measured):
        one figure to compare algorithms on the same calibration data."""
        errors = [layer.rel_error for layer in self.layers]
        if not errors or any(e is None for e in errors):
            return None
        return sum(errors) / len(errors)  # type: ignore[arg-type]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _module_prefix(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise AssertionError("module not found in model")


def _check_plans(names_and_shapes: list[tuple[str, tuple[int, int]]], recipe: Recipe) -> None:
    """Refuse up front a scheme that cannot serve a layer (e.g. a group size that does not divide)."""
    from anybit.grouping import check_divisible

    for name, (out_f, in_f) in names_and_shapes:
        plan = recipe.plan_for(name)
        if plan.weights is not None:
            check_divisible((out_f, in_f), plan.weights.granularity, f"layer {name} (weights {plan.weights})")
        if plan.acts is not None and plan.acts.granularity.kind == "group":
            check_divisible((1, in_f), plan.acts.granularity, f"layer {name} (activations {plan.acts})")


class _ErrorMeter:
    """Per-layer relative output error of QLinears against their float weights, via forward hooks."""

    def __init__(
        self, modules: dict[str, QLinear], float_layers: dict[str, tuple[torch.Tensor, torch.Tensor | None]]
    ) -> None:
        self.err = {n: 0.0 for n in modules}
        self.ref = {n: 0.0 for n in modules}
        self.handles = [m.register_forward_hook(self._hook(n, *float_layers[n])) for n, m in modules.items()]

    def _hook(self, name: str, weight: torch.Tensor, bias: torch.Tensor | None):
        def hook(_m: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            ref = torch.nn.functional.linear(args[0].float(), weight, bias)
            self.err[name] += float((out.float() - ref).square().sum())
            self.ref[name] += float(ref.square().sum())

        return hook

    def close(self) -> dict[str, float]:
        for h in self.handles:
            h.remove()
        return {n: self.err[n] / self.ref[n] if self.ref[n] > 0 else 0.0 for n in self.err}


def _make_act_quant(plan: LayerPlan, name: str) -> ActQuantizer | None:
    if plan.acts is None:
        return None
    quantizer = ActQuantizer(plan.acts, name=f"{name} input")
    if not plan.acts.dynamic:
        quantizer.observe()
    return quantizer


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    recipe: Recipe,
    calibration: torch.Tensor | None,
    *,
    progress: bool = True,
) -> QuantizationResult:
    """Quantize ``model`` in place following ``recipe``; ``calibration`` is ``[samples, seqlen]`` ids."""
    start = time.perf_counter()
    adapter = get_adapter(model)
    transforms, quantizer = resolve(recipe)
    blocks = adapter.blocks(model)
    blocks_prefix = _module_prefix(model, blocks)
    # refuse a bad scheme for any layer before any work is done
    shapes = []
    for i, block in enumerate(blocks):
        for name in adapter.linear_names(block):
            lin = block.get_submodule(name)
            shapes.append((f"{blocks_prefix}.{i}.{name}", (lin.out_features, lin.in_features)))
    _check_plans(shapes, recipe)
    static_acts = any(
        (acts := recipe.plan_for(name).acts) is not None and not acts.dynamic for name, _ in shapes
    )
    needs_data = static_acts or quantizer.needs_calibration or any(t.needs_calibration for t in transforms)

    # model-level transforms (rotation) run once, before any block input is recorded
    for algo in (*transforms, quantizer):
        algo.check_model(model)
    for transform in transforms:
        if transform.model_level:
            transform.prepare_model(model, recipe)
    if calibration is None:
        if needs_data:
            raise SchemeError(
                "this recipe needs calibration data (algorithms or static activations), none given"
            )
        samples: list[torch.Tensor] = []
    else:
        count = calibration.shape[0] if needs_data else min(ERROR_SAMPLES, calibration.shape[0])
        samples = [calibration[i : i + 1] for i in range(count)]
    inputs: list[torch.Tensor] = []
    call: tuple[tuple[Any, ...], dict[str, Any]] | None = None
    calls: list[Any] = []
    for sample in samples:
        recorded = block_inputs(model, sample)
        inputs.append(recorded.hidden_states)
        if call is None:
            calls = recorded.calls  # same length, no padding: every sample gets the same arguments
            call = calls[0]

    reports: list[LayerReport] = []
    iterator = range(len(blocks))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(blocks), desc=f"quantize ({quantizer.name})", unit="block")
    layer_seconds: dict[str, float] = getattr(quantizer, "layer_seconds", {})
    for i in iterator:
        block_start = time.perf_counter()
        block = blocks[i]
        prefix = f"{blocks_prefix}.{i}"
        block_call = calls[i] if calls else ((), {})
        all_linears = adapter.linear_modules(block)
        plans = {n: recipe.plan_for(f"{prefix}.{n}") for n in all_linears}
        linears = {n: m for n, m in all_linears.items() if plans[n].weights is not None}
        ctx = BlockContext(
            index=i,
            prefix=prefix,
            block=block,
            linears=linears,
            plans=plans,
            inputs=inputs,
            call=block_call,
            recipe=recipe,
            config=model.config,
            run_block=lambda b, x, c=block_call: run_block(b, x, c),
            smooth_groups=adapter.smooth_groups(block, model.config),
        )
        for transform in transforms:
            transform.transform(ctx)
        # the float layer as the quantizer found it (after transforms): the error reference
        float_layers = {
            n: (
                m.weight.detach().float().clone(),
                None if m.bias is None else m.bias.detach().float().clone(),
            )
            for n, m in linears.items()
        }
        qweights = quantizer.quantize_block(ctx)
        float_layers.update(ctx.float_reference)
        qmodules: dict[str, QLinear] = {}
        for name, linear in linears.items():
            full = f"{prefix}.{name}"
            qlin = QLinear.from_linear(linear, qweights[name], _make_act_quant(plans[name], full), full)
            set_module(block, name, qlin)
            qmodules[name] = qlin
        # activation-only layers (weights kept float but inputs quantized)
        for name in all_linears:
            if name not in linears and plans[name].acts is not None:
                raise SchemeError(
                    f"layer {prefix}.{name}: activation quantization without weight quantization is not "
                    "supported; give it a weight scheme or drop its activation scheme"
                )
        if static_acts and inputs:
            for x in inputs:
                run_block(block, x, block_call)
            for q in qmodules.values():
                if q.act_quant is not None:
                    q.act_quant.freeze()
        meter = _ErrorMeter(qmodules, float_layers) if inputs else None
        errors: dict[str, float] = {}
        outputs = []
        for k, x in enumerate(inputs):
            if meter is not None and k == METER_SAMPLES:
                errors, meter = meter.close(), None
            outputs.append(run_block(block, x, block_call))
        if meter is not None:
            errors = meter.close()
        inputs = outputs
        block_seconds = time.perf_counter() - block_start
        for name, q in qmodules.items():
            reports.append(
                LayerReport(
                    name=f"{prefix}.{name}",
                    weights=str(q.qweight.scheme),
                    acts=None if q.act_quant is None else str(q.act_quant.scheme),
                    params=q.qweight.numel,
                    bits=q.qweight.total_bits,
                    rel_error=errors.get(name),
                    seconds=layer_seconds.get(f"{prefix}.{name}"),
                    block_seconds=block_seconds,
                )
            )
        del float_layers, qweights, ctx
        if bar is not None:
            bar.update(1)
            bar.set_postfix(rss=f"{peak_rss_mb():.0f}MB")
    if bar is not None:
        bar.close()
    notes = _quantize_head_and_embeddings(model, adapter, recipe, reports, inputs)
    return QuantizationResult(
        layers=reports,
        seconds=time.perf_counter() - start,
        peak_rss_mb=peak_rss_mb(),
        algorithms=[t.name for t in transforms] + [quantizer.name],
        calibration_tokens=sum(int(s.numel()) for s in samples),
        notes=notes,
    )


def _quantize_head_and_embeddings(
    model: nn.Module,
    adapter: Any,
    recipe: Recipe,
    reports: list[LayerReport],
    last_hidden: list[torch.Tensor],
) -> list[str]:
    """lm_head and embeddings (RTN). A static lm_head input quantizer observes the final-norm outputs."""
    notes: list[str] = []
    if recipe.lm_head:
        head = adapter.lm_head(model)
        name = _module_prefix(model, head)
        plan = recipe.plan_for(name)
        if plan.weights is not None:
            qweight = quantize(head.weight.detach(), plan.weights, name=name)
            act = _make_act_quant(plan, name)
            if act is not None and act.observing:
                norm = adapter.final_norm(model)
                for x in last_hidden:
                    act(norm(x) if norm is not None else x)
                act.freeze()
            set_module(model, name, QLinear.from_linear(head, qweight, act, name))
            if getattr(model.config, "tie_word_embeddings", False):
                notes.append(f"{name} was tied to the embeddings; it now has its own quantized weight")
                model.config.tie_word_embeddings = False
            acts = None if act is None else str(act.scheme)
            reports.append(LayerReport(name, str(plan.weights), acts, qweight.numel, qweight.total_bits))
    if recipe.embeddings:
        emb = adapter.embeddings(model)
        name = _module_prefix(model, emb)
        plan = recipe.plan_for(name)
        if plan.weights is not None:
            qweight = quantize(emb.weight.detach(), plan.weights, name=name)
            set_module(model, name, QEmbedding(qweight, emb.padding_idx, name))
            reports.append(LayerReport(name, str(plan.weights), None, qweight.numel, qweight.total_bits))
    return notes
