"""``PackedLinearWeight``: a linear layer's quantized weight in kernel layout, and its matmul.

``PackedLinearWeight.from_qtensor(q)`` picks the kernel from the QTensor's scheme and packs the
codes once; ``packed.matmul(x)`` computes ``x @ W.T`` for ``x`` [..., K] (float32) with the
compiled kernels. Kernels (``kind``) and what they accept:

=============  ====================================================================================
kind           schemes
=============  ====================================================================================
``intbp``      weight-only; uniform integer formats of 1..8 bits (int{k}, uint{k}, int{k}b, int2bb),
               granularity tensor/channel (any K) or group g with g % 32 == 0; zero point none, int
               or float; any scale format (the effective scales are stored as float32, or as
               float16/bfloat16 when every scale and offset is exactly representable, e.g.
               ``scale=fp16``). Bit-field codes (b/8 bytes per weight) times 16-bit integer
               activations (below), INT32 vpdpbusd sums: cost falls with the bit-width.
``codebook``   weight-only; any format or family of <= 4 bits (fp4_e2m1, nf4, dint4, bitmod3/4,
               int4, ...), granularity tensor/channel or group g with g % 16 == 0; zero point none,
               int (integer formats) or float; any scale format (nvfp4, mxfp4, nf4 double-quant).
``w8a8``       activations quantized per token to INT8 at run time; 8-bit integer formats
               (int8, int8b, uint8), granularity tensor/channel or group g with g % 32 == 0, zero
               point none or int. INT8 x INT8 -> INT32 (vpdpbusd), float rescale per group/channel
               and per token.
``w4a8``       activations INT8 as above; DGQ dual-grained schemes (``int4:g128:dual``, g % 32 == 0,
               integer formats of <= 4 bits, zero point none or int): INT4 codes times the INT8
               group scales become INT8 weights on the fly, one INT32 sum per row, then the fp32
               channel scale and the token scale.
=============  ====================================================================================

Default choice (``activations="fp32"``): integer formats -> ``intbp``, other formats of <= 4 bits
-> ``codebook``. With ``activations="int8"``: 8-bit integers -> ``w8a8``, dual schemes -> ``w4a8``.
An explicit ``kind=`` overrides. Anything else is a :class:`~anybit.errors.KernelError` that lists
this table.

``intbp`` activations (an approximation, documented here because it is one): each call quantizes
``x`` per token and per block of 64 columns (32 when the group size is not a multiple of 64) to
integers ``q`` in [-32639, 32639], ``scale = absmax(block) / 32639``, round half to even, so every
activation is off by at most ``scale / 2`` (2^-16 of its block's absmax). The kernel then computes
``x_q @ W.T`` exactly in integers (float only for the per-block and per-group rescale), with ``W``
the dequantized weight and ``x_q`` the quantized activations: the error against the float
reference is ``W @ (x_q - x)``, bounded by ``0.5 * sum_k |W[n, k]| * scale(k)``; on random data
it is 2-3e-5 of the largest output (the tests hold every ISA to 1e-4 of it, and all ISAs give
bit-identical results). The bound scales with ``|W| @ |x|``, not with the output: an output that
cancels to near zero can be off by more than 1e-4 of itself. Why: an exact float kernel needs a
table lookup + add or an FMA per 16 weights and is compute-bound at the memory bandwidth for <= 4
bits, while the integer form needs one vpdpbusd per 32 weights; a 2^-16 relative activation error
is far below the weights' own quantization error (and below bf16 activations' 2^-9). ``intbp``
runs its own kernel for every M: it blocks 2 tiles x 4 tokens in registers and, on one core, beats
dequantize + fp32 GEMM even at M = 512 (bench/kernels.md).

For many tokens (M >= ``DEQUANT_MIN_TOKENS``) the ``codebook`` kind dequantizes row blocks with the
C++ kernel and multiplies with torch (BLAS): at that size the GEMM is compute-bound, the weight read
is amortized over the tokens, and a tuned float GEMM wins over its lookup kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from anybit.errors import KernelError
from anybit.formats import FormatFamily, NumberFormat
from anybit.kernels.dispatch import active_isa, extension
from anybit.kernels.packing import (
    INT_CHUNK_COLS,
    INT_TILE_ROWS,
    NIBBLE_CHUNK_COLS,
    VNNI_QUAD_ROWS,
    aligned,
    as_codes,
    pack_bitfields,
    pack_nibbles,
    pack_vnni_bytes,
    pack_vnni_nibbles,
    round_up,
)
from anybit.qtensor import QTensor

KernelKind = Literal["intbp", "codebook", "w8a8", "w4a8"]
KINDS: tuple[str, ...] = ("intbp", "codebook", "w8a8", "w4a8")
DEQUANT_MIN_TOKENS = 32  # codebook switches to dequantize + torch GEMM from this many tokens
DEQUANT_BLOCK_ROWS = 256  # rows dequantized at a time on that path (a multiple of 16)
VNNI_ZERO_BIAS = 128  # W4A8 weights enter vpdpbusd as S2 * (c - z) + 128 (unsigned)
DUAL_INT8_MAX = 127
BUFFER_NAMES = (
    "codes",
    "scales",
    "offsets",
    "tables",
    "type_ids",
    "acc_scales",
    "acc_zeros",
    "dual_s2",
    "dual_base",
)


def _unsupported(q: QTensor, why: str) -> KernelError:
    table = (
        (__doc__ or "").split("Kernels (``kind``) and what they accept:", 1)[-1].split("Default choice")[0]
    )
    return KernelError(f"PackedLinearWeight: cannot pack {q.scheme} ({why}). Supported combinations:{table}")


@dataclass(eq=False)
class PackedLinearWeight:
    """A [N, K] weight (N = out_features, K = in_features) packed for one kernel (module docstring).

    Buffers are C-contiguous numpy arrays; which ones are set depends on ``kind``:
    ``codes`` (always), ``scales`` and ``offsets`` (weight-only), ``tables``/``type_ids``
    (codebook), ``acc_scales``/``acc_zeros`` (integer kinds), ``dual_s2``/``dual_base`` (w4a8).
    ``scale_dtype`` (intbp): ``fp32`` (float32 scales/offsets), or ``fp16``/``bf16``, then the
    arrays are uint16 holding the 16-bit float bits (chosen only when lossless).
    """

    kind: KernelKind
    out_features: int
    in_features: int
    k_pad: int
    group_size: int
    bits: int
    codes: np.ndarray
    scales: np.ndarray | None = None
    offsets: np.ndarray | None = None
    offset_mul: float = 0.0
    tables: np.ndarray | None = None
    type_ids: np.ndarray | None = None
    acc_group_size: int = 0
    acc_scales: np.ndarray | None = None
    acc_zeros: np.ndarray | None = None
    dual_s2: np.ndarray | None = None
    dual_base: np.ndarray | None = None
    scheme: str = ""
    scale_dtype: Literal["fp32", "fp16", "bf16"] = "fp32"

    def __post_init__(self) -> None:
        # every buffer starts on a cache line (packing.aligned: no vector load straddles two lines)
        for name in BUFFER_NAMES:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, aligned(value))

    # ----- construction -----------------------------------------------------------------------
    @classmethod
    def from_qtensor(
        cls,
        q: QTensor,
        *,
        activations: Literal["fp32", "int8"] = "fp32",
        kind: KernelKind | None = None,
    ) -> PackedLinearWeight:
        """Pack ``q`` (a 2-D QTensor) for the kernel ``kind`` (default: from the scheme)."""
        if not isinstance(q, QTensor):
            raise KernelError(f"PackedLinearWeight.from_qtensor expects a QTensor, got {type(q).__name__}")
        if len(q.shape) != 2:
            raise _unsupported(q, f"a linear weight is 2-D [out_features, in_features], got shape {q.shape}")
        if activations not in ("fp32", "int8"):
            raise KernelError(f"activations must be 'fp32' or 'int8', got {activations!r}")
        if kind is None:
            kind = _default_kind(q, activations)
        if kind not in KINDS:
            raise _unsupported(q, f"unknown kernel kind {kind!r}; use one of {', '.join(KINDS)}")
        gran = q.scheme.granularity.kind
        if gran == "block":
            raise _unsupported(q, "2-D block scales are not supported by the kernels")
        builder = {"intbp": _pack_intbp, "codebook": _pack_codebook, "w8a8": _pack_w8a8, "w4a8": _pack_w4a8}[
            kind
        ]
        return builder(q)

    # ----- sizes ------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes of every packed buffer (codes, scales, offsets, tables, ids), padding included."""
        buffers = (getattr(self, name) for name in BUFFER_NAMES)
        return int(sum(b.nbytes for b in buffers if b is not None))

    @property
    def shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    @property
    def activation_block(self) -> int:
        """``intbp``: columns per activation scale (mirrors csrc: 64 if it divides the group, else 32)."""
        return 64 if self.group_size % 64 == 0 else 32

    def __repr__(self) -> str:
        return (
            f"PackedLinearWeight(kind={self.kind}, shape={self.shape}, scheme={self.scheme}, "
            f"nbytes={self.nbytes})"
        )

    # ----- compute ----------------------------------------------------------------------------
    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` for ``x`` [..., K] float32 (contiguous) -> float32 [..., N].

        Kept lean (numpy views, one output allocation): at decode time a 4096x4096 int2 GEMV takes
        ~0.15 ms and every microsecond of Python shows in it.
        """
        xn, lead = self._check_input(x)
        m = xn.shape[0]
        yn = np.empty((m, self.out_features), dtype=np.float32)
        if m:
            isa = active_isa()
            if self.kind == "codebook" and m >= DEQUANT_MIN_TOKENS:
                self._matmul_dequant(torch.from_numpy(xn), torch.from_numpy(yn), isa)
            elif self.kind == "intbp":
                extension().gemm_intbp(
                    isa,
                    xn,
                    yn,
                    self.codes,
                    self.bits,
                    self.group_size,
                    self.scales,
                    self.offsets,
                    self.offset_mul,
                    False,  # dequant; positional: pybind11's keyword matching costs ~0.5 us per call
                    self.scale_dtype,
                )
            elif self.kind == "codebook":
                extension().gemm_cb4(
                    isa,
                    xn,
                    yn,
                    self.codes,
                    self.group_size,
                    self.scales,
                    self.offsets,
                    self.tables,
                    self.type_ids,
                )
            elif self.kind == "w8a8":
                extension().gemm_w8a8(
                    isa, xn, yn, self.codes, self.acc_group_size, self.acc_scales, self.acc_zeros
                )
            else:
                extension().gemm_w4a8(
                    isa,
                    xn,
                    yn,
                    self.codes,
                    self.group_size,
                    self.dual_s2,
                    self.dual_base,
                    self.acc_scales,
                    self.acc_zeros,
                )
        y = torch.from_numpy(yn)
        return y if len(lead) == 1 else y.reshape(*lead, self.out_features)

    def dequantize(self) -> torch.Tensor:
        """The float32 [N, K] weight, rebuilt by the C++ dequantization (weight-only kinds)."""
        if self.kind not in ("intbp", "codebook"):
            raise KernelError(
                f"dequantize() runs for the weight-only kinds intbp and codebook, not {self.kind}"
            )
        out = np.empty((self.out_features, self.k_pad), dtype=np.float32)
        self._dequant_rows(0, self.out_features, out, active_isa())
        return torch.from_numpy(out[:, : self.in_features].copy())

    def _check_input(self, x: torch.Tensor) -> tuple[np.ndarray, tuple[int, ...]]:
        """``x`` as a C-contiguous float32 numpy ``[M, K_pad]`` view (zero-padded copy if K_pad > K)."""
        if not isinstance(x, torch.Tensor):
            raise KernelError(f"matmul expects a torch.Tensor, got {type(x).__name__}")
        if x.dtype != torch.float32:
            raise KernelError(f"matmul expects float32 activations, got {x.dtype}; convert with x.float()")
        if not x.is_cpu:
            raise KernelError(f"matmul runs on the CPU; got a tensor on {x.device}")
        shape = x.shape
        if not shape or shape[-1] != self.in_features:
            raise KernelError(
                f"matmul: x has shape {tuple(shape)}, but this weight is "
                f"{self.out_features}x{self.in_features} and needs x [..., {self.in_features}]"
            )
        if not x.is_contiguous():
            raise KernelError("matmul: x is not contiguous; pass x.contiguous()")
        lead = tuple(shape[:-1])
        xn = (x.detach() if x.requires_grad else x).numpy().reshape(-1, self.in_features)
        if self.k_pad != self.in_features:  # zero columns meet zero-code padding
            padded = np.zeros((xn.shape[0], self.k_pad), dtype=np.float32)
            padded[:, : self.in_features] = xn
            xn = padded
        return xn, lead

    def _dequant_rows(self, n0: int, n1: int, out: np.ndarray, isa: str) -> None:
        """Dequantize rows [n0, n1) into ``out`` [n1-n0, k_pad]; n0 is a multiple of 16."""
        ext = extension()
        empty = np.empty((0, self.k_pad), dtype=np.float32)
        if self.kind == "intbp":
            assert self.scales is not None
            t0, t1 = n0 // INT_TILE_ROWS, -(-n1 // INT_TILE_ROWS)
            offsets = self.offsets[t0:t1] if self.offsets is not None else None
            ext.gemm_intbp(
                isa,
                empty,
                out,
                self.codes[t0:t1],
                self.bits,
                self.group_size,
                self.scales[t0:t1],
                offsets,
                self.offset_mul,
                dequant=True,
                scale_dtype=self.scale_dtype,
            )
        else:
            assert self.scales is not None
            offsets = self.offsets[n0:n1] if self.offsets is not None else None
            ids = self.type_ids[n0:n1] if self.type_ids is not None else None
            ext.gemm_cb4(
                isa,
                empty,
                out,
                self.codes[n0:n1],
                self.group_size,
                self.scales[n0:n1],
                offsets,
                self.tables,
                ids,
                dequant=True,
            )

    def _matmul_dequant(self, x2d: torch.Tensor, y: torch.Tensor, isa: str) -> None:
        block = np.empty((DEQUANT_BLOCK_ROWS, self.k_pad), dtype=np.float32)
        for n0 in range(0, self.out_features, DEQUANT_BLOCK_ROWS):
            n1 = min(n0 + DEQUANT_BLOCK_ROWS, self.out_features)
            rows = block[: n1 - n0]
            self._dequant_rows(n0, n1, rows, isa)
            y[:, n0:n1] = x2d @ torch.from_numpy(rows).T


# ----- packing per kind ---------------------------------------------------------------------------
def _default_kind(q: QTensor, activations: str) -> KernelKind:
    fmt = q.scheme.number_format
    integer = isinstance(fmt, NumberFormat) and _offset_binary(fmt)
    if activations == "int8":
        if q.scheme.scale_format == "dual":
            return "w4a8"
        if integer and fmt.bits == 8:
            return "w8a8"
        raise _unsupported(q, "INT8 activations run with 8-bit integer weights (w8a8) or dual scales (w4a8)")
    if integer:
        return "intbp"
    if fmt.bits <= 4:
        return "codebook"
    raise _unsupported(q, f"{fmt.name} has {fmt.bits} bits; codebook kernels take <= 4 bits")


def _offset_binary(fmt: NumberFormat) -> bool:
    """Whether ``value(code) = code + min_level`` for every used code (int{k}, uint{k}, int{k}b)."""
    if not fmt.is_uniform_integer:
        return False
    table = fmt.decode_table.double()
    used = torch.isfinite(table)
    return torch.equal(table[used], torch.arange(table.numel(), dtype=torch.float64)[used] + fmt.min_level)


def _groups(q: QTensor, k_multiple: int, group_multiple: int) -> tuple[int, int]:
    """(k_pad, group_size) for the kernels; tensor/channel scales become one group per row."""
    k = q.shape[1]
    gran = q.scheme.granularity
    if gran.kind in ("tensor", "channel"):
        k_pad = round_up(k, k_multiple)
        return k_pad, k_pad
    if gran.kind != "group":
        raise _unsupported(q, f"granularity {gran} is not supported")
    g = int(gran.group_size or 0)
    if g % group_multiple:
        raise _unsupported(q, f"group size {g} is not a multiple of {group_multiple} for this kernel")
    return round_up(k, max(k_multiple, g)), g


def _per_group(t: torch.Tensor, n: int, groups: int) -> np.ndarray:
    """[N, G_real] (or [1, 1] for tensor scales) float32 -> [N, groups], zero-padded groups."""
    t = t.float()
    if t.shape[0] == 1 and n != 1:
        t = t.expand(n, t.shape[1])
    out = torch.zeros((n, groups), dtype=torch.float32)
    out[:, : t.shape[1]] = t
    return out.numpy()


def _tile_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """[N, G] -> [ceil(N/rows), G, rows] (rows of a tile contiguous per group), zero-padded."""
    n, g = a.shape
    padded = np.zeros((round_up(n, rows), g), dtype=a.dtype)
    padded[:n] = a
    return np.ascontiguousarray(padded.reshape(-1, rows, g).transpose(0, 2, 1))


def _zero_levels(q: QTensor, fmt: NumberFormat) -> torch.Tensor | None:
    """Level of the integer zero point per group ([N, G] float32), or None."""
    if q.scheme.zero_point != "int":
        return None
    assert q.zeros is not None
    return fmt.decode(q.zeros, torch.float32)


def _affine_offsets(
    q: QTensor, fmt: NumberFormat, value_of_code0: torch.Tensor | float
) -> torch.Tensor | None:
    """Per-group offset ``o`` with weight = s * table[c] + o (table at unit scale), or None if 0."""
    s = q.effective_scales()
    zero = _zero_levels(q, fmt)
    if q.scheme.zero_point == "int":
        assert zero is not None
        return -s * zero + s * value_of_code0
    if q.scheme.zero_point == "float":
        assert q.zeros is not None
        return s * value_of_code0 + q.zeros.float()
    return None


def _pack_intbp(q: QTensor) -> PackedLinearWeight:
    fmt = q.scheme.number_format
    if not (isinstance(fmt, NumberFormat) and _offset_binary(fmt)):
        raise _unsupported(q, f"intbp needs an integer format with offset-binary codes, not {fmt.name}")
    n, k = q.shape
    k_pad, g = _groups(q, INT_CHUNK_COLS, INT_CHUNK_COLS)
    groups = k_pad // g
    s = q.effective_scales()
    # weight = s * code + o with o = value of code 0 = s * min_level (- s * zero level, + float offset)
    offsets = _affine_offsets(q, fmt, float(fmt.min_level))
    scales_tiled = _tile_rows(_per_group(s, n, groups), INT_TILE_ROWS)
    offsets_tiled = _tile_rows(_per_group(offsets, n, groups), INT_TILE_ROWS) if offsets is not None else None
    scale_dtype, scales_tiled, offsets_tiled = _narrow_scales(scales_tiled, offsets_tiled)
    return PackedLinearWeight(
        kind="intbp",
        out_features=n,
        in_features=k,
        k_pad=k_pad,
        group_size=g,
        bits=fmt.bits,
        codes=pack_bitfields(q.codes, fmt.bits),
        scales=scales_tiled,
        offsets=offsets_tiled,
        offset_mul=float(fmt.min_level),
        scheme=str(q.scheme),
        scale_dtype=scale_dtype,
    )


def _narrow_scales(
    scales: np.ndarray, offsets: np.ndarray | None
) -> tuple[Literal["fp32", "fp16", "bf16"], np.ndarray, np.ndarray | None]:
    """float32 scales/offsets -> 16-bit float bits (uint16) when every value survives the round trip
    (float16 first, then bfloat16), else unchanged. Why: at 2 bits and g64, fp32 scales are a fifth
    of the GEMV's bytes; a ``scale=fp16``/``bf16`` scheme's scales fit in 16 bits exactly."""
    arrays = [scales] if offsets is None else [scales, offsets]
    with np.errstate(over="ignore"):  # values beyond float16's range become inf: not exact
        fp16_exact = all(np.array_equal(a.astype(np.float16).astype(np.float32), a) for a in arrays)
    if fp16_exact:
        narrowed = [np.ascontiguousarray(a.astype(np.float16).view(np.uint16)) for a in arrays]
        return "fp16", narrowed[0], narrowed[1] if offsets is not None else None
    if all(not (a.view(np.uint32) & 0xFFFF).any() for a in arrays):
        narrowed = [np.ascontiguousarray((a.view(np.uint32) >> 16).astype(np.uint16)) for a in arrays]
        return "bf16", narrowed[0], narrowed[1] if offsets is not None else None
    return "fp32", scales, offsets


def _codebook_tables(fmt: NumberFormat | FormatFamily) -> np.ndarray:
    tables = fmt.decode_tables() if isinstance(fmt, FormatFamily) else fmt.decode_table.float().unsqueeze(0)
    out = torch.zeros((tables.shape[0], 16), dtype=torch.float32)
    out[:, : tables.shape[1]] = torch.nan_to_num(tables.float(), nan=0.0)  # unused codes never occur
    return out.numpy()


def _pack_codebook(q: QTensor) -> PackedLinearWeight:
    fmt = q.scheme.number_format
    if fmt.bits > 4:
        raise _unsupported(q, f"codebook kernels take formats of <= 4 bits, {fmt.name} has {fmt.bits}")
    n, k = q.shape
    k_pad, g = _groups(q, NIBBLE_CHUNK_COLS, 16)
    groups = k_pad // g
    offsets = None
    if q.scheme.zero_point != "none":
        assert isinstance(fmt, NumberFormat)
        offsets = _affine_offsets(q, fmt, 0.0)
    type_ids = None
    if isinstance(fmt, FormatFamily):
        assert q.type_ids is not None
        ids = torch.zeros((n, groups), dtype=torch.uint8)
        ids[:, : q.type_ids.shape[1]] = q.type_ids.reshape(n, -1)
        type_ids = ids.numpy()
    return PackedLinearWeight(
        kind="codebook",
        out_features=n,
        in_features=k,
        k_pad=k_pad,
        group_size=g,
        bits=fmt.bits,
        codes=pack_nibbles(q.codes),
        scales=_per_group(q.effective_scales(), n, groups),
        offsets=_per_group(offsets, n, groups) if offsets is not None else None,
        tables=_codebook_tables(fmt),
        type_ids=type_ids,
        scheme=str(q.scheme),
    )


def _unsigned_zero(q: QTensor, fmt: NumberFormat) -> torch.Tensor:
    """Per group, the code whose value is 0: the zero code (asym=int) or -min_level (symmetric)."""
    if q.scheme.zero_point == "int":
        assert q.zeros is not None
        return q.zeros.float()
    if q.scheme.zero_point == "float":
        raise _unsupported(q, "integer-activation kernels take zero point none or int, not a float offset")
    return torch.full((q.shape[0], 1), -float(fmt.min_level))


def _pack_w8a8(q: QTensor) -> PackedLinearWeight:
    fmt = q.scheme.number_format
    if not (isinstance(fmt, NumberFormat) and _offset_binary(fmt) and fmt.bits == 8):
        raise _unsupported(q, f"w8a8 needs an 8-bit integer format, not {fmt.name}")
    n, k = q.shape
    k_pad, g = _groups(q, NIBBLE_CHUNK_COLS, NIBBLE_CHUNK_COLS)
    groups = k_pad // g
    s = torch.from_numpy(_per_group(q.effective_scales(), n, groups))
    zero = _unsigned_zero(q, fmt).expand(n, q.effective_scales().shape[1])
    z = torch.from_numpy(_per_group(zero, n, groups))
    return PackedLinearWeight(
        kind="w8a8",
        out_features=n,
        in_features=k,
        k_pad=k_pad,
        group_size=g,
        bits=8,
        codes=pack_vnni_bytes(q.codes, k_pad),
        acc_group_size=g,
        acc_scales=_tile_rows(s.numpy(), VNNI_QUAD_ROWS),
        acc_zeros=_tile_rows((s * z).numpy(), VNNI_QUAD_ROWS),
        scheme=str(q.scheme),
    )


def _pack_w4a8(q: QTensor) -> PackedLinearWeight:
    fmt = q.scheme.number_format
    if q.scheme.scale_format != "dual" or not isinstance(q.scales, QTensor):
        raise _unsupported(q, "w4a8 needs dual-grained (DGQ) scales, e.g. int4:g128:dual")
    if not (isinstance(fmt, NumberFormat) and _offset_binary(fmt) and fmt.bits <= 4):
        raise _unsupported(q, f"w4a8 needs an integer format of <= 4 bits, not {fmt.name}")
    n, k = q.shape
    k_pad, g = _groups(q, NIBBLE_CHUNK_COLS, NIBBLE_CHUNK_COLS)
    if k_pad != k:
        raise _unsupported(q, f"in_features {k} must be a multiple of 32")
    s2 = q.scales.codes.reshape(n, -1).to(torch.int32)  # integer group scales 1..127
    channel = q.scales.effective_scales().reshape(n, 1).float()  # fp32 per-channel scale
    zero = _unsigned_zero(q, fmt).to(torch.int32).expand_as(s2)
    # the INT8 weight S2 * (c - z) must fit [-127, 127] (the quantizer clamps codes to make it so)
    groups_codes = q.codes.reshape(n, -1, g).to(torch.int32)
    w8 = s2.unsqueeze(-1) * (groups_codes - zero.unsqueeze(-1))
    if w8.numel() and int(w8.abs().max()) > DUAL_INT8_MAX:
        raise KernelError(
            f"PackedLinearWeight: {q.scheme}: S2 * (code - zero) reaches {int(w8.abs().max())}, outside the "
            "INT8 range; this QTensor was not produced by anybit.quantize's dual-grained path"
        )
    base = ((VNNI_ZERO_BIAS - s2 * zero) % 256).to(torch.uint8)
    acc_scales = channel.numpy()
    return PackedLinearWeight(
        kind="w4a8",
        out_features=n,
        in_features=k,
        k_pad=k_pad,
        group_size=g,
        bits=fmt.bits,
        codes=pack_vnni_nibbles(q.codes),
        acc_group_size=k_pad,
        acc_scales=_tile_rows(acc_scales, VNNI_QUAD_ROWS),
        acc_zeros=_tile_rows(acc_scales * VNNI_ZERO_BIAS, VNNI_QUAD_ROWS),
        dual_s2=_tile_rows(s2.to(torch.uint8).numpy(), VNNI_QUAD_ROWS),
        dual_base=_tile_rows(base.numpy(), VNNI_QUAD_ROWS),
        scheme=str(q.scheme),
    )


__all__ = ["DEQUANT_MIN_TOKENS", "KINDS", "PackedLinearWeight", "as_codes"]
