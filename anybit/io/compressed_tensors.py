"""Export to compressed-tensors, the checkpoint format vLLM serves (and transformers loads).

What is written: a transformers directory (``config.json`` with a ``quantization_config`` of
``quant_method: compressed-tensors``, safetensors weights, tokenizer) where every quantized linear
is stored in the compressed-tensors layout of its scheme (compressed-tensors 0.20 naming):

- ``pack-quantized`` (integer weights of 1..8 bits, any activations): ``weight_packed`` int32
  ``[N, ceil(K * b / 32)]``, each row a little-endian bit stream of offset-binary codes
  (``q + 2^(b-1)``; code ``i`` at bits ``[i*b, (i+1)*b)``, codes may straddle words);
  ``weight_scale`` ``[N, K/g]`` (group), ``[N, 1]`` (channel) or ``[1]`` (tensor) in the scale's
  stored dtype; ``weight_shape`` int64 ``[2]``; asymmetric schemes add ``weight_zero_point``, packed
  the same way along dim 0 (``[ceil(N * b / 32), K/g]``). Dequantization: ``(q - zp) * scale``.
- ``int-quantized`` (8-bit integer weights with 8-bit integer activations, W8A8): ``weight`` int8.
- ``float-quantized`` (FP8 E4M3 weights): ``weight`` float8_e4m3fn.
- ``nvfp4-pack-quantized`` (``nvfp4``: E2M1 codes, E4M3 scales per 16, an fp32 tensor scale) and
  ``mxfp4-pack-quantized`` (``mxfp4``: E8M0 scales per 32): ``weight_packed`` uint8, two codes per
  byte (element ``2i`` in the low nibble), ``weight_scale`` float8_e4m3fn / uint8 exponents, and
  for NVFP4 ``weight_global_scale`` = 1 / anybit's tensor scale.

Activations: dynamic per-token or per-tensor, or static per-tensor (``input_scale``), 8-bit
integer or FP8 E4M3, symmetric. Unquantized modules (lm_head by default) are written dense.

How anybit's integer codes map: a format's levels are consecutive integers ``l_min..l_max``
(``int4`` is -8..7, ``int4b`` -7..7, ``uint4`` 0..15); compressed-tensors' b-bit integers are
``-2^(b-1)..2^(b-1)-1``. A symmetric signed format is stored as ``q = level``. An unsigned format or
an integer zero point is stored asymmetric, with ``q = level - 2^(b-1)`` and
``zp = level(zero) - 2^(b-1)``. Without a zero point that ``zp`` is the constant ``-2^(b-1)``. So
``(q - zp) * scale`` is exactly anybit's dequantized weight.

Refused with the reason (:class:`~anybit.errors.ExportError`): float offsets (``:asym=float``),
non-integer weight formats other than FP8 E4M3 and NVFP4/MXFP4 (NF4, other FP4/FP6 layouts, dINT,
BitMoD families: compressed-tensors has no codebook format), quantized scales on integer formats
(double-quantized ``dq``, DGQ ``dual``: not mapped yet), block granularity, layers that are not
``nn.Linear`` once the model is restored (GPT-2's Conv1D), and activation schemes other than the
above. Quantized embeddings are written dense, with a note.

Verified (``tests/test_export_ct.py``, and on smollm2 in ``tests/test_real_model.py``):
- compressed-tensors' own decompressor rebuilds anybit's dequantized weights bit for bit. With
  fp16/bf16 scales it multiplies in the scale's dtype, so there it gives anybit's product rounded
  to that dtype.
- transformers + compressed-tensors load the directory and give the same logits for symmetric
  weight-only schemes. For W8A8 the logits are within ~1%: compressed-tensors' simulated int8
  activations scale by absmax / 127.5, anybit's (and vLLM's int8 kernels) by / 127.
- transformers 5.23 cannot load asymmetric ``pack-quantized`` checkpoints: its placeholders
  expect unpacked zero points (vllm-project/llm-compressor#1618). Those exports follow
  compressed-tensors' ``compress`` (packed zero points, what vLLM reads) and are checked through
  the decompressor.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anybit.errors import ExportError
from anybit.formats import get_format
from anybit.io.bitpack import pack_bits
from anybit.io.checkpoint import atomic_directory, quantized_modules
from anybit.nn.qlinear import QEmbedding, QLinear
from anybit.qtensor import QTensor
from anybit.scheme import QScheme

CT_VERSION = "0.20.0"  # the compressed-tensors release whose layout this writer follows
_SCALE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class _Module:
    """One quantized linear in compressed-tensors form."""

    weights: dict[str, Any]  # QuantizationArgs of the weights
    input_activations: dict[str, Any] | None
    format: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # local names: weight_packed, ...


def pack_int32_rows(q: torch.Tensor, bits: int) -> torch.Tensor:
    """``[rows, cols]`` integers in ``-2^(b-1)..2^(b-1)-1`` -> int32 ``[rows, ceil(cols*b/32)]``:
    each row an offset-binary little-endian bit stream (module docstring)."""
    if sys.byteorder != "little":
        raise ExportError("compressed-tensors packing is written for little-endian hosts")
    rows, cols = q.shape
    offset = 1 << (bits - 1)
    unsigned = (q.to(torch.int16) + offset).to(torch.uint8)
    padded_cols = -(-cols // 32) * 32  # a multiple of 32 codes is a whole number of words
    if padded_cols != cols:
        unsigned = torch.nn.functional.pad(unsigned, (0, padded_cols - cols))
    words = pack_bits(unsigned.contiguous(), bits).view(torch.int32).reshape(rows, padded_cols * bits // 32)
    return words[:, : math.ceil(cols * bits / 32)].contiguous()


def _integer_levels(q: QTensor, where: str) -> tuple[torch.Tensor, int, int]:
    """(levels as int64, their minimum, the format's bit-width) of an integer format."""
    fmt = get_format(q.scheme.format)
    levels = fmt.levels.to(torch.int64)
    consecutive = torch.equal(levels, torch.arange(int(levels[0]), int(levels[-1]) + 1))
    if not fmt.is_uniform_integer or not consecutive:
        raise ExportError(f"{where}: format {q.scheme.format} is not a range of consecutive integers")
    return levels, int(levels[0]), fmt.bits


def _check_scales(q: QTensor, where: str) -> torch.Tensor:
    if isinstance(q.scales, QTensor) or q.scales.dtype not in _SCALE_DTYPES:
        raise ExportError(
            f"{where}: scale={q.scheme.scale_format} (quantized scales: double-quantized dq, DGQ dual, "
            "MX e8m0 and NVFP4 e4m3 only with fp4_e2m1) "
            "has no compressed-tensors mapping in anybit yet; use scale=fp32, fp16 or bf16"
        )
    return q.scales


def _granularity(scheme: QScheme, where: str) -> dict[str, Any]:
    kind = scheme.granularity.kind
    if kind == "group":
        return {"strategy": "group", "group_size": scheme.granularity.group_size}
    if kind in ("channel", "tensor"):
        return {"strategy": kind, "group_size": None}
    raise ExportError(
        f"{where}: weight granularity {kind} has no compressed-tensors strategy; use tensor, channel or g<N>"
    )


def _args(num_bits: int, type_: str, symmetric: bool, dynamic: bool | str, **extra: Any) -> dict[str, Any]:
    args = {
        "num_bits": num_bits,
        "type": type_,
        "symmetric": symmetric,
        "group_size": None,
        "strategy": None,
        "block_structure": None,
        "dynamic": dynamic,
        "actorder": None,
        "observer": None,
        "observer_kwargs": {},
    }
    args.update(extra)
    return args


def _weight_entry(q: QTensor, has_int8_acts: bool, where: str) -> _Module:
    scheme = q.scheme
    if scheme.zero_point == "float":
        raise ExportError(
            f"{where}: float offsets (asym=float) cannot be stored in compressed-tensors, whose zero "
            "points are integers; quantize with an integer zero point (e.g. uint4:g128:asym)"
        )
    fmt = get_format(scheme.format)
    if scheme.format == "fp4_e2m1":
        return _fp4_entry(q, where)
    if scheme.format != "fp8_e4m3" and not fmt.is_uniform_integer:
        raise ExportError(
            f"{where}: weight format {scheme.format} has no compressed-tensors form (it stores integer "
            "codes and FP8); choose an int/uint format or fp8_e4m3, or export hf-dequantized"
        )
    scales = _check_scales(q, where)
    strategy = _granularity(scheme, where)
    n, k = q.shape
    scale_shape = (1,) if strategy["strategy"] == "tensor" else tuple(scales.shape)
    scale = scales.reshape(scale_shape).contiguous()
    if scheme.format == "fp8_e4m3":
        weight = fmt.decode(q.codes, torch.float32).to(torch.float8_e4m3fn)
        args = _args(8, "float", True, False, **strategy)
        return _Module(args, None, "float-quantized", {"weight": weight, "weight_scale": scale})
    levels, low, bits = _integer_levels(q, where)
    half = 1 << (bits - 1)
    values = fmt.decode(q.codes, torch.float64).round().to(torch.int64)  # each weight's integer level
    symmetric = scheme.zero_point == "none" and low >= -half and int(levels[-1]) < half
    if symmetric:
        stored, zero = values, None
    else:  # an unsigned range or an integer zero point: shift both into the signed b-bit range
        shift = low + half  # q = level - shift lies in [-half, half)
        if int(levels[-1]) - shift >= half:
            raise ExportError(f"{where}: {scheme.format} has more levels than {bits} bits can hold")
        stored = values - shift
        if q.zeros is None:
            zero = torch.full(scales.shape, -shift, dtype=torch.int64)
        else:
            zero = fmt.decode(q.zeros, torch.float64).round().to(torch.int64) - shift
    tensors: dict[str, torch.Tensor] = {"weight_scale": scale}
    if bits == 8 and has_int8_acts:
        fmt_name = "int-quantized"
        tensors["weight"] = stored.to(torch.int8).contiguous()
        if zero is not None:
            tensors["weight_zero_point"] = zero.reshape(scale_shape).to(torch.int8).contiguous()
    else:
        fmt_name = "pack-quantized"
        tensors["weight_packed"] = pack_int32_rows(stored.to(torch.int8), bits)
        tensors["weight_shape"] = torch.tensor([n, k], dtype=torch.int64)
        if zero is not None:
            if strategy["strategy"] == "tensor":
                raise ExportError(f"{where}: compressed-tensors packs zero points per group or channel only")
            packed_zero = pack_int32_rows(zero.to(torch.int8).t().contiguous(), bits)  # along dim 0
            tensors["weight_zero_point"] = packed_zero.t().contiguous()
    args = _args(bits, "int", zero is None, False, **strategy)
    return _Module(args, None, fmt_name, tensors)


def pack_fp4_rows(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (sign in bit 3) ``[rows, cols]`` -> uint8 ``[rows, cols/2]``, element ``2i`` in the
    low nibble (compressed-tensors' NVFP4/MXFP4 packing)."""
    pairs = codes.to(torch.uint8).reshape(codes.shape[0], -1, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).contiguous()


def _fp4_entry(q: QTensor, where: str) -> _Module:
    """NVFP4 (E2M1, E4M3 scales per 16 x an fp32 tensor scale) and MXFP4 (E2M1, E8M0 scales per 32).

    anybit's FP4 and FP8 codes are the standard bit patterns, so they are stored as they are. NVFP4's
    tensor scale t is stored as compressed-tensors' ``weight_global_scale`` = 1 / t (its weights
    are ``fp4 * weight_scale / weight_global_scale``; equal to anybit's ``fp4 * e4m3 * t`` within an
    ulp of float32)."""
    scheme, k = q.scheme, q.shape[1]
    group = scheme.granularity.group_size if scheme.granularity.kind == "group" else None
    if k % 2:
        raise ExportError(f"{where}: FP4 packs two codes per byte and needs an even in_features, not {k}")
    packed = pack_fp4_rows(q.codes)
    if scheme.scale_format == "e4m3" and group == 16 and isinstance(q.scales, QTensor):
        tensor_scale = q.scales.scales.float().reshape(-1)
        if tensor_scale.numel() != 1 or q.scales.scales.dtype != torch.float32:
            raise ExportError(f"{where}: NVFP4 needs one fp32 tensor scale over its E4M3 block scales")
        tensors = {
            "weight_packed": packed,
            "weight_scale": q.scales.codes.view(torch.float8_e4m3fn).contiguous(),
            "weight_global_scale": (1.0 / tensor_scale).contiguous(),
        }
        args = _args(4, "float", True, False, strategy="tensor_group", group_size=16)
        return _Module(args, None, "nvfp4-pack-quantized", tensors)
    if scheme.scale_format == "e8m0" and group == 32 and not isinstance(q.scales, QTensor):
        exponents = q.scales.view(torch.uint8).contiguous()  # E8M0 = the biased exponent
        args = _args(4, "float", True, False, strategy="group", group_size=32)
        return _Module(
            args, None, "mxfp4-pack-quantized", {"weight_packed": packed, "weight_scale": exponents}
        )
    raise ExportError(
        f"{where}: fp4_e2m1 with scale={scheme.scale_format} per {group or scheme.granularity.kind} has no "
        "compressed-tensors form; use nvfp4 (fp4_e2m1:g16:scale=e4m3) or mxfp4 (fp4_e2m1:g32:scale=e8m0)"
    )


def _activation_args(module: QLinear, where: str) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    act = module.act_quant
    if act is None:
        return None, {}
    scheme = act.scheme
    kind = scheme.granularity.kind
    if scheme.zero_point != "none":
        raise ExportError(
            f"{where}: asymmetric activations ({scheme}) are not exported; use a symmetric scheme"
        )
    if scheme.format in ("int8", "int8b"):
        num_bits, type_ = 8, "int"
    elif scheme.format == "fp8_e4m3":
        num_bits, type_ = 8, "float"
    else:
        raise ExportError(
            f"{where}: activation format {scheme.format} is not exported; compressed-tensors serves "
            "int8 and fp8_e4m3 activations"
        )
    if scheme.dynamic and kind in ("token", "tensor"):
        return _args(num_bits, type_, True, True, strategy=kind), {}
    if not scheme.dynamic and kind == "tensor" and act.scale is not None:
        args = _args(num_bits, type_, True, False, strategy="tensor")
        return args, {"input_scale": act.scale.reshape(1).float()}
    raise ExportError(
        f"{where}: activation scheme {scheme} is not exported; use dynamic :token or :tensor, or a "
        "calibrated static :tensor scheme"
    )


def plan_modules(model: nn.Module) -> dict[str, _Module]:
    """Every quantized linear in compressed-tensors form; every problem in one error."""
    plan: dict[str, _Module] = {}
    problems: list[str] = []
    for name, module in quantized_modules(model).items():
        if not isinstance(module, QLinear):
            continue
        if module.qweight is None:
            problems.append(
                f"{name}: packed without its codes (pack(keep_qtensor=False)); reload the checkpoint"
            )
            continue
        try:
            acts, act_tensors = _activation_args(module, name)
            has_int8_acts = acts is not None and acts["type"] == "int"
            entry = _weight_entry(module.qweight, has_int8_acts, name)
        except ExportError as err:
            problems.append(str(err))
            continue
        entry.input_activations = acts
        entry.tensors.update(act_tensors)
        plan[name] = entry
    if problems:
        more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
        shown = "\n  ".join(problems[:8]) + more
        raise ExportError(f"cannot export to compressed-tensors:\n  {shown}")
    return plan


def quantization_config(plan: dict[str, _Module], linear_names: list[str]) -> dict[str, Any]:
    """The ``quantization_config`` block: one config group per distinct scheme.

    One scheme for every quantized linear (the usual recipe) is written as llm-compressor writes
    it: ``targets: ["Linear"]`` and the dense linears (``linear_names`` not in ``plan``, e.g.
    lm_head) in ``ignore``. Several schemes (per-layer overrides) get one group each, whose targets
    are the exact module names (``re:^name$``)."""
    groups: dict[str, dict[str, Any]] = {}
    for name, entry in plan.items():
        key = json.dumps([entry.weights, entry.input_activations, entry.format], sort_keys=True)
        group = groups.setdefault(
            key,
            {
                "targets": [],
                "weights": entry.weights,
                "input_activations": entry.input_activations,
                "output_activations": None,
                "format": entry.format,
            },
        )
        group["targets"].append("re:^" + re.escape(name) + "$")
    ignore: list[str] = []
    if len(groups) == 1:
        (group,) = groups.values()
        group["targets"] = ["Linear"]
        ignore = [name for name in linear_names if name not in plan]
    formats = {entry.format for entry in plan.values()}
    return {
        "quant_method": "compressed-tensors",
        "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "quantization_status": "compressed",
        "config_groups": {f"group_{i}": group for i, group in enumerate(groups.values())},
        "ignore": ignore,
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "version": CT_VERSION,
    }


def export_compressed_tensors(
    model: nn.Module, tokenizer: Any, directory: str | Path, *, overwrite: bool = False
) -> tuple[Path, list[str]]:
    """Write ``model`` (anybit-quantized, simulated or packed with codes kept) as a
    compressed-tensors checkpoint (module docstring); returns the directory and notes."""
    from anybit.io.checkpoint import dense_copy

    plan = plan_modules(model)
    if not plan:
        raise ExportError("the model has no quantized linear layers; nothing to export as compressed-tensors")
    notes = [
        f"{name}: quantized embedding written dense (compressed-tensors quantizes linears)"
        for name, module in quantized_modules(model).items()
        if isinstance(module, QEmbedding)
    ]
    dense, bias_notes = dense_copy(model)
    not_linear = [f"{name} ({type(dense.get_submodule(name)).__name__})" for name in plan
                  if not isinstance(dense.get_submodule(name), nn.Linear)]  # fmt: skip
    if not_linear:
        raise ExportError(
            "compressed-tensors quantizes nn.Linear layers; this architecture stores these as other "
            f"modules (GPT-2's Conv1D): {', '.join(not_linear[:4])}; export hf-dequantized instead"
        )
    notes += bias_notes
    state = dense.state_dict()
    for name, entry in plan.items():
        state.pop(f"{name}.weight")
        state.update({f"{name}.{key}": value for key, value in entry.tensors.items()})
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        dense.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
        config_path = Path(tmp) / "config.json"
        config = json.loads(config_path.read_text())
        linears = [name for name, module in dense.named_modules() if isinstance(module, nn.Linear)]
        config["quantization_config"] = quantization_config(plan, linears)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return Path(directory), notes
