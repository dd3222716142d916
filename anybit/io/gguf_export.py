"""Export to GGUF, llama.cpp's format, for models that came from a GGUF file.

What is written: one ``.gguf`` file with the source GGUF's metadata (architecture, hyperparameters,
tokenizer, chat template), where every quantized linear whose scheme is one of llama.cpp's
32-weight block types is stored as that type, bit for bit:

| anybit scheme (group 32, fp16 scales) | GGUF type | block (bytes) | weight |
|---|---|---|---|
| ``int4:g32:scale=fp16`` | Q4_0 | d f16, 16 B nibbles (18) | d * (n - 8) |
| ``uint4:g32:asym=float:scale=fp16`` | Q4_1 | d f16, m f16, 16 B nibbles (20) | d * n + m |
| ``int5:g32:scale=fp16`` | Q5_0 | d, 4 B high bits, 16 B (22) | d * (n - 16) |
| ``uint5:g32:asym=float:scale=fp16`` | Q5_1 | d, m, 4 B high bits, 16 B (24) | d * n + m |
| ``int8:g32:scale=fp16`` | Q8_0 | d f16, 32 x int8 (34) | d * q |
| ``mxfp4`` (``fp4_e2m1:g32:scale=e8m0``) | MXFP4 | E8M0 e, 16 B nibbles (17) | 2^(e-127) * e2m1 |

Nibble order within a block (all 4-bit types): byte ``j`` holds element ``j`` (low nibble) and
``j + 16`` (high);
Q5's 32 high bits are one little-endian uint32, bit ``j`` for element ``j``.

Tensors anybit did not change (norms, the embedding, an unquantized head) are copied from the source
file as they were, in their original GGUF type. Any other tensor anybit changed (a smoothed norm,
a bias from bias correction) is written as F32. Llama's attention Q and K rows are permuted back to
GGUF's rotary layout, as llama.cpp's converter does; transformers undoes that when it loads.

Why only GGUF sources: a GGUF file needs the tokenizer and hyperparameters in llama.cpp's keys.
For a GGUF source they are copied; for a Hugging Face directory they would have to be generated, as
llama.cpp's ``convert_hf_to_gguf.py`` does per architecture. That script is the route for those
models: export ``hf-dequantized``, then convert. Architectures: llama-family (the default model).

Refused with the reason (:class:`~anybit.errors.ExportError`): any other scheme (K-quants and
IQ types need super-block scales anybit does not produce; llama.cpp's NVFP4 has no tensor scale;
fp32 scales or other groups are not a GGUF block), tensors the source does not have (biases
added by bias correction), non-GGUF sources, and other architectures.

Verified (``tests/test_export_gguf.py``): gguf-py's dequantizer rebuilds anybit's weights bit for
bit, and transformers loads the file with the same logits as the anybit model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from anybit.errors import ExportError
from anybit.formats import get_format
from anybit.io.checkpoint import quantized_modules
from anybit.nn.qlinear import QLinear
from anybit.qtensor import QTensor

BLOCK = 32
ARCHITECTURES = ("llama",)
# scheme (format, zero point) -> (GGUF type name, offset added to the integer level to get n)
_BLOCK_TYPES: dict[tuple[str, str], tuple[str, int]] = {
    ("int4", "none"): ("Q4_0", 8),
    ("uint4", "float"): ("Q4_1", 0),
    ("int5", "none"): ("Q5_0", 16),
    ("uint5", "float"): ("Q5_1", 0),
    ("int8", "none"): ("Q8_0", 0),
}
SUPPORTED = (
    "int4:g32:scale=fp16 (Q4_0), uint4:g32:asym=float:scale=fp16 (Q4_1), int5:g32:scale=fp16 (Q5_0), "
    "uint5:g32:asym=float:scale=fp16 (Q5_1), int8:g32:scale=fp16 (Q8_0), mxfp4 (MXFP4)"
)


def block_type(q: QTensor, where: str) -> str:
    """The GGUF type of a quantized weight, or an ExportError naming the supported schemes."""
    scheme = q.scheme
    entry = _BLOCK_TYPES.get((scheme.format, scheme.zero_point))
    group = scheme.granularity.group_size if scheme.granularity.kind == "group" else None
    if scheme.format == "fp4_e2m1" and scheme.scale_format == "e8m0" and group == BLOCK:
        return "MXFP4"
    fp16_scales = not isinstance(q.scales, QTensor) and q.scales.dtype == torch.float16
    if entry is None or group != BLOCK or not fp16_scales:
        raise ExportError(f"{where}: {scheme} is not a GGUF block type; GGUF export takes {SUPPORTED}")
    return entry[0]


def encode_blocks(q: QTensor, where: str) -> tuple[str, np.ndarray]:
    """(GGUF type name, uint8 ``[N, K/32 * block bytes]``): the weight in llama.cpp's block layout."""
    name = block_type(q, where)
    n_rows, k = q.shape
    if name == "MXFP4":  # E8M0 byte, then the E2M1 codes (anybit's codes are the bit patterns)
        codes = q.codes.reshape(n_rows, k // BLOCK, BLOCK)
        exponents = q.scales.reshape(n_rows, -1, 1).contiguous().view(torch.uint8)
        nibbles = (codes[..., :16] | (codes[..., 16:] << 4)).to(torch.uint8)
        return name, torch.cat([exponents, nibbles], dim=-1).reshape(n_rows, -1).numpy()
    offset = _BLOCK_TYPES[(q.scheme.format, q.scheme.zero_point)][1]
    levels = get_format(q.scheme.format).decode(q.codes, torch.float64).round().to(torch.int64)
    n = (levels + offset).reshape(n_rows, k // BLOCK, BLOCK)  # [rows, blocks, 32]
    parts = [q.scales.reshape(n_rows, -1, 1).contiguous().view(torch.uint8)]  # d: fp16, 2 bytes
    if q.scheme.zero_point == "float":
        assert q.zeros is not None and q.zeros.dtype == torch.float16
        parts.append(q.zeros.reshape(n_rows, -1, 1).contiguous().view(torch.uint8))  # m: fp16
    if name == "Q8_0":
        parts.append(n.to(torch.int8).view(torch.uint8))
    else:
        if name in ("Q5_0", "Q5_1"):
            high = (n >> 4) & 1
            qh = (high << torch.arange(BLOCK)).sum(-1, keepdim=True).to(torch.int64)  # bit j: element j
            parts.append(qh.to(torch.int32).contiguous().view(torch.uint8))  # little-endian uint32
        low = n & 0xF
        parts.append((low[..., :16] | (low[..., 16:] << 4)).to(torch.uint8))
    blocks = torch.cat(parts, dim=-1)
    return name, blocks.reshape(n_rows, -1).numpy()


def _permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of a Q or K projection from Hugging Face's rotary layout to GGUF's (per head, the two
    halves interleaved), as llama.cpp's converter does."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _permute_rows(q: QTensor, n_head: int) -> QTensor:
    """The same row permutation applied to codes, scales and float offsets (all per row)."""
    from dataclasses import replace

    zeros = None if q.zeros is None else _permute_qk(q.zeros, n_head)
    return replace(q, codes=_permute_qk(q.codes, n_head), scales=_permute_qk(q.scales, n_head), zeros=zeros)


def _source_path(source: dict[str, Any] | None) -> Path:
    if not source or source.get("kind") != "gguf" or not source.get("path"):
        kind = (source or {}).get("kind", "unknown")
        raise ExportError(
            f"GGUF export needs a model loaded from a GGUF file (its tokenizer and hyperparameters are "
            f"copied); this model's source is {kind}. Export hf-dequantized and convert it with "
            "llama.cpp's convert_hf_to_gguf.py instead"
        )
    path = Path(source["path"])
    if not path.is_file():
        raise ExportError(f"the source GGUF {path} is gone; reinstall the package that provides it")
    return path


def _copy_metadata(reader: Any, writer: Any) -> None:
    import gguf

    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
            continue  # written by the writer itself / no longer describes the file
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub_type)


def export_gguf(
    model: nn.Module, source: dict[str, Any] | None, path: str | Path, *, overwrite: bool = False
) -> tuple[Path, list[str]]:
    """Write ``model`` (anybit-quantized, loaded from the GGUF described by ``source``, the
    checkpoint header's ``source``) as a GGUF file at ``path``; returns the path and notes."""
    import gguf

    out = Path(path)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; choose another path or pass overwrite/--force")
    reader = gguf.GGUFReader(str(_source_path(source)))
    arch = str(reader.fields["general.architecture"].contents())
    if arch not in ARCHITECTURES:
        raise ExportError(
            f"GGUF export supports the {', '.join(ARCHITECTURES)} architecture; the source is {arch}"
        )
    plan: dict[str, QLinear] = {}
    problems = []
    for name, module in quantized_modules(model).items():
        if not isinstance(module, QLinear):
            continue
        if module.qweight is None:
            problems.append(
                f"{name}: packed without its codes (pack(keep_qtensor=False)); reload the checkpoint"
            )
            continue
        try:
            block_type(module.qweight, name)
        except ExportError as err:
            problems.append(str(err))
            continue
        plan[name] = module
    if problems:
        raise ExportError("cannot export to GGUF:\n  " + "\n  ".join(problems[:8]))

    config = model.config
    n_head, n_kv_head = config.num_attention_heads, config.num_key_value_heads
    tensor_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    source_tensors = {t.name: t for t in reader.tensors}
    dense = model.state_dict()
    notes: list[str] = []
    written: dict[str, tuple[np.ndarray, Any]] = {}
    for key, value in dense.items():
        module_name, _, leaf = key.rpartition(".")
        if ".act_quant" in key:
            if not any("activation" in note for note in notes):
                notes.append(
                    "activation quantization is not stored in GGUF (llama.cpp quantizes activations itself)"
                )
            continue
        gguf_base = tensor_map.get_name(module_name)
        if gguf_base is None:
            if key.endswith("rotary_emb.inv_freq"):
                continue
            raise ExportError(f"{key} has no GGUF tensor name for {arch}")
        gguf_name = f"{gguf_base}.{leaf}"
        heads = n_head if gguf_base.endswith("attn_q") else n_kv_head if gguf_base.endswith("attn_k") else 0
        if module_name in plan and leaf == "weight":
            qweight = plan[module_name].qweight
            assert qweight is not None
            qtype, blocks = encode_blocks(_permute_rows(qweight, heads) if heads else qweight, module_name)
            written[gguf_name] = (blocks, gguf.GGMLQuantizationType[qtype])
            continue
        tensor = value.detach().float()
        tensor = _permute_qk(tensor, heads) if heads and leaf == "weight" else tensor
        original = source_tensors.get(gguf_name)
        if original is not None:
            unchanged = torch.from_numpy(
                gguf.quants.dequantize(original.data, original.tensor_type).astype(np.float32)
            ).reshape(tensor.shape)
            if torch.equal(unchanged, tensor):  # copy it as it was, in its own type
                written[gguf_name] = (np.asarray(original.data), original.tensor_type)
                continue
        written[gguf_name] = (tensor.numpy(), gguf.GGMLQuantizationType.F32)
    if config.tie_word_embeddings:
        written.pop("output.weight", None)  # tied: llama.cpp reads the head from token_embd.weight
    new = sorted(n for n in written if n not in source_tensors and n != "output.weight")
    if new:  # e.g. biases added by bias correction (AdaQuant): not part of the source's layout
        raise ExportError(
            f"the model has tensors its GGUF source has not ({', '.join(new[:4])}); GGUF export keeps the "
            "source's layout, so quantize without bias correction, or export compressed-tensors"
        )
    elif "output.weight" not in source_tensors:
        notes.append("lm_head is written as output.weight (the source tied it to token_embd.weight)")

    out.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(handle)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        _copy_metadata(reader, writer)
        for name in [t.name for t in reader.tensors] + [n for n in written if n not in source_tensors]:
            if name not in written:
                original = source_tensors[name]
                written[name] = (np.asarray(original.data), original.tensor_type)
            data, qtype = written[name]
            raw_dtype = qtype if data.dtype == np.uint8 else None  # bytes of a block type
            writer.add_tensor(name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out, notes
