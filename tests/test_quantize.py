"""quantize / fake_quantize / QTensor: exactness, shared-scale specs, bits/weight, scale search, errors."""

from __future__ import annotations

import itertools
import math

import ml_dtypes
import numpy as np
import pytest
import torch

import anybit
from anybit.errors import InputError, SchemeError, ShapeError
from anybit.qtensor import QTensor
from anybit.scales import DUAL_MAX

SCHEMES = [
    "int4:g64",
    "int4:g64:asym",
    "int3:g32:asym",
    "int2:g32:asym",
    "int8:channel",
    "int8:token",
    "int8:tensor",
    "uint4:g32:asym=float:scale=fp16",
    "int4:g64:scale=bf16",
    "fp4_e2m1:g32",
    "fp4_e2m1:g32:asym",
    "fp8_e4m3:channel",
    "fp8_e5m2:tensor",
    "fp6_e3m2:g32",
    "fp5_e2m2:g32",
    "nf4",
    "nf3:g64",
    "dint4:g64",
    "bitmod4:g64:scale=fp16",
    "bitmod3:g32",
    "int2bb:g32:asym",
    "int4:b16x32",
    "mxfp4",
    "mxfp6_e2m3",
    "mxfp8_e4m3",
    "mxint8",
    "nvfp4",
    "int4:g64:dual",
    "int4:g64:dual:asym",
    "int4:g32:clip=mse",
    "int3:g32:asym:clip=mse",
    "int8:token:clip=p99",
    "fp4_e2m1:g32:clip=0.9",
]


def _weight(rows: int = 48, cols: int = 192, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen) * 0.05
    w[3, 7] = 0.9  # an outlier, as real weights have
    w[5, :] = 0.0  # an all-zero row: scales must not divide by zero
    return w


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fake_quantize_equals_dequantize_of_quantize(scheme: str) -> None:
    w = _weight()
    q = anybit.quantize(w, scheme)
    assert isinstance(q, QTensor) and q.codes.dtype == torch.uint8 and q.shape == tuple(w.shape)
    assert torch.equal(anybit.fake_quantize(w, scheme), q.dequantize())
    assert torch.all(q.dequantize()[5] == 0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantization_is_deterministic_and_values_are_on_the_grid(scheme: str) -> None:
    w = _weight(seed=1)
    a, b = anybit.quantize(w, scheme), anybit.quantize(w, scheme)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.dequantize(), b.dequantize())
    # re-quantizing a dequantized tensor with its own scales changes nothing: values are on the grid
    rel = (a.dequantize() - w).norm() / w.norm()
    assert rel < 0.6  # sanity: quantization error is bounded even at 2 bits


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_keep_their_dtype(dtype: torch.dtype) -> None:
    w = _weight().to(dtype)
    out = anybit.fake_quantize(w, "int4:g64")
    assert out.dtype == dtype
    assert torch.equal(out, anybit.quantize(w, "int4:g64").dequantize(dtype))


def test_error_falls_with_bits() -> None:
    w = _weight(256, 256, seed=2)
    errors = [(anybit.fake_quantize(w, f"int{k}:g64") - w).norm().item() for k in range(2, 9)]
    assert all(a > b for a, b in itertools.pairwise(errors))


def test_mse_clipping_never_loses_to_minmax_per_group() -> None:
    w = _weight(64, 256, seed=3)
    for base, group in (
        ("int3:g32", 32),
        ("int4:g64:asym", 64),
        ("fp4_e2m1:g32", 32),
        ("nf4:g64:scale=fp32", 64),
    ):
        minmax = (anybit.fake_quantize(w, base) - w).reshape(64, -1, group).square().sum(-1)
        mse = (anybit.fake_quantize(w, base + ":clip=mse") - w).reshape(64, -1, group).square().sum(-1)
        assert torch.all(mse <= minmax * (1 + 1e-5))
        assert mse.sum() < 0.97 * minmax.sum()  # and it really helps on Gaussian weights


