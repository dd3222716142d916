"""Packed low-bit storage and CPU kernels (compiled extension ``anybit._kernels``, csrc/).

Public API::

    from anybit.kernels import PackedLinearWeight, use_isa
    packed = PackedLinearWeight.from_qtensor(anybit.quantize(w, "int4:g64"))
    y = packed.matmul(x)               # x [..., K] float32 -> [..., N]
    packed.nbytes                      # bytes actually stored
    with use_isa("scalar"): ...        # or ANYBIT_ISA=scalar|avx2|avx512 in the environment

Pieces: :mod:`~anybit.kernels.packing` (layouts, pack/unpack), :mod:`~anybit.kernels.packed`
(which kernel serves which scheme), :mod:`~anybit.kernels.reference` (the pure-torch definition of
each kernel), :mod:`~anybit.kernels.dispatch` (extension loading and ISA choice),
:mod:`~anybit.kernels.bench` (``run_kernel_bench``, the bandwidth-relative benchmark).
"""

from anybit.kernels.dispatch import (
    EXTENSION_ERROR,
    ISA_ENV,
    ISAS,
    active_isa,
    is_available,
    supported_isas,
    use_isa,
)
from anybit.kernels.packed import DEQUANT_MIN_TOKENS, KINDS, PackedLinearWeight
from anybit.kernels.packing import (
    bit_fields,
    pack_bitfields,
    pack_nibbles,
    pack_vnni_bytes,
    pack_vnni_nibbles,
    unpack_bitfields,
    unpack_nibbles,
    unpack_vnni_bytes,
    unpack_vnni_nibbles,
)

__all__ = [
    "DEQUANT_MIN_TOKENS",
    "EXTENSION_ERROR",
    "ISAS",
    "ISA_ENV",
    "KINDS",
    "PackedLinearWeight",
    "active_isa",
    "bit_fields",
    "is_available",
    "pack_bitfields",
    "pack_nibbles",
    "pack_vnni_bytes",
    "pack_vnni_nibbles",
    "supported_isas",
    "unpack_bitfields",
    "unpack_nibbles",
    "unpack_vnni_bytes",
    "unpack_vnni_nibbles",
    "use_isa",
]
