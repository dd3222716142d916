"""AdaRound (learned rounding) on tiny models: lower layer error than RTN, exact QTensors, grids."""

from __future__ import annotations

import pytest
import torch

from anybit.algorithms import resolve
from anybit.algorithms.adaround import AdaRoundOptions, LayerStats, adaround_layer, grid_setup
from anybit.errors import AlgorithmError
from anybit.models import tiny_model
from anybit.models.pipeline import QuantizationResult, quantize_model
from anybit.nn import QLinear
from anybit.recipe import Recipe
from anybit.scheme import parse_scheme

CALIB = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(0))
FAST = (("adaround.iters", 100),)  # the tests' budget; the default is larger


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _run(scheme: str, algo: str) -> tuple[torch.nn.Module, QuantizationResult]:
    model = tiny_model("llama")
    result = quantize_model(
        model, Recipe(weights=scheme, algorithms=(algo,), options=FAST), CALIB, progress=False
    )
    return model, result


@pytest.mark.parametrize("scheme", ["int3:g32", "int4:g32:asym", "fp4_e2m1:g32", "nf4:g32"])
def test_adaround_lowers_layer_error_against_rtn_and_is_exact(scheme: str) -> None:
    _, rtn = _run(scheme, "rtn")
    model, ada = _run(scheme, "adaround")
    assert _mean(ada) <= 0.9 * _mean(rtn), (_mean(ada), _mean(rtn))
    qlinears = [m for m in model.modules() if isinstance(m, QLinear)]
    assert len(qlinears) == len(ada.layers)
    for q in qlinears:  # the module computes with exactly what the QTensor stores
        assert q.qweight is not None and torch.equal(q.weight, q.qweight.dequantize())
        assert q.bias is None  # adaround leaves biases alone


@pytest.mark.parametrize("scheme", ["bitmod3:g32", "int4:g32:dual"])
def test_adaround_serves_families_and_dual_scales(scheme: str) -> None:
    _, rtn = _run(scheme, "rtn")
    _, ada = _run(scheme, "adaround")
    assert _mean(ada) < _mean(rtn)


@pytest.mark.parametrize("scheme", ["fp4_e2m1:g32", "nf4:g32", "int3:g32:asym", "int4:g32:asym=float"])
def test_neighbours_are_consecutive_levels_of_the_grid(scheme: str) -> None:
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    setup = grid_setup(weight, parse_scheme(scheme))
    levels = parse_scheme(scheme).number_format.levels.float()  # type: ignore[union-attr]
    assert bool(torch.isin(setup.lower, levels).all()) and bool(torch.isin(setup.upper, levels).all())
    inside = (setup.unit >= levels[0]) & (setup.unit <= levels[-1])
    assert bool((setup.lower[inside] <= setup.unit[inside]).all())
    assert bool((setup.unit[inside] <= setup.upper[inside]).all())
    index = torch.searchsorted(levels, setup.lower[inside])
    gap = setup.upper[inside] - setup.lower[inside]
    nxt = levels[(index + 1).clamp(max=levels.numel() - 1)]
    assert bool(((gap == 0) | (setup.upper[inside] == nxt)).all())
    # RTN is one of the two neighbours
    assert bool(((setup.rtn == setup.lower) | (setup.rtn == setup.upper)).all())


def test_layer_level_error_drops_and_never_exceeds_rtn() -> None:
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(48, 64, generator=gen) * 0.05
    x = torch.randn(512, 24, generator=gen) @ torch.randn(24, 64, generator=gen)  # correlated inputs
    # (with uncorrelated inputs H is diagonal and nearest rounding is already optimal)
    stats = LayerStats(x.T @ x / 512, x.mean(0), 512)
    scheme = parse_scheme("fp4_e2m1:g32")
    qtensor = adaround_layer("w", weight, scheme, stats, AdaRoundOptions(iters=150))
    rtn = grid_setup(weight, scheme)
    err = ((qtensor.dequantize() - weight) @ x.T).square().sum()
    err_rtn = ((rtn.dequant(rtn.rtn) - weight) @ x.T).square().sum()
    assert err <= 0.8 * err_rtn


@pytest.mark.parametrize(
    "options",
    [
        (("adaround.iters", 0),),
        (("adaround.lr", "fast"),),
        (("adaround.warmup", 1.5),),
        (("adaround.beta", 3),),
    ],
)
def test_bad_options_are_refused_before_any_work(options: tuple) -> None:
    with pytest.raises(AlgorithmError):
        resolve(Recipe(weights="int4:g32", algorithms=("adaround",), options=options))


def test_stages_group_linears_that_read_the_same_input() -> None:
    """True-sequential order: q/k/v together, then o, gate/up together, then down."""
    from anybit.algorithms.adaround import input_stages
    from anybit.algorithms.base import BlockContext
    from anybit.models.adapters import block_inputs, get_adapter, run_block

    model = tiny_model("llama")
    adapter = get_adapter(model)
    block = adapter.blocks(model)[0]
    recorded = block_inputs(model, CALIB[:1])
    call = recorded.calls[0]
    ctx = BlockContext(
        index=0,
        prefix="model.layers.0",
        block=block,
        linears=adapter.linear_modules(block),
        plans={},
        inputs=[recorded.hidden_states],
        call=call,
        recipe=Recipe(weights="int4:g32"),
        config=model.config,
        run_block=lambda b, x: run_block(b, x, call),
    )
    stages = [sorted(s) for s in input_stages(ctx)]
    assert stages == [
        ["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"],
        ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"],
        ["mlp.down_proj"],
    ]


def _mean(result: QuantizationResult) -> float:
    error = result.mean_rel_error
    assert error is not None, "every layer's output error is measured"
    return error