def test_percentile_clipping_ignores_outliers() -> None:
    x = torch.randn(4, 4096, generator=torch.Generator().manual_seed(4))
    x[:, 0] = 100.0
    full = anybit.quantize(x, "int8:token").effective_scales()
    clipped = anybit.quantize(x, "int8:token:clip=p99").effective_scales()
    assert torch.all(clipped < full / 10)


def test_symmetric_scale_is_the_smallest_that_clips_nothing() -> None:
    w = torch.tensor([[-8.0, 1.0, 2.0, 3.0], [7.0, -1.0, 0.5, 0.0]])
    q = anybit.quantize(w, "int4:channel")
    assert q.effective_scales().flatten().tolist() == [1.0, 1.0]  # -8 -> level -8, 7 -> level 7
    assert torch.equal(q.dequantize(), torch.tensor([[-8.0, 1.0, 2.0, 3.0], [7.0, -1.0, 0.0, 0.0]]))


def test_integer_zero_point_makes_zero_exact_and_uses_the_full_grid() -> None:
    w = torch.linspace(-0.1, 1.4, 64).reshape(1, 64)
    q = anybit.quantize(w, "uint4:channel:asym")
    deq = q.dequantize()
    assert deq.min().item() == pytest.approx(-0.1, abs=0.05) and deq.max().item() == pytest.approx(
        1.4, abs=0.05
    )
    assert q.codes.min().item() == 0 and q.codes.max().item() == 15
    assert anybit.fake_quantize(torch.zeros(1, 8), "uint4:channel:asym").abs().max().item() == 0


# ----- shared-scale formats against independent implementations of their specs ----------------
def _mx_reference(x: np.ndarray, element: type, emax: int, element_max: float) -> np.ndarray:
    """OCP MX v1.0 (section 6.3): X = 2^(floor(log2 amax) - emax); P = cast(clip(V / X)); V' = P X."""
    blocks = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    shared = np.exp2(np.floor(np.log2(np.where(amax > 0, amax, 2.0**-127))) - emax).astype(np.float32)
    scaled = np.clip(blocks / shared, -element_max, element_max)
    return (scaled.astype(element).astype(np.float32) * shared).reshape(x.shape)


@pytest.mark.parametrize(
    ("preset", "element", "emax", "element_max"),
    [
        ("mxfp4", ml_dtypes.float4_e2m1fn, 2, 6.0),
        ("mxfp6_e3m2", ml_dtypes.float6_e3m2fn, 4, 28.0),
        ("mxfp6_e2m3", ml_dtypes.float6_e2m3fn, 2, 7.5),
        ("mxfp8_e4m3", ml_dtypes.float8_e4m3fn, 8, 448.0),
    ],
)
def test_mx_shared_scale_follows_the_spec(preset: str, element: type, emax: int, element_max: float) -> None:
    w = _weight(16, 128, seed=5)
    ours = anybit.fake_quantize(w, preset).numpy()
    np.testing.assert_array_equal(ours, _mx_reference(w.numpy(), element, emax, element_max))
    q = anybit.quantize(w, preset)
    assert q.scales.dtype == torch.float8_e8m0fnu  # stored as E8M0


def test_mxint8_scale_is_power_of_two_with_emax_6() -> None:
    w = _weight(8, 64, seed=6)
    q = anybit.quantize(w, "mxint8")
    scales = q.effective_scales()
    amax = w.abs().reshape(8, 2, 32).amax(-1)
    expected = torch.exp2((torch.floor(torch.log2(amax)) - 6).clamp(min=-127))  # all-zero block: 2^-127
    assert torch.equal(scales, expected)


