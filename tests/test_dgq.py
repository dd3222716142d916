"""DGQ (two-phase output-error search of dual-grained scales) and percentile clipping smoothing."""

from __future__ import annotations

import pytest
import torch

from anybit.algorithms import resolve
from anybit.algorithms.dgq import DGQOptions, dgq_layer, percentile_scales
from anybit.errors import AlgorithmError
from anybit.models import tiny_model
from anybit.models.adapters import block_inputs, get_adapter, run_block
from anybit.models.pipeline import QuantizationResult, quantize_model
from anybit.nn import QLinear
from anybit.quantizer import quantize, quantize_with_params
from anybit.recipe import Recipe
from anybit.scales import make_context
from anybit.scheme import parse_scheme

CALIB = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(0))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _run(
    scheme: str, algos: tuple[str, ...], acts: str | None = None, model=None, options: tuple = ()
) -> QuantizationResult:
    model = tiny_model("llama") if model is None else model
    recipe = Recipe(weights=scheme, acts=acts, algorithms=algos, options=options)
    return quantize_model(model, recipe, CALIB, progress=False)


def _correlated_case(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and inputs with unequal, correlated channels (where output error != weight error)."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(48, 128, generator=gen) * 0.05
    mix = torch.randn(128, 128, generator=gen) / 128**0.5
    x = (torch.randn(2048, 128, generator=gen) @ mix) * torch.linspace(0.2, 3.0, 128)
    return weight, x


@pytest.mark.parametrize("scheme", ["int4:g32:dual:asym", "int4:g32:dual", "int3:g32", "int4:channel"])
def test_dgq_layer_has_lower_output_error_than_rtn(scheme: str) -> None:
    weight, x = _correlated_case()
    q = parse_scheme(scheme)
    gram = x.T @ x / x.shape[0]
    searched = dgq_layer(weight, q, gram, DGQOptions(), "w")
    rtn = quantize(weight, q)

    def out_err(qt) -> float:
        return float((x @ (qt.dequantize() - weight).T).square().sum())

    assert out_err(searched) <= 0.9 * out_err(rtn), (out_err(searched), out_err(rtn))
    assert searched.scheme == q


def test_dgq_on_a_tiny_model_lowers_layer_errors_and_is_exact() -> None:
    rtn = _run("int4:g32:dual:asym", ("rtn",), acts="int8:token")
    model = tiny_model("llama")
    dgq = _run("int4:g32:dual:asym", ("dgq",), acts="int8:token", model=model)
    assert _mean(dgq) <= 0.9 * _mean(rtn), (_mean(dgq), _mean(rtn))
    for q in (m for m in model.modules() if isinstance(m, QLinear)):
        assert q.qweight is not None and torch.equal(q.weight, q.qweight.dequantize())
        # dual: integer group scales within 1..127 and INT8-representable products S2 * (q - z)
        assert q.qweight.scheme.scale_format == "dual"


def test_quantize_with_params_reproduces_quantize() -> None:
    from anybit.grouping import to_groups
    from anybit.quantizer import _choose

    w = torch.randn(16, 64)
    for text in ("int4:g32:asym", "int4:g32:dual:asym", "fp4_e2m1:g32:scale=e8m0"):
        scheme = parse_scheme(text)
        g = to_groups(w, scheme.granularity)
        _, s_raw, lo, ctx, _ = _choose(g, scheme)
        a = quantize(w, scheme)
        b = quantize_with_params(w, scheme, s_raw, lo, ctx)
        assert torch.equal(a.codes, b.codes) and torch.equal(a.dequantize(), b.dequantize())
        if scheme.scale_format != "dual":  # the context is derived from s_raw when omitted
            c = quantize_with_params(w, scheme, s_raw, lo)
            assert torch.equal(a.dequantize(), c.dequantize())
    with pytest.raises(Exception, match="do not match"):
        quantize_with_params(
            w,
            parse_scheme("int4:g32"),
            torch.ones(3, 3),
            torch.zeros(3, 3),
            make_context(torch.ones(3, 3), parse_scheme("int4:g32"), torch.ones(3, 3, 1)),
        )


def test_percentile_scales_touch_only_the_outliers() -> None:
    a = torch.ones(400)
    a[:3] = torch.tensor([50.0, 20.0, 5.0])
    s = percentile_scales(a, 99.5)  # k = int(400 * 0.005 + 1.5) = 3: baseline is the 3rd largest
    assert torch.allclose(s[:3], torch.tensor([10.0, 4.0, 1.0]))
    assert bool((s[3:] == 1).all())
    assert bool((percentile_scales(torch.zeros(10), 99.5) == 1).all())  # dead input: untouched


@torch.no_grad()
def test_pcsmooth_keeps_the_float_function_and_lowers_w8a8_error() -> None:
    def outlier_model():
        model = tiny_model("llama")
        for layer in get_adapter(model).blocks(model):
            layer.post_attention_layernorm.weight[:2] *= 40.0  # strong channel outliers into gate/up
            layer.input_layernorm.weight[5] *= 25.0
        return model

    # exactness of the fold in float (a transform must not change the block's function)
    model = outlier_model()
    recorded = block_inputs(model, CALIB[:1])
    block = get_adapter(model).blocks(model)[0]
    before = run_block(block, recorded.hidden_states, recorded.calls[0])
    from anybit.algorithms.base import BlockContext

    recipe = Recipe(weights="int8:channel", acts="int8:token", algorithms=("pcsmooth", "rtn"))
    transforms, _ = resolve(recipe)
    adapter = get_adapter(model)
    lin = adapter.linear_modules(block)
    ctx = BlockContext(
        0,
        "model.layers.0",
        block,
        lin,
        {n: recipe.plan_for(n) for n in lin},
        [recorded.hidden_states],
        recorded.calls[0],
        recipe,
        model.config,
        lambda b, x: run_block(b, x, recorded.calls[0]),
        adapter.smooth_groups(block, model.config),
    )
    transforms[0].transform(ctx)
    after = run_block(block, recorded.hidden_states, recorded.calls[0])
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-5)

    # the tiny model has 64 channels: 95% puts the baseline at the 4th largest (99.5% would be the 1st)
    options = (("pcsmooth.percentile", 95.0),)
    plain = _run("int8:channel", ("rtn",), acts="int4:token", model=outlier_model())
    smoothed = _run("int8:channel", ("pcsmooth", "rtn"), "int4:token", outlier_model(), options)

    def fed_by_norms(result: QuantizationResult) -> float:  # the linears that read the outliers
        errs = [x.rel_error for x in result.layers if x.name.split(".")[-1] in ("gate_proj", "up_proj")]
        return sum(errs) / len(errs)  # type: ignore[arg-type]

    assert fed_by_norms(smoothed) <= 0.5 * fed_by_norms(plain), (fed_by_norms(smoothed), fed_by_norms(plain))


@pytest.mark.parametrize(
    ("recipe", "match"),
    [
        (Recipe(weights="bitmod4:g32", algorithms=("dgq",)), "format family"),
        (Recipe(weights="nvfp4", algorithms=("dgq",)), "e4m3"),
        (Recipe(weights="nf4", algorithms=("dgq",)), "dq"),
        (Recipe(weights="int4:g32", algorithms=("pcsmooth", "rtn")), "no activations"),
        (Recipe(weights="int4:g32", algorithms=("dgq",), options=(("dgq.group_min", 1.5),)), "group_min"),
        (Recipe(weights="int4:g32", algorithms=("dgq",), options=(("dgq.bogus", 1),)), "unknown"),
    ],
)
def test_bad_recipes_are_refused_up_front(recipe: Recipe, match: str) -> None:
    with pytest.raises(AlgorithmError, match=match):
        resolve(recipe)


def _mean(result: QuantizationResult) -> float:
    error = result.mean_rel_error
    assert error is not None, "every layer's output error is measured"
    return error
