"""Hadamard rotation: the matrices, exact function preservation, lower quantized error, refusals."""

from __future__ import annotations

import pytest
import torch
from test_smooth import with_outliers
from torch import nn

from anybit.algorithms import resolve
from anybit.algorithms.rotate import HadamardRotation, hadamard, random_hadamard, rotate_model
from anybit.errors import AlgorithmError
from anybit.models import tiny_model
from anybit.models.pipeline import quantize_model
from anybit.recipe import Recipe


def _calibration(samples: int = 8, seq: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (samples, seq), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("n", [1, 2, 12, 20, 36, 64, 576, 640, 1536])
def test_hadamard_orders(n: int) -> None:
    """±1 entries and H H^T = n I, including the non-powers of two of SmolLM2 (576, FFN 1536)."""
    h = hadamard(n)
    assert h is not None and h.shape == (n, n)
    assert bool((h.abs() == 1).all())
    torch.testing.assert_close(h @ h.T, n * torch.eye(n, dtype=torch.float64), rtol=0, atol=0)


def test_random_orthogonal_fallback() -> None:
    assert hadamard(9) is None  # no Hadamard of odd order > 2
    q, kind = random_hadamard(9, seed=0)
    assert kind == "random-orthogonal"
    torch.testing.assert_close(q @ q.T, torch.eye(9, dtype=torch.float64))
    q1, kind1 = random_hadamard(576, seed=1)
    q2, _ = random_hadamard(576, seed=1)
    assert kind1 == "hadamard" and torch.equal(q1, q2)  # seeded
    torch.testing.assert_close(q1 @ q1.T, torch.eye(576, dtype=torch.float64))


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_rotation_preserves_logits(arch: str) -> None:
    model = with_outliers(tiny_model(arch, seed=1))
    ids = _calibration(2, 32)
    with torch.no_grad():
        ref = model(ids).logits
    info = rotate_model(model, seed=3)
    assert info.kind == "hadamard" and info.size == 64
    with torch.no_grad():
        out = model(ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(AlgorithmError, match="already rotated"):
        rotate_model(model)


def test_rotation_unties_embeddings() -> None:
    model = tiny_model("llama", seed=2)
    model.lm_head.weight = model.model.embed_tokens.weight
    model.config.tie_word_embeddings = True
    ids = _calibration(2, 32)
    with torch.no_grad():
        ref = model(ids).logits
    assert rotate_model(model).untied
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert not model.config.tie_word_embeddings
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("arch", "why"), [("gemma3_text", "post-attention"), ("opt", "mean"), ("gpt2", "mean")]
)
def test_unsupported_architectures_are_refused(arch: str, why: str) -> None:
    model = tiny_model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AlgorithmError, match=why):
        rotate_model(model)
    with pytest.raises(AlgorithmError, match="smooth/aqas"):
        HadamardRotation().check_model(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def _mean_error(model: nn.Module, recipe: Recipe) -> float:
    result = quantize_model(model, recipe, _calibration(), progress=False)
    errors = [layer.rel_error for layer in result.layers]
    return sum(errors) / len(errors)  # type: ignore[arg-type]


@pytest.mark.parametrize(("weights", "acts"), [("int8:channel", "int8:token"), ("int4:g32", "int8:token")])
def test_rotation_beats_rtn(weights: str, acts: str) -> None:
    plain = _mean_error(with_outliers(tiny_model("llama", seed=1)), Recipe(weights=weights, acts=acts))
    rotated_model = with_outliers(tiny_model("llama", seed=1))  # the pipeline rotates it (model level)
    rotated = _mean_error(rotated_model, Recipe(weights=weights, acts=acts, algorithms="rotate,rtn"))
    assert rotated <= 0.9 * plain, (rotated, plain)


def test_rotate_runs_at_model_level_once() -> None:
    """The pipeline rotates the model before block 0; a model rotated already is refused up front."""
    recipe = Recipe(weights="int8:channel", acts="int8:token", algorithms="rotate,rtn")
    transforms, _ = resolve(recipe)
    assert transforms[0].model_level
    model = tiny_model("llama")
    rotate_model(model)
    with pytest.raises(AlgorithmError, match="already rotated"):
        quantize_model(model, recipe, _calibration(2, 16), progress=False)
    with pytest.raises(AlgorithmError, match=r"rotate\.seed"):
        resolve(Recipe(weights="int8", algorithms="rotate", options=(("rotate.seed", -1),)))


def test_rotate_then_smooth_preserves_logits() -> None:
    from test_smooth import apply_transforms

    model = with_outliers(tiny_model("qwen3", seed=1))
    ids = _calibration(4, 32)
    with torch.no_grad():
        ref = model(ids).logits
    recipe = Recipe(weights="int4:g32", acts="int8:token", algorithms="rotate,smooth,rtn")
    HadamardRotation().prepare_model(model, recipe)
    apply_transforms(model, recipe, ids)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref, rtol=1e-4, atol=1e-4)
