"""Every kernel against its pure-torch reference, on every ISA this CPU runs.

Reference: ``x @ q.dequantize().T`` in float32 (weight-only kinds), the same with ``x`` quantized per
token to INT8 first (``w8a8``/``w4a8``, :mod:`anybit.kernels.reference`). The tolerance is
``1e-4 * max|reference|`` absolute. The codebook kernel only changes the float summation order
(~1e-6 relative); the integer kernels' INT32 dot products are exact; ``intbp`` quantizes the
activations to 16-bit integers per block (documented in anybit.kernels.packed), ~2e-5 relative
here, and is also held tightly to the reference of that quantization and to its error bound.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import anybit
from anybit.errors import KernelError
from anybit.kernels import dispatch

pytestmark = pytest.mark.skipif(not dispatch.is_available(), reason=str(dispatch.EXTENSION_ERROR))

if dispatch.is_available():
    from anybit.kernels import DEQUANT_MIN_TOKENS, PackedLinearWeight, supported_isas, use_isa
    from anybit.kernels.reference import (
        matmul_int8_activations_reference,
        matmul_int16_activations_reference,
        matmul_reference,
        quantize_activations_int16,
    )

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
    ("int7:g64", "intbp"),
    ("int2bb:g32:asym", "intbp"),
    ("int4:tensor", "intbp"),
    ("int4:g64:scale=bf16", "intbp"),
    ("int2:g64:scale=fp16", "intbp"),
    ("int3:g32:asym:scale=fp16", "intbp"),
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


def _assert_close(y: torch.Tensor, ref: torch.Tensor, terms: torch.Tensor | None = None) -> None:
    """Within ``REL_TOL`` of the largest output, or of the largest ``sum_k |x_k w_k|`` (``terms``)
    where given: a single output that cancels to near zero (N = M = 1) would otherwise be held to
    an absolute error far below the 16-bit activation step of the terms that cancelled."""
    scale = float(ref.abs().max()) if terms is None else max(float(ref.abs().max()), float(terms.max()))
    torch.testing.assert_close(y, ref, rtol=0, atol=REL_TOL * max(scale, 1e-6))


@pytest.mark.parametrize(("scheme", "kind"), WEIGHT_ONLY)
def test_weight_only_kernels_match_reference(scheme: str, kind: str) -> None:
    for i, (n, k) in enumerate(SHAPES):
        q = anybit.quantize(_weight(n, k, i), scheme)
        packed = PackedLinearWeight.from_qtensor(q)
        assert packed.kind == kind
        for m in TOKENS:
            x = _x(m, k, 100 + m)
            ref = matmul_reference(q, x)
            terms = x.abs() @ q.dequantize().abs().T
            for isa in ISAS:
                with use_isa(isa):
                    _assert_close(packed.matmul(x), ref, terms)


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


@pytest.mark.parametrize("scheme", ["nf4", "bitmod4:g32"])
def test_many_tokens_take_the_dequantize_path(scheme: str) -> None:
    q = anybit.quantize(_weight(300, 64, 5), scheme)  # > one dequantization block of rows
    packed = PackedLinearWeight.from_qtensor(q)
    x = _x(DEQUANT_MIN_TOKENS + 3, 64, 6)
    for isa in ISAS:
        with use_isa(isa):
            _assert_close(packed.matmul(x), matmul_reference(q, x))
            torch.testing.assert_close(packed.dequantize(), q.dequantize(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scheme", ["int4:g32", "int3:g64:asym", "int8:channel"])
def test_intbp_many_tokens_and_dequantize(scheme: str) -> None:
    """intbp runs its own kernel at every M (token blocks of 4 and tile pairs, with tails)."""
    q = anybit.quantize(_weight(300, 128, 5), scheme)
    packed = PackedLinearWeight.from_qtensor(q)
    for m in (2, 5, DEQUANT_MIN_TOKENS + 3):
        x = _x(m, 128, m)
        for isa in ISAS:
            with use_isa(isa):
                _assert_close(packed.matmul(x), matmul_reference(q, x))
    for isa in ISAS:
        with use_isa(isa):
            torch.testing.assert_close(packed.dequantize(), q.dequantize(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "scheme", ["int2:g32", "int4:g64", "uint5:g32:asym", "int4:g32:asym=float", "int6:channel"]
)
def test_intbp_is_the_16bit_activation_product(scheme: str) -> None:
    """intbp = W @ x_q exactly up to float rounding (x_q: the 16-bit activations of
    reference.quantize_activations_int16), and |intbp - W @ x| <= 0.5 * |W| @ activation scale,
    whatever the cancellation in the outputs; the three ISAs agree bit for bit."""
    n, k = 70, 192
    q = anybit.quantize(_weight(n, k, 11), scheme)
    packed = PackedLinearWeight.from_qtensor(q)
    block = packed.activation_block
    w = q.dequantize()
    for m, seed in ((1, 1), (6, 2)):
        x = _x(m, k, seed)
        x[:, 5] *= 300  # an outlier activation only coarsens its own block
        outs = {}
        for isa in ISAS:
            with use_isa(isa):
                outs[isa] = packed.matmul(x)
        for y in outs.values():
            assert torch.equal(y, outs[ISAS[0]])
        y = outs[ISAS[0]]
        xp = torch.nn.functional.pad(x, (0, packed.k_pad - k))
        codes, scale = quantize_activations_int16(xp, block)
        x_q = (codes.float().reshape(m, -1, block) * scale.unsqueeze(-1)).reshape(m, -1)[:, :k]
        magnitude = x_q.abs() @ w.abs().T  # scale of the float rounding, immune to cancellation
        assert ((y - matmul_int16_activations_reference(q, x, block)).abs() <= 1e-5 * magnitude + 1e-6).all()
        step = scale.repeat_interleave(block, dim=1)[:, :k]  # each activation is off by <= step / 2
        bound = 0.5 * step @ w.abs().T
        assert ((y - matmul_reference(q, x)).abs() <= bound * (1 + 1e-3) + 1e-5 * magnitude).all()


@pytest.mark.parametrize("bits", range(1, 9))
def test_intbp_raw_binding_every_bit_width(bits: int) -> None:
    """Every field split (1..8 bits, incl. widths no number format uses) through the raw binding,
    with per-row offsets and with offset_mul, against codes * scales + offsets in torch."""
    from anybit.kernels.packing import pack_bitfields

    ext = dispatch.extension()
    n, k, g = 37, 256, 128
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, (n, k), generator=gen, dtype=torch.uint8)
    scales = torch.rand(n, k // g, generator=gen) + 0.5
    offsets = torch.randn(n, k // g, generator=gen)
    x = torch.randn(3, k, generator=gen)
    words = pack_bitfields(codes, bits)
    tiles = words.shape[0]

    def tiled(t: torch.Tensor) -> object:
        padded = torch.zeros(tiles * 16, t.shape[1])
        padded[:n] = t
        return padded.reshape(tiles, 16, -1).transpose(1, 2).contiguous().numpy()

    for offs, offset_mul in ((None, -float(1 << (bits - 1))), (offsets, 0.0)):
        o = offs if offs is not None else scales * offset_mul
        w = (codes.float().reshape(n, -1, g) * scales.unsqueeze(-1) + o.unsqueeze(-1)).reshape(n, k)
        ref = x @ w.T
        for isa in ISAS:
            y = torch.empty(3, n)
            tiled_o = None if offs is None else tiled(offs)
            ext.gemm_intbp(isa, x.numpy(), y.numpy(), words, bits, g, tiled(scales), tiled_o, offset_mul)
            _assert_close(y, ref)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("group", [32, 64, 128])
def test_intbp_gemv_every_bit_width_is_bit_identical_across_isas(bits: int, group: int) -> None:
    """M = 1 (the AVX-512 GEMV has its own tile loop for 1, 2, 4 and 8 bits): every width, 32- and
    64-column activation blocks, one or two blocks per group, fp32 and 16-bit scales, with and
    without offsets, a partial last tile; every ISA gives the same bits and matches torch."""
    from anybit.kernels.packing import pack_bitfields

    ext = dispatch.extension()
    n, k = 45, 256
    gen = torch.Generator().manual_seed(100 + bits)
    codes = torch.randint(0, 1 << bits, (n, k), generator=gen, dtype=torch.uint8)
    scales = (torch.rand(n, k // group, generator=gen) + 0.5).half().float()
    offsets = torch.randn(n, k // group, generator=gen).half().float()
    x = torch.randn(1, k, generator=gen)
    words = pack_bitfields(codes, bits)
    tiles = words.shape[0]

    def tiled(t: torch.Tensor, dtype: torch.dtype) -> object:
        padded = torch.zeros(tiles * 16, t.shape[1], dtype=dtype)
        padded[:n] = t.to(dtype)
        out = padded.reshape(tiles, 16, -1).transpose(1, 2).contiguous().numpy()
        return out.view("uint16") if dtype == torch.float16 else out

    for scale_dtype, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        for offs, offset_mul in ((None, -float(1 << (bits - 1))), (offsets, 0.0)):
            o = offs if offs is not None else scales * offset_mul
            w = (codes.float().reshape(n, -1, group) * scales.unsqueeze(-1) + o.unsqueeze(-1)).reshape(n, k)
            outs = []
            for isa in ISAS:
                y = torch.empty(1, n)
                tiled_o = None if offs is None else tiled(offs, dtype)
                ext.gemm_intbp(
                    isa,
                    x.numpy(),
                    y.numpy(),
                    words,
                    bits,
                    group,
                    tiled(scales, dtype),
                    tiled_o,
                    offset_mul,
                    scale_dtype=scale_dtype,
                )
                outs.append(y)
            for y in outs[1:]:
                assert torch.equal(y, outs[0])
            _assert_close(outs[0], x @ w.T)


def test_intbp_special_activations() -> None:
    q = anybit.quantize(_weight(20, 128, 3), "int4:g64")
    packed = PackedLinearWeight.from_qtensor(q)
    zero = torch.zeros(2, 128)
    x = _x(2, 128, 4)
    x[1, 70] = float("inf")  # second block of token 1
    for isa in ISAS:
        with use_isa(isa):
            assert torch.equal(packed.matmul(zero), torch.zeros(2, 20))
            y = packed.matmul(x)
            assert torch.isfinite(y[0]).all() and not torch.isfinite(y[1]).any()
            _assert_close(y[0], matmul_reference(q, x[:1])[0])


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


@pytest.mark.parametrize(
    ("scheme", "magnitude", "dtype"),
    [
        ("int2:g64:scale=fp16", 1.0, "fp16"),
        ("int4:g64:scale=bf16", 1.0, "fp16"),  # these bf16 values are exact float16 values too
        ("int4:g64:scale=bf16", 1e6, "bf16"),  # beyond float16's range
        ("int2:g64", 1.0, "fp32"),
    ],
)
def test_intbp_stores_16bit_scales_when_exact(scheme: str, magnitude: float, dtype: str) -> None:
    n, k = 64, 256
    q = anybit.quantize(_weight(n, k, 2) * magnitude, scheme)
    packed = PackedLinearWeight.from_qtensor(q)
    assert packed.scale_dtype == dtype
    scale_bytes = 4 if dtype == "fp32" else 2
    assert packed.nbytes == n * k * q.scheme.number_format.bits // 8 + n * (k // 64) * scale_bytes
    x = _x(3, k, 1)
    for isa in ISAS:
        with use_isa(isa):
            _assert_close(packed.matmul(x), matmul_reference(q, x))
            torch.testing.assert_close(packed.dequantize(), q.dequantize(), rtol=1e-6, atol=1e-6 * magnitude)


def test_intbp_fp16_scales_widen_exactly() -> None:
    """Subnormal, tiny, huge and negative float16 scales: the three ISAs' widening is exact."""
    ext = dispatch.extension()
    values = torch.tensor([6e-8, 3e-5, 1e-3, 0.5, 1.0, 65504.0, 2.0**-14, -0.75] * 2, dtype=torch.float16)
    scales = values.reshape(1, 1, 16)  # one tile, one group
    words = torch.zeros(1, 1, 1, 16, dtype=torch.int32).numpy().view("uint32")
    for isa in ISAS:
        y = torch.empty(16, 32)
        ext.gemm_intbp(
            isa,
            torch.empty(0, 32).numpy(),
            y.numpy(),
            words,
            1,
            32,
            scales.numpy().view("uint16"),
            None,
            1.0,
            dequant=True,
            scale_dtype="fp16",
        )  # codes 0, offset_mul 1: every weight is its row's scale
        assert torch.equal(y[:, 0], values.float())


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
    with pytest.raises(ValueError, match="uint16"):  # float32 scales announced as float16
        ext.gemm_intbp("scalar", x, y, packed.codes, 4, 32, packed.scales, None, -8.0, scale_dtype="fp16")
    with pytest.raises(ValueError, match="scale_dtype"):
        ext.gemm_intbp("scalar", x, y, packed.codes, 4, 32, packed.scales, None, -8.0, scale_dtype="fp8")