def test_nvfp4_follows_the_recipe() -> None:
    """Tensor scale amax/(6*448) in fp32; block scale e4m3(amax_b / 6 / S); elements e2m1(x / (b S))."""
    w = _weight(16, 64, seed=7).numpy()
    tensor_scale = np.float32(np.abs(w).max() / (6.0 * 448.0))
    blocks = w.reshape(-1, 16)
    block_scale = (np.abs(blocks).max(axis=1, keepdims=True) / 6.0 / tensor_scale).astype(
        ml_dtypes.float8_e4m3fn
    )
    effective = block_scale.astype(np.float32) * tensor_scale
    safe = np.where(effective > 0, effective, 1.0)
    elements = np.clip(blocks / safe, -6, 6).astype(ml_dtypes.float4_e2m1fn).astype(np.float32)
    reference = (elements * effective).reshape(w.shape)
    ours = anybit.fake_quantize(torch.from_numpy(w), "nvfp4").numpy()
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-9)
    q = anybit.quantize(torch.from_numpy(w), "nvfp4")
    assert isinstance(q.scales, QTensor) and q.scales.scheme.format == "fp8_e4m3"
    assert q.scales.scales.item() == pytest.approx(float(tensor_scale), rel=1e-6)


def test_dual_grained_int4_dequantizes_to_int8_times_a_channel_scale() -> None:
    w = _weight(32, 256, seed=8)
    for scheme in ("int4:g64:dual", "int4:g64:dual:asym", "int4:g64:dual:clip=mse"):
        q = anybit.quantize(w, scheme)
        assert isinstance(q.scales, QTensor)
        s2 = q.scales.codes.float()  # integer group scales
        assert s2.min() >= 1 and s2.max() <= DUAL_MAX
        channel = q.scales.scales.float()  # [rows, 1] fp32
        levels = q.levels_of_codes()
        if q.zeros is not None:
            levels = levels - anybit.get_format("int4").decode(q.zeros).unsqueeze(-1)
        int8_weight = levels * s2.unsqueeze(-1)
        assert torch.all(int8_weight.abs() <= 127) and torch.equal(int8_weight, torch.round(int8_weight))
        rebuilt = (int8_weight * channel.unsqueeze(-1)).reshape(w.shape)
        torch.testing.assert_close(rebuilt, q.dequantize(), rtol=1e-6, atol=0)


def test_dgq_two_phase_search_beats_minmax_dual_scales() -> None:
    w = torch.randn(64, 512, generator=torch.Generator().manual_seed(9)) * 0.02
    minmax = (anybit.fake_quantize(w, "int4:g128:dual:asym") - w).square().sum()
    searched = (anybit.fake_quantize(w, "int4:g128:dual:asym:clip=mse") - w).square().sum()
    assert searched < 0.95 * minmax


def test_bitmod_picks_the_member_with_least_error_per_group() -> None:
    w = torch.randn(4, 128, generator=torch.Generator().manual_seed(10)) * 0.01
    w[0, 5] = 0.2  # a positive outlier in group (0, 0): extra asymmetry (+8) should win there
    w[1, 70] = -0.2  # a negative outlier in group (1, 1): -8 should win
    q = anybit.quantize(w, "bitmod4:g64")
    assert q.type_ids is not None and q.type_ids.shape == (4, 2)
    assert q.type_ids[0, 0].item() == 2 and q.type_ids[1, 1].item() == 3
    family = anybit.get_format("bitmod4")
    per_member = []
    for member in family.members:
        g = w.reshape(4, 2, 64)
        s = torch.maximum(
            g.amax(-1).clamp(min=0) / member.max_level, g.amin(-1).clamp(max=0) / member.min_level
        )
        err = (member.round(g / s.unsqueeze(-1)) * s.unsqueeze(-1) - g).square().sum(-1)
        per_member.append(err)
    assert torch.equal(q.type_ids.long(), torch.stack(per_member).argmin(0))


