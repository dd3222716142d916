"""SmoothQuant and AQAS on tiny models: exact in float, lower quantized error than RTN, refusals.

The tiny models get activation outliers the way real LLMs have them: a few channels of every norm
that feeds linears are scaled up 30x, so per-token/per-tensor activation scales are set by them.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anybit.algorithms import BlockContext, resolve
from anybit.algorithms.smooth import AQAS, SmoothQuant, fold_scales, smoothquant_scales
from anybit.errors import AlgorithmError
from anybit.models import block_inputs, get_adapter, run_block, tiny_model
from anybit.models.pipeline import quantize_model
from anybit.recipe import Recipe

OUTLIER_CHANNELS = (3, 17, 40)
OUTLIER_FACTOR = 30.0
ARCHS = ("llama", "qwen3", "gemma3_text", "opt")


def _calibration(samples: int = 8, seq: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (samples, seq), generator=torch.Generator().manual_seed(0))


def with_outliers(model: nn.Module) -> nn.Module:
    """Scale a few channels of every linear-feeding norm (Gemma: the effective 1 + w)."""
    adapter = get_adapter(model)
    with torch.no_grad():
        for block in adapter.blocks(model):
            for group in adapter.smooth_groups(block, model.config):
                if group.kind == "norm":
                    w = group.prev.weight
                    for c in OUTLIER_CHANNELS:
                        w[c] = (w[c] + group.norm_offset) * OUTLIER_FACTOR - group.norm_offset
    return model


@torch.no_grad()
def apply_transforms(model: nn.Module, recipe: Recipe, calibration: torch.Tensor) -> None:
    """Run the recipe's transforms block by block on float inputs, without quantizing anything."""
    adapter = get_adapter(model)
    transforms, _ = resolve(recipe)
    recorded = [block_inputs(model, calibration[i : i + 1]) for i in range(calibration.shape[0])]
    inputs = [r.hidden_states for r in recorded]
    calls = recorded[0].calls
    for i, block in enumerate(adapter.blocks(model)):
        linears = adapter.linear_modules(block)
        ctx = BlockContext(
            index=i,
            prefix=f"{adapter.layers_path}.{i}",
            block=block,
            linears=linears,
            plans={n: recipe.plan_for(f"{adapter.layers_path}.{i}.{n}") for n in linears},
            inputs=inputs,
            call=calls[i],
            recipe=recipe,
            config=model.config,
            run_block=lambda b, x, c=calls[i]: run_block(b, x, c),
            smooth_groups=adapter.smooth_groups(block, model.config),
        )
        for t in transforms:
            t.transform(ctx)
        inputs = [run_block(block, x, calls[i]) for x in inputs]


@pytest.mark.parametrize("algo", ["smooth", "aqas"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3_text", "gpt2", "opt"])
def test_transform_preserves_float_logits(arch: str, algo: str) -> None:
    model = with_outliers(tiny_model(arch, seed=1))
    calib = _calibration(4, 32)
    with torch.no_grad():
        ref = model(calib).logits
    options = (("aqas.grid", 3), ("aqas.rows", 256))  # exactness does not depend on the search
    recipe = Recipe(weights="int4:g32", acts="int8:token", algorithms=f"{algo},rtn", options=options)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_transforms(model, recipe, calib)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # it did something
    with torch.no_grad():
        out = model(calib).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def _mean_error(arch: str, weights: str, acts: str, algo: str) -> float:
    model = with_outliers(tiny_model(arch, seed=1))
    result = quantize_model(
        model, Recipe(weights=weights, acts=acts, algorithms=algo), _calibration(), progress=False
    )
    errors = [layer.rel_error for layer in result.layers]
    assert all(e is not None for e in errors)
    return sum(errors) / len(errors)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arch", "weights", "acts"),
    [
        ("llama", "int8:channel", "int8:token"),  # W8A8 dynamic
        ("llama", "int4:g32", "int8:tensor:static"),  # W4A8 static: calibration sets the range
        ("qwen3", "int4:g32", "int8:token"),
        ("gemma3_text", "int8:channel", "int8:tensor:static"),
        ("opt", "int4:g32", "int8:token"),
    ],
)
def test_smooth_and_aqas_beat_rtn(arch: str, weights: str, acts: str) -> None:
    rtn = _mean_error(arch, weights, acts, "rtn")
    smooth = _mean_error(arch, weights, acts, "smooth,rtn")
    aqas = _mean_error(arch, weights, acts, "aqas,rtn")
    assert smooth <= 0.9 * rtn, (smooth, rtn)
    assert aqas <= 0.9 * rtn, (aqas, rtn)
    assert aqas <= 1.05 * smooth, (aqas, smooth)  # the search includes alpha = 0.5 (and no smoothing)


def test_smoothquant_scales_formula() -> None:
    x_max = torch.tensor([1.0, 4.0, 100.0])
    w_max = torch.tensor([1.0, 1.0, 0.25])
    s = smoothquant_scales(x_max, w_max, 0.5)
    raw = x_max.sqrt() / w_max.sqrt()
    torch.testing.assert_close(s, raw / raw.log().mean().exp())
    # alpha = 1 moves the whole activation range into the weights
    s1 = smoothquant_scales(x_max, w_max, 1.0)
    torch.testing.assert_close(s1 / s1[0], x_max)


def test_fold_refuses_nonpositive_scales() -> None:
    model = tiny_model("llama")
    group = get_adapter(model).smooth_groups(get_adapter(model).blocks(model)[0], model.config)[0]
    with pytest.raises(AlgorithmError, match="finite and > 0"):
        fold_scales(group, torch.zeros(64))


def test_refusals_up_front() -> None:
    with pytest.raises(AlgorithmError, match="quantizes no activations"):
        resolve(Recipe(weights="int4:g64", algorithms="smooth,rtn"))
    with pytest.raises(AlgorithmError, match=r"smooth.alpha must be a number in \[0, 1\]"):
        resolve(
            Recipe(weights="int8", acts="int8:token", algorithms="smooth", options=(("smooth.alpha", 2),))
        )
    with pytest.raises(AlgorithmError, match=r"aqas\.grid"):
        resolve(Recipe(weights="int8", acts="int8:token", algorithms="aqas", options=(("aqas.grid", 1),)))
    with pytest.raises(AlgorithmError, match="after the weight quantizer"):
        resolve(Recipe(weights="int8", acts="int8:token", algorithms="rtn,smooth"))
    # AQAS serves weight-only recipes (the objective with Q_A = identity)
    transforms, _ = resolve(Recipe(weights="int4:g64", algorithms="aqas,rtn"))
    assert isinstance(transforms[0], AQAS)
    smooth = resolve(Recipe(weights="int8", acts="int8:token", algorithms="smooth"))[0][0]
    assert isinstance(smooth, SmoothQuant)
