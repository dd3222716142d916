"""Every kernel against its pure-torch reference, on every ISA this CPU runs.

Reference: ``x @ q.dequantize().T`` in float32 (weight-only kinds), the same with ``x`` quantized per
token to INT8 first (``w8a8``/``w4a8``, :mod:`anybit.kernels.reference`). The kernels only change
the float summation order, so the tolerance is ``1e-4 * max|reference|`` absolute (observed errors
are ~1e-6 relative); the integer kernels' INT32 dot products are exact.
"""

from __future__ import annotations

import os

import pytest
import torch

import anybit
from anybit.errors import KernelError
from anybit.kernels import dispatch

pytestmark = pytest.mark.skipif(not dispatch.is_available(), reason=str(dispatch.EXTENSION_ERROR))

if dispatch.is_available():
    from anybit.kernels import DEQUANT_MIN_TOKENS, PackedLinearWeight, supported_isas, use_isa
    from anybit.kernels.reference import matmul_int8_activations_reference, matmul_reference

    ISAS = supported_isas()
else:  # collected but skipped
    ISAS = ("scalar",)

REL_TOL = 1e-4

# (scheme, activations, expected kind); shapes below are chosen so every group size divides K
WEIGHT_ONLY = [
    ("int2:g32", "intbp"),
    ("int3:g64:asym", "intbp"),
    ("int4:g64", "intbp"),
    ("int4:g32:asym=float", "intbp"),
    ("uint5:g32:asym", "intbp"),
    ("int6:channel", "intbp"),
    ("int8:g64", "intbp"),
    ("int2bb:g32:asym", "intbp"),
    ("int4:tensor", "intbp"),
    ("int4:g64:scale=bf16", "intbp"),
    ("fp4_e2m1:g32", "codebook"),
    ("nf4", "codebook"),
    ("nvfp4", "codebook"),
    ("mxfp4", "codebook"),
    ("dint4:g64", "codebook"),
    ("dint3:g32:asym", "codebook"),
    ("bitmod4:g64", "codebook"),
    ("bitmod3:g32", "codebook"),
    ("fp3_e1m1:channel", "codebook"),
]
INT8_ACTIVATIONS = [
    ("int8:channel", "w8a8"),
    ("int8b:channel", "w8a8"),
    ("int8:g32:asym", "w8a8"),
    ("uint8:tensor:asym", "w8a8"),
    ("int4:g64:dual", "w4a8"),
    ("int4:g32:dual:asym", "w4a8"),
    ("int3:g32:dual", "w4a8"),
]
SHAPES = [(1, 64), (37, 128), (16, 192), (70, 64)]  # (N, K): odd N, K a multiple of every group
TOKENS = [1, 3, 6]


def _weight(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    w[:, :3] *= 4  # a few outlier columns
    return w


def _x(m: int, k: int, seed: int) -> torch.Tensor:
    return torch.randn(m, k, generator=torch.Generator().manual_seed(seed))


def _assert_close(y: torch.Tensor, ref: torch.Tensor) -> None:
    atol = REL_TOL * max(float(ref.abs().max()), 1e-6)
    torch.testing.assert_close(y, ref, rtol=0, atol=atol)


@pytest.mark.parametrize(("scheme", "kind"), WEIGHT_ONLY)
def test_weight_only_kernels_match_reference(scheme: str, kind: str) -> None:
    for i, (n, k) in enumerate(SHAPES):
        q = anybit.quantize(_weight(n, k, i), scheme)
        packed = PackedLinearWeight.from_qtensor(q)
        assert packed.kind == kind
        for m in TOKENS:
            x = _x(m, k, 100 + m)
            ref = matmul_reference(q, x)
            for isa in ISAS:
                with use_isa(isa):
                    _assert_close(packed.matmul(x), ref)


@pytest.mark.parametrize(("scheme", "kind"), INT8_ACTIVATIONS)
def test_int8_activation_kernels_match_reference(scheme: str, kind: str) -> None:
    for i, (n, k) in enumerate(SHAPES):
        q = anybit.quantize(_weight(n, k, i), scheme)
        packed = PackedLinearWeight.from_qtensor(q, activations="int8")
        assert packed.kind == kind
        for m in TOKENS:
            x = _x(m, k, 200 + m)
            ref = matmul_int8_activations_reference(q, x)
            for isa in ISAS:
                with use_isa(isa):
                    _assert_close(packed.matmul(x), ref)
        # and INT8 activations stay close to the float reference (~1% of the output range)
        x = _x(4, k, 7)
        torch.testing.assert_close(
            packed.matmul(x),
            matmul_reference(q, x),
            rtol=0,
            atol=0.02 * float(matmul_reference(q, x).abs().max()),
        )


@pytest.mark.parametrize("scheme", ["int4:channel", "int3:channel", "fp4_e2m1:channel", "int8:channel"])
def test_odd_input_features_are_padded(scheme: str) -> None:
    q = anybit.quantize(_weight(19, 45, 3), scheme)
    activations = "int8" if scheme.startswith("int8") else "fp32"
    packed = PackedLinearWeight.from_qtensor(q, activations=activations)
    assert packed.k_pad % 32 == 0 and packed.k_pad > 45
    x = _x(5, 45, 4)
    reference = matmul_int8_activations_reference if activations == "int8" else matmul_reference
    for isa in ISAS:
        with use_isa(isa):
            _assert_close(packed.matmul(x), reference(q, x))


@pytest.mark.parametrize("scheme", ["int4:g32", "nf4", "bitmod4:g32"])
def test_many_tokens_take_the_dequantize_path(scheme: str) -> None:
    q = anybit.quantize(_weight(300, 64, 5), scheme)  # > one dequantization block of rows
    packed = PackedLinearWeight.from_qtensor(q)
    x = _x(DEQUANT_MIN_TOKENS + 3, 64, 6)
    for isa in ISAS:
        with use_isa(isa):
            _assert_close(packed.matmul(x), matmul_reference(q, x))
            torch.testing.assert_close(packed.dequantize(), q.dequantize(), rtol=1e-6, atol=1e-6)


def test_batched_input_keeps_leading_dims() -> None:
    q = anybit.quantize(_weight(24, 64, 1), "int4:g32")
    packed = PackedLinearWeight.from_qtensor(q)
    x = torch.randn(2, 3, 64)
    y = packed.matmul(x)
    assert y.shape == (2, 3, 24)
    _assert_close(y.reshape(6, 24), matmul_reference(q, x.reshape(6, 64)))


def test_nbytes_counts_packed_buffers() -> None:
    n, k = 64, 256
    q = anybit.quantize(_weight(n, k, 2), "int4:g64")
    packed = PackedLinearWeight.from_qtensor(q)
    assert packed.nbytes == n * k // 2 + n * (k // 64) * 4  # nibbles of codes + fp32 scales
    q2 = anybit.quantize(_weight(n, k, 2), "int2:g64")
    assert PackedLinearWeight.from_qtensor(q2).nbytes == n * k // 4 + n * (k // 64) * 4


# ----- dispatch ---------------------------------------------------------------------------------
def test_env_var_forces_isa(monkeypatch: pytest.MonkeyPatch) -> None:
    for isa in ISAS:
        monkeypatch.setenv(dispatch.ISA_ENV, isa)
        assert dispatch.active_isa() == isa
    monkeypatch.setenv(dispatch.ISA_ENV, "sse9")
    with pytest.raises(KernelError, match="unknown ISA"):
        dispatch.active_isa()
    monkeypatch.delenv(dispatch.ISA_ENV)
    assert dispatch.active_isa() == ISAS[0]


def test_use_isa_overrides_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dispatch.ISA_ENV, ISAS[0])
    with use_isa("scalar"):
        assert dispatch.active_isa() == "scalar"
    assert dispatch.active_isa() == ISAS[0]


