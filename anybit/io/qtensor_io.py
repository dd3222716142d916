"""QTensor <-> flat safetensors entries plus a JSON description.

A QTensor named ``p`` becomes entries ``p.codes`` (bit-packed, :mod:`anybit.io.bitpack`),
``p.scales`` (a tensor in its storage dtype) or the entries of the nested QTensor ``p.scales.*``,
``p.zeros`` (bit-packed integer zero codes, or float offsets) and ``p.type_ids`` (bit-packed).
The JSON description records the scheme string, the shape and which fields exist; schemes are
re-parsed on load with anybit's own grammar, so only known formats and schemes can be loaded.
"""

from __future__ import annotations

from typing import Any

import torch

from anybit.errors import CheckpointError, SchemeError
from anybit.formats import FormatFamily
from anybit.io.bitpack import pack_bits, unpack_bits
from anybit.qtensor import QTensor
from anybit.scheme import parse_scheme


def qtensor_to_entries(q: QTensor, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    fmt = q.scheme.number_format
    tensors: dict[str, torch.Tensor] = {f"{prefix}.codes": pack_bits(q.codes, fmt.bits)}
    meta: dict[str, Any] = {"scheme": str(q.scheme), "shape": list(q.shape)}
    if isinstance(q.scales, QTensor):
        inner_tensors, inner_meta = qtensor_to_entries(q.scales, f"{prefix}.scales")
        tensors.update(inner_tensors)
        meta["scales"] = inner_meta
    else:
        tensors[f"{prefix}.scales"] = q.scales.contiguous()
        meta["scales"] = {"shape": list(q.scales.shape)}
    if q.zeros is not None:
        if q.scheme.zero_point == "int":
            tensors[f"{prefix}.zeros"] = pack_bits(q.zeros, fmt.bits)
        else:
            tensors[f"{prefix}.zeros"] = q.zeros.contiguous()
        meta["zeros"] = list(q.zeros.shape)
    if q.type_ids is not None:
        assert isinstance(fmt, FormatFamily)
        tensors[f"{prefix}.type_ids"] = pack_bits(q.type_ids, fmt.id_bits)
        meta["type_ids"] = list(q.type_ids.shape)
    return tensors, meta


def _get(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in tensors:
        raise CheckpointError(
            f"checkpoint is missing tensor {key!r}; the file is incomplete or from another tool"
        )
    return tensors[key]


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def qtensor_from_entries(tensors: dict[str, torch.Tensor], prefix: str, meta: dict[str, Any]) -> QTensor:
    try:
        scheme = parse_scheme(meta["scheme"])
        shape = [int(s) for s in meta["shape"]]
    except (KeyError, TypeError, ValueError, SchemeError) as err:
        raise CheckpointError(f"checkpoint entry {prefix!r} has an invalid description: {err}") from None
    fmt = scheme.number_format
    codes = unpack_bits(_get(tensors, f"{prefix}.codes"), fmt.bits, _numel(shape)).reshape(shape)
    scales_meta = meta.get("scales", {})
    if "scheme" in scales_meta:
        scales: torch.Tensor | QTensor = qtensor_from_entries(tensors, f"{prefix}.scales", scales_meta)
    else:
        scales = _get(tensors, f"{prefix}.scales")
    zeros = None
    if "zeros" in meta:
        raw = _get(tensors, f"{prefix}.zeros")
        zshape = [int(s) for s in meta["zeros"]]
        zeros = (
            unpack_bits(raw, fmt.bits, _numel(zshape)).reshape(zshape) if scheme.zero_point == "int" else raw
        )
    type_ids = None
    if "type_ids" in meta:
        assert isinstance(fmt, FormatFamily)
        ishape = [int(s) for s in meta["type_ids"]]
        type_ids = unpack_bits(_get(tensors, f"{prefix}.type_ids"), fmt.id_bits, _numel(ishape)).reshape(
            ishape
        )
    try:
        return QTensor(codes, scales, scheme, tuple(shape), zeros, type_ids)
    except ValueError as err:
        raise CheckpointError(f"checkpoint entry {prefix!r} is inconsistent: {err}") from None
