"""GPTQ on tiny models: lower layer error than RTN, exact QTensors, damping retries, refusals."""

from __future__ import annotations

import logging

import pytest
import torch

from anybit.algorithms import resolve
from anybit.algorithms.gptq import GroupQuantizer, gptq_sweep, inverse_cholesky
from anybit.errors import AlgorithmError
from anybit.models import tiny_model
from anybit.models.pipeline import quantize_model
from anybit.nn import QLinear
from anybit.quantizer import fake_quantize
from anybit.recipe import Recipe
from anybit.scheme import parse_scheme

CALIB = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(0))
MARGIN = 0.9  # GPTQ's mean layer error must be at most this fraction of RTN's


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _mean_error(scheme: str, algo: str, **options: object) -> float:
    model = tiny_model("llama")
    recipe = Recipe(weights=scheme, algorithms=(algo,), options=tuple(options.items()))
    result = quantize_model(model, recipe, CALIB, progress=False)
    errors = [layer.rel_error for layer in result.layers]
    assert all(e is not None and e > 0 for e in errors)  # > 0: errors were measured against float weights
    return sum(errors) / len(errors)  # type: ignore[arg-type]


@pytest.mark.parametrize("scheme", ["int4:g32", "int3:g32:asym", "nf4:g32", "fp4_e2m1:g32", "int4:g32:dual"])
def test_gptq_lowers_layer_error_against_rtn(scheme: str) -> None:
    assert _mean_error(scheme, "gptq") <= MARGIN * _mean_error(scheme, "rtn")


def test_gptq_without_act_order_also_beats_rtn() -> None:
    rtn = _mean_error("int3:g32:asym", "rtn")
    assert _mean_error("int3:g32:asym", "gptq", **{"gptq.act_order": False}) <= MARGIN * rtn
    assert _mean_error("int3:g32:asym", "gptq", **{"gptq.true_sequential": "false"}) <= MARGIN * rtn


def test_qlinear_holds_exactly_what_gptq_optimized() -> None:
    model = tiny_model("llama")
    quantize_model(model, Recipe(weights="int4:g32:dual", algorithms=("gptq",)), CALIB, progress=False)
    qlinears = [m for m in model.modules() if isinstance(m, QLinear)]
    assert len(qlinears) == 14
    for q in qlinears:
        assert torch.equal(q.weight, q.qweight.dequantize())


def test_linears_sharing_an_input_share_one_sweep(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="anybit.algorithms.gptq"):
        _mean_error("int4:g32", "gptq")
    labels = [r.getMessage().split(" (")[0] for r in caplog.records if "model.layers.0." in r.getMessage()]
    short = [label.replace("model.layers.0.", "").removeprefix("GPTQ ") for label in labels]
    assert short == [
        "self_attn.q_proj+self_attn.k_proj+self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj+mlp.up_proj",
        "mlp.down_proj",
    ]


def _problem(rows: int = 48, cols: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=gen)
    x = torch.randn(512, cols, generator=gen) @ torch.randn(cols, cols, generator=gen)  # correlated inputs
    x[:, 5] = 0.0  # a dead input
    return weight, 2 * x.T @ x / x.shape[0]


def _objective(weight: torch.Tensor, q: torch.Tensor, hessian: torch.Tensor) -> float:
    diff = (weight - q).double()
    return float(torch.trace(diff @ hessian.double() @ diff.T))


@pytest.mark.parametrize(
    "scheme",
    [
        "int4:g32",
        "int3:g16:asym",
        "int4:g32:asym=float",
        "uint4:g32:asym",
        "int4:g32:dual",
        "int4:g32:dual:clip=mse",
        "int4:g32:clip=mse",
        "int4:channel",
        "int4:tensor",
        "int4:b16x32",
        "nf4:g32",
        "nf4",  # bitsandbytes preset: double-quantized scales (static groups)
        "dint4:g32:scale=fp16",
        "fp4_e2m1:g32",
        "fp4_e2m1:g32:scale=bf16",
        "mxfp4",
        "nvfp4",
        "bitmod4:g32",
    ],
)
@pytest.mark.parametrize("act_order", [True, False])
def test_sweep_qtensor_is_exact_and_beats_rtn_on_the_objective(scheme: str, act_order: bool) -> None:
    weight, hessian = _problem()
    parsed = parse_scheme(scheme)
    quantizer = GroupQuantizer(weight, [("w", weight.shape[0])], parsed, static=False)
    levels, q = gptq_sweep(weight, hessian, quantizer, act_order=act_order, block_size=16, name="w")
    qt = quantizer.qtensor(levels, quantizer.segments[0], tuple(weight.shape))
    assert torch.equal(qt.dequantize(), q)
    assert torch.all(q[:, 5] == 0) or parsed.zero_point == "float"  # dead input column zeroed
    rtn = fake_quantize(weight, parsed)
    assert _objective(weight, q, hessian) < MARGIN * _objective(weight, rtn, hessian)


def test_row_concatenated_linears_keep_their_own_tensor_scales() -> None:
    weight, hessian = _problem(rows=48)
    weight[:16] *= 10  # two "linears" of very different magnitude
    scheme = parse_scheme("nvfp4")
    quantizer = GroupQuantizer(weight, [("a", 16), ("b", 32)], scheme, static=False)
    levels, q = gptq_sweep(weight, hessian, quantizer, name="a+b")
    for seg in quantizer.segments:
        qt = quantizer.qtensor(levels, seg, (seg.stop - seg.start, weight.shape[1]))
        assert torch.equal(qt.dequantize(), q[seg.start : seg.stop])
    outer = [seg.ctx.outer for seg in quantizer.segments]
    assert outer[0] is not None and outer[1] is not None and float(outer[0]) > 5 * float(outer[1])


def test_not_positive_definite_hessian_gets_more_damping(caplog: pytest.LogCaptureFixture) -> None:
    hessian = torch.diag(torch.tensor([1.0] * 7 + [-0.05], dtype=torch.float64))
    with caplog.at_level(logging.WARNING, logger="anybit.algorithms.gptq"):
        upper = inverse_cholesky(hessian, 0.01, "model.layers.3.mlp.down_proj")
    assert torch.isfinite(upper).all()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "model.layers.3.mlp.down_proj" in warnings[0] and "damp=0.1" in warnings[0]


def test_hopeless_hessian_is_an_error_not_a_fallback() -> None:
    with pytest.raises(AlgorithmError, match="not positive definite"):
        inverse_cholesky(-torch.eye(8, dtype=torch.float64), 0.01, "layer")


@pytest.mark.parametrize(
    "options",
    [
        {"gptq.damp": -1},
        {"gptq.damp": "lots"},
        {"gptq.block_size": 0},
        {"gptq.act_order": "maybe"},
        {"gptq.actorder": True},  # misspelt option
    ],
)
def test_bad_options_are_refused_up_front(options: dict[str, object]) -> None:
    with pytest.raises(AlgorithmError):
        resolve(Recipe(weights="int4:g32", algorithms=("gptq",), options=tuple(options.items())))


def test_recipe_without_weights_is_refused() -> None:
    with pytest.raises(AlgorithmError, match="weight scheme"):
        resolve(Recipe(weights=None, acts="int8:token", algorithms=("gptq",)))