@pytest.mark.skipif(os.environ.get(dispatch.ISA_ENV) is not None, reason="ANYBIT_ISA is set")
def test_best_isa_is_default() -> None:
    assert dispatch.active_isa() == ISAS[0]
    assert ISAS[-1] == "scalar"


# ----- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scheme", "activations", "match"),
    [
        ("fp8_e4m3:channel", "fp32", "codebook kernels take <= 4 bits"),
        ("int4:b4x32", "fp32", "block scales"),
        ("int4:g16", "fp32", "not a multiple of 32"),
        ("nf4:g8", "fp32", "not a multiple of 16"),
        ("fp4_e2m1:g32", "int8", "INT8 activations run with"),
        ("int8:g32:asym=float", "int8", "float offset"),
    ],
)
def test_unsupported_combinations_name_the_supported_ones(scheme: str, activations: str, match: str) -> None:
    q = anybit.quantize(_weight(16, 64, 0), scheme)
    with pytest.raises(KernelError, match=match) as info:
        PackedLinearWeight.from_qtensor(q, activations=activations)  # type: ignore[arg-type]
    assert "intbp" in str(info.value) and "w4a8" in str(info.value)


def test_explicit_kind_is_checked() -> None:
    q = anybit.quantize(_weight(16, 64, 0), "int4:g32")
    with pytest.raises(KernelError, match="dual-grained"):
        PackedLinearWeight.from_qtensor(q, kind="w4a8")
    with pytest.raises(KernelError, match="unknown kernel kind"):
        PackedLinearWeight.from_qtensor(q, kind="gguf")  # type: ignore[arg-type]
    assert PackedLinearWeight.from_qtensor(q, kind="codebook").kind == "codebook"


def test_bad_activations_are_clear_errors() -> None:
    packed = PackedLinearWeight.from_qtensor(anybit.quantize(_weight(16, 64, 0), "int4:g32"))
    with pytest.raises(KernelError, match=r"needs x \[\.\.\., 64\]"):
        packed.matmul(torch.randn(2, 63))
    with pytest.raises(KernelError, match="not contiguous"):
        packed.matmul(torch.randn(64, 2).T)
    with pytest.raises(KernelError, match="float32"):
        packed.matmul(torch.randn(2, 64, dtype=torch.float64))
    with pytest.raises(KernelError, match="QTensor"):
        PackedLinearWeight.from_qtensor(torch.zeros(2, 2))  # type: ignore[arg-type]


def test_raw_binding_rejects_wrong_buffers() -> None:
    ext = dispatch.extension()
    packed = PackedLinearWeight.from_qtensor(anybit.quantize(_weight(16, 64, 0), "int4:g32"))
    x = torch.randn(1, 64).numpy()
    y = torch.empty(1, 16).numpy()
    with pytest.raises(ValueError, match="elements"):
        ext.gemm_intbp("scalar", x, y, packed.codes[:, :1].copy(), 4, 32, packed.scales, None, -8.0)
    with pytest.raises(TypeError):  # float64 output is not silently converted
        ext.gemm_intbp("scalar", x, y.astype("float64"), packed.codes, 4, 32, packed.scales, None, -8.0)
