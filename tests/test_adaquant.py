"""AdaQuant (+ bias correction) on tiny models: lower layer error than RTN, exact QTensors, refusals."""

from __future__ import annotations

import pytest
import torch

from anybit.algorithms import resolve
from anybit.algorithms.adaquant import AdaQuant, AdaQuantOptions, adaquant_layer
from anybit.algorithms.adaround import LayerStats, grid_setup
from anybit.errors import AlgorithmError
from anybit.models import tiny_model
from anybit.models.pipeline import QuantizationResult, quantize_model
from anybit.nn import QLinear
from anybit.recipe import Recipe
from anybit.scheme import parse_scheme

CALIB = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(0))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _run(scheme: str, algo: str, options: tuple = ()) -> tuple[torch.nn.Module, QuantizationResult]:
    model = tiny_model("llama")
    recipe = Recipe(weights=scheme, algorithms=(algo,), options=options)
    return model, quantize_model(model, recipe, CALIB, progress=False)


@pytest.mark.parametrize("scheme", ["int4:g32", "int3:g32"])
def test_adaquant_lowers_layer_error_against_rtn_and_is_exact(scheme: str) -> None:
    _, rtn = _run(scheme, "rtn")
    model, ada = _run(scheme, "adaquant")
    assert _mean(ada) <= 0.9 * _mean(rtn), (_mean(ada), _mean(rtn))
    qlinears = [m for m in model.modules() if isinstance(m, QLinear)]
    assert len(qlinears) == len(ada.layers)
    for q in qlinears:
        assert q.qweight is not None and torch.equal(q.weight, q.qweight.dequantize())
        assert q.bias is not None  # bias correction gave the bias-free Llama linears a bias
    # scales stay in the scheme's storage format
    assert all(q.qweight.scales.dtype == torch.float32 for q in qlinears)  # type: ignore[union-attr]


def test_fp16_scales_end_representable() -> None:
    model, _ = _run("int4:g32:scale=fp16", "adaquant", (("adaquant.iters", 50),))
    for q in (m for m in model.modules() if isinstance(m, QLinear)):
        assert q.qweight is not None and q.qweight.scales.dtype == torch.float16
        assert torch.equal(q.weight, q.qweight.dequantize())


def _layer_case(offset: float) -> tuple[torch.Tensor, torch.Tensor, LayerStats]:
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(32, 64, generator=gen) * 0.05
    x = torch.randn(1024, 64, generator=gen) + offset  # inputs with a non-zero mean
    return weight, x, LayerStats(x.T @ x / x.shape[0], x.mean(0), x.shape[0])


def test_bias_correction_reduces_the_mean_output_bias() -> None:
    weight, x, stats = _layer_case(offset=0.7)
    scheme = parse_scheme("int3:g32")
    plain, none = adaquant_layer("w", weight, scheme, stats, AdaQuantOptions(iters=50, bias_correction=False))
    corrected, delta = adaquant_layer("w", weight, scheme, stats, AdaQuantOptions(iters=50))
    assert none is None and delta is not None
    bias_plain = (x @ (weight - plain.dequantize()).T).mean(0)  # E[W x] - E[Q x] per channel
    bias_corr = (x @ (weight - corrected.dequantize()).T).mean(0) - delta
    assert bias_corr.abs().mean() < 0.05 * bias_plain.abs().mean()
    # and the total output error with the corrected bias is below RTN's
    rtn = grid_setup(weight, scheme)
    err = ((x @ (weight - corrected.dequantize()).T) - delta).square().sum()
    err_rtn = (x @ (weight - rtn.dequant(rtn.rtn)).T).square().sum()
    assert err < 0.8 * err_rtn


def test_learned_scales_and_weights_beat_rtn_without_bias() -> None:
    weight, x, stats = _layer_case(offset=0.0)
    scheme = parse_scheme("int3:g32")
    qtensor, _ = adaquant_layer("w", weight, scheme, stats, AdaQuantOptions(bias_correction=False))
    rtn = grid_setup(weight, scheme)
    err = (x @ (weight - qtensor.dequantize()).T).square().sum()
    err_rtn = (x @ (weight - rtn.dequant(rtn.rtn)).T).square().sum()
    assert err < 0.9 * err_rtn


@pytest.mark.parametrize("scheme", ["bitmod3:g32", "int4:g32:dual"])
def test_unsupported_schemes_are_refused_before_any_work(scheme: str, monkeypatch) -> None:
    def never(*_args, **_kwargs):
        raise AssertionError("quantize_block ran")

    monkeypatch.setattr(AdaQuant, "quantize_block", never)
    with pytest.raises(AlgorithmError, match="adaquant cannot serve"):
        resolve(Recipe(weights=scheme, algorithms=("adaquant",)))
    with pytest.raises(AlgorithmError, match="adaquant cannot serve"):
        quantize_model(
            tiny_model("llama"), Recipe(weights=scheme, algorithms=("adaquant",)), CALIB, progress=False
        )


def test_an_override_with_an_unsupported_scheme_is_refused() -> None:
    from anybit.recipe import LayerOverride

    recipe = Recipe(
        weights="int4:g32", algorithms=("adaquant",), overrides=(LayerOverride("down_proj", "bitmod3:g32"),)
    )
    with pytest.raises(AlgorithmError):
        resolve(recipe)


@pytest.mark.parametrize("options", [(("adaquant.iters", -1),), (("adaquant.bias_correction", "maybe"),)])
def test_bad_options_are_refused(options: tuple) -> None:
    with pytest.raises(AlgorithmError):
        resolve(Recipe(weights="int4:g32", algorithms=("adaquant",), options=options))


def _mean(result: QuantizationResult) -> float:
    error = result.mean_rel_error
    assert error is not None, "every layer's output error is measured"
    return error
