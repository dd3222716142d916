"""Packed mode: QLinear on the CPU kernels gives the simulated model's outputs and perplexity."""

from __future__ import annotations

import copy

import pytest
import torch

from anybit.eval import perplexity
from anybit.kernels import is_available
from anybit.models import tiny_model
from anybit.models.pipeline import quantize_model
from anybit.nn import QLinear, pack_model
from anybit.recipe import Recipe

pytestmark = pytest.mark.skipif(not is_available(), reason="anybit._kernels is not built")

CALIB = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
EVAL = torch.randint(0, 256, (512,), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("weights", "acts", "kind"),
    [
        ("int4:g32", None, "intbp"),
        ("int3:g32:asym", None, "intbp"),
        ("int2:g32:asym", None, "intbp"),
        ("nf4:g32:scale=fp16", None, "codebook"),
        ("fp4_e2m1:g32", None, "codebook"),
        ("nvfp4", None, "codebook"),
        ("bitmod4:g32", None, "codebook"),
        ("int8:channel", "int8b:token", "w8a8"),
        ("int4:g32:dual", "int8b:token", "w4a8"),
        ("int4:g32", "int8:token", "intbp"),  # no integer GEMM for this pair: weight-only kernel
    ],
)
def test_packed_model_equals_simulated_model(weights: str, acts: str | None, kind: str) -> None:
    model = tiny_model("llama")
    quantize_model(model, Recipe(weights=weights, acts=acts), CALIB, progress=False)
    packed = copy.deepcopy(model)
    kinds = pack_model(packed, keep_qtensor=False)
    assert set(kinds.values()) == {kind}
    assert all(m.weight is None for m in packed.modules() if isinstance(m, QLinear))
    simulated_ppl = perplexity(model, EVAL, 128).ppl
    packed_ppl = perplexity(packed, EVAL, 128).ppl
    assert packed_ppl == pytest.approx(simulated_ppl, rel=1e-3)
    with torch.no_grad():
        a = model(input_ids=EVAL[None, :64]).logits
        b = packed(input_ids=EVAL[None, :64]).logits
    assert (a - b).abs().max().item() < 1e-2 * a.abs().max().item()