def test_kernel_bench_report_structure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark's JSON (small shape, few calls: structure only, timings are the bench's job)."""
    import json

    from anybit.kernels import bench

    monkeypatch.setattr(bench, "BANDWIDTH_BYTES", 4 * 2**20)
    monkeypatch.setattr(bench, "BANDWIDTH_CHUNK_BYTES", 2**20)
    monkeypatch.setattr(bench, "ROTATE_BYTES", 2**20)
    monkeypatch.setattr(bench, "REPEATS", {1: 3})
    out = tmp_path / "k.json"
    kernels = ("int4", "int2", "w8a8")
    report = bench.run_kernel_bench(str(out), shapes=((48, 128),), tokens=(1,), kernels=kernels)
    assert json.loads(out.read_text())["bandwidth_gbs"] == report["bandwidth_gbs"] > 0
    rows = {r["kernel"]: r for r in report["results"]}
    assert set(rows) == {"int4", "int2", "w8a8"}
    # packed bytes: 4-bit codes + fp32 scales per 64 columns, and half the code bytes at 2 bits
    assert rows["int4"]["weight_bytes"] == 48 * 128 // 2 + 48 * 2 * 4
    assert rows["int2"]["weight_bytes"] == 48 * 128 // 4 + 48 * 2 * 4
    assert report["paired"] == {}  # only at the 4096x4096 target shape
    assert all(t["value"] is None for t in report["targets"].values())  # no 4096x4096 rows
    # the 128-column-group kernels are skipped where 128 does not divide K
    skipped = bench.run_kernel_bench(shapes=((16, 192), (16, 256)), tokens=(1,), kernels=("int4_g128",))
    assert [(r["n"], r["k"]) for r in skipped["results"]] == [(16, 256)]


def test_paired_ratio_times_both_kernels_every_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """Paired W2/W4: one ratio per round, each from calls of both kernels in alternation."""
    from anybit.kernels import bench

    monkeypatch.setattr(bench, "REPEATS", {1: 5})
    monkeypatch.setattr(bench, "PAIRED_ROUNDS", 3)
    monkeypatch.setattr(bench, "ROTATE_BYTES", 4096)
    calls: list[str] = []
    real_case = bench._anybit_case

    def counting_case(name: str, w: torch.Tensor, x: torch.Tensor) -> tuple[list, int]:
        fns, nbytes = real_case(name, w, x)
        return [lambda fn=fn: (calls.append(name), fn())[1] for fn in fns], nbytes

    monkeypatch.setattr(bench, "_anybit_case", counting_case)
    result = bench.paired_ratio("int4", "int2", 32, 128)
    assert len(result["rounds"]) == 3 and all(r > 0 for r in result["rounds"])
    assert result["min"] <= result["value"] <= result["max"]
    # the value is the geometric mean of the two orders' medians (rounds 0, 2 and round 1)
    slow_first = sorted(result["rounds"][0::2])
    assert result["slow_first"] == pytest.approx(sum(slow_first) / 2)
    assert result["fast_first"] == result["rounds"][1]
    assert result["value"] == pytest.approx((result["slow_first"] * result["fast_first"]) ** 0.5)
    # per round: one warm-up each, then 5 alternating pairs (round 1 starts with int2)
    round0, round1 = calls[:12], calls[12:24]
    assert round0 == ["int4", "int2"] * 6 and round1 == ["int2", "int4"] * 6


def test_read_probe_sums_every_word_on_every_isa() -> None:
    """The bandwidth probe must really read the whole buffer (its sum is checked, so no ISA path can
    skip or double-count a line); odd lengths exercise the tail."""
    import numpy as np

    words = np.random.default_rng(0).integers(0, 2**62, size=32 * 1000 + 7, dtype=np.uint64)
    expected = int(words.sum(dtype=np.uint64))
    for isa in ISAS:
        assert dispatch.extension().read_probe(words, isa) == expected