# ----- bits per weight, written out by hand -------------------------------------------------------
@pytest.mark.parametrize(
    ("scheme", "rows", "cols", "bpw"),
    [
        ("int4:g128", 256, 1024, 4 + 32 / 128),
        ("int4:g64:asym", 256, 1024, 4 + 32 / 64 + 4 / 64),
        ("uint4:g32:asym=float:scale=fp16", 256, 1024, 4 + 16 / 32 + 16 / 32),  # llama.cpp Q4_1: 5.0
        ("int8:channel", 256, 1024, 8 + 32 / 1024),
        ("int8:tensor", 256, 1024, 8 + 32 / (256 * 1024)),
        ("mxfp4", 256, 1024, 4 + 8 / 32),
        ("mxfp6_e3m2", 256, 1024, 6 + 8 / 32),
        ("mxfp6_e2m3", 256, 1024, 6 + 8 / 32),
        ("mxfp8_e4m3", 256, 1024, 8 + 8 / 32),
        ("mxint8", 256, 1024, 8 + 8 / 32),
        ("nvfp4", 256, 1024, 4 + 8 / 16 + 32 / (256 * 1024)),
        # bitsandbytes-style NF4: 4 bits + per 64: an 8-bit scale code; per 256 scales: fp32 scale and offset
        ("nf4", 256, 1024, 4 + (8 + 64 / 256) / 64),
        ("int4:g128:dual", 256, 1024, 4 + 8 / 128 + 32 / 1024),
        ("int4:g128:dual:asym", 256, 1024, 4 + 8 / 128 + 4 / 128 + 32 / 1024),
        ("bitmod4:g128:scale=fp16", 256, 1024, 4 + 16 / 128 + 2 / 128),
        ("bitmod3:g128:scale=fp16", 256, 1024, 3 + 16 / 128 + 2 / 128),
        ("dint4:g64:scale=fp16", 256, 1024, 4 + 16 / 64),
        ("int2bb:g64:asym", 256, 1024, 3 + 32 / 64 + 3 / 64),  # bit balance is stored in 3 bits
        ("int4:b64x64", 256, 1024, 4 + 32 / 4096),
    ],
)
def test_bits_per_weight_by_hand(scheme: str, rows: int, cols: int, bpw: float) -> None:
    q = anybit.quantize(torch.randn(rows, cols) * 0.02, scheme)
    assert q.bits_per_weight == pytest.approx(bpw, rel=0, abs=1e-12)
    assert q.nbytes == math.ceil(bpw * rows * cols / 8)


# ----- errors -------------------------------------------------------------------------------------
def test_group_size_that_does_not_divide_lists_valid_sizes() -> None:
    with pytest.raises(ShapeError) as err:
        anybit.quantize(torch.randn(4, 576), "int4:g128", name="model.layers.0.mlp.up_proj")
    message = str(err.value)
    assert (
        "model.layers.0.mlp.up_proj" in message and "576" in message and "64" in message and "192" in message
    )


def test_bad_inputs_raise_anybit_errors() -> None:
    with pytest.raises(InputError, match="NaN"):
        anybit.quantize(torch.tensor([[1.0, float("nan")]]), "int4:channel", name="w")
    with pytest.raises(InputError, match="Inf"):
        anybit.fake_quantize(torch.tensor([[float("inf"), 1.0]]), "int8:token")
    with pytest.raises(InputError, match="empty"):
        anybit.quantize(torch.empty(0, 64), "int4:g64")
    with pytest.raises(InputError, match="dtype"):
        anybit.quantize(torch.ones(2, 64, dtype=torch.int32), "int4:g64")
    with pytest.raises(SchemeError, match="scheme string"):
        anybit.quantize(torch.ones(2, 64), "int4:g64:what")
    with pytest.raises(SchemeError, match=r"torch\.Tensor"):
        anybit.quantize([[1.0, 2.0]], "int4:g64")  # type: ignore[arg-type]


def test_one_dimensional_and_higher_rank_tensors() -> None:
    v = torch.randn(128)
    assert torch.equal(anybit.fake_quantize(v, "int8:g32"), anybit.quantize(v, "int8:g32").dequantize())
    x = torch.randn(2, 3, 64)
    q = anybit.quantize(x, "int8:token")
    assert q.scales.shape == (6, 1) and q.dequantize().shape == (2, 3, 64)
