"""anybit checkpoints: save, verify, load; and the ``hf-dequantized`` export.

A checkpoint is a directory:

- ``anybit.safetensors``: every quantized module's fields (:mod:`anybit.io.qtensor_io`), static
  activation scales (``<module>.act.scale``/``.act.zero``) and every other parameter of the model
  (embeddings, norms, biases) as it is;
- ``anybit.json``: the header: ``format`` ("anybit-checkpoint"), ``schema_version``, the anybit
  version, the source model's identity (path, size, sha256), the recipe, the architecture, one
  entry per quantized module (kind, weight description, activation scheme, bits) and the sha256 and
  size of every other file;
- ``config.json`` and the tokenizer files, so the architecture can be rebuilt offline.

Writing goes to a temporary sibling directory that is renamed into place at the end, so an
interrupted save never leaves a half-written checkpoint. Loading verifies the schema version and the
checksums before reading any tensor. The header has no timestamp: the same command gives the same
bytes.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from anybit.errors import CheckpointError
from anybit.io.qtensor_io import qtensor_from_entries, qtensor_to_entries
from anybit.models.adapters import set_module
from anybit.nn import ActQuantizer, QEmbedding, QLinear
from anybit.scheme import parse_scheme

FORMAT_NAME = "anybit-checkpoint"
SCHEMA_VERSION = 1
HEADER = "anybit.json"
TENSORS = "anybit.safetensors"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def quantized_modules(model: nn.Module) -> dict[str, QLinear | QEmbedding]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QLinear | QEmbedding)}


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, overwrite: bool = False):
    """Yield a temporary directory next to ``target`` that becomes ``target`` on success."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise CheckpointError(
            f"output directory {target} already exists; choose another path or pass --force"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is a normal directory
        for file in tmp.rglob("*"):
            if file.is_file():
                os.chmod(file, 0o644)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _save_config_and_tokenizer(model: nn.Module, tokenizer: Any, directory: Path) -> None:
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def save_checkpoint(
    model: nn.Module,
    directory: str | Path,
    *,
    tokenizer: Any = None,
    recipe: Any = None,
    source: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the quantized ``model`` as an anybit checkpoint (atomically)."""
    from anybit import __version__

    qmods = quantized_modules(model)
    if not qmods:
        raise CheckpointError("the model has no quantized modules; run anybit.quantize_model first")
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, Any] = {}
    for name, module in qmods.items():
        if module.qweight is None:
            raise CheckpointError(
                f"{name} was packed with keep_qtensor=False and its codes are gone; save before packing"
            )
        entries, meta = qtensor_to_entries(module.qweight, f"{name}.qweight")
        tensors.update(entries)
        info: dict[str, Any] = {
            "kind": "linear" if isinstance(module, QLinear) else "embedding",
            "qweight": meta,
            "bits": module.qweight.total_bits,
        }
        if isinstance(module, QLinear):
            info["bias"] = module.bias is not None
            if module.bias is not None:
                tensors[f"{name}.bias"] = module.bias.contiguous()
            if module.act_quant is not None:
                info["acts"] = str(module.act_quant.scheme)
                if module.act_quant.scale is not None:
                    tensors[f"{name}.act.scale"] = module.act_quant.scale.contiguous()
                    if module.act_quant.zero is not None:
                        tensors[f"{name}.act.zero"] = module.act_quant.zero.contiguous()
        else:
            info["padding_idx"] = module.padding_idx
        layers[name] = info
    skip = tuple(f"{n}." for n in qmods)
    seen: set[int] = set()
    for key, value in model.state_dict(keep_vars=True).items():
        if key.startswith(skip):
            continue
        if value.data_ptr() in seen and getattr(model.config, "tie_word_embeddings", False):
            continue  # tied weight: stored once, re-tied on load
        seen.add(value.data_ptr())
        tensors[key] = value.detach().contiguous().clone()
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / TENSORS), metadata={"format": FORMAT_NAME})
        _save_config_and_tokenizer(model, tokenizer, tmp)
        files = {
            p.name: {"sha256": _sha256(p), "size": p.stat().st_size}
            for p in sorted(tmp.iterdir())
            if p.is_file()
        }
        header = {
            "format": FORMAT_NAME,
            "schema_version": SCHEMA_VERSION,
            "anybit_version": __version__,
            "architecture": getattr(model.config, "model_type", None),
            "source": source,
            "recipe": recipe.to_dict() if recipe is not None else None,
            "layers": layers,
            "files": files,
        }
        (tmp / HEADER).write_text(json.dumps(header, indent=1, sort_keys=True) + "\n")
    return Path(directory)


def read_header(directory: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """The checkpoint header, after checking its schema and (``verify``) every file's checksum."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist or is not a directory")
    path = directory / HEADER
    if not path.is_file():
        raise CheckpointError(f"{directory} is not an anybit checkpoint: {HEADER} is missing")
    try:
        header = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is corrupt (not JSON: {err}); re-create the checkpoint") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not an anybit checkpoint header")
    if header.get("schema_version") != SCHEMA_VERSION:
        raise CheckpointError(
            f"{directory}: checkpoint schema version {header.get('schema_version')} is not supported "
            f"(this anybit reads version {SCHEMA_VERSION}); re-create it with this anybit version"
        )
    if verify:
        for name, info in header.get("files", {}).items():
            file = directory / name
            if not file.is_file():
                raise CheckpointError(f"{directory}: file {name} listed in the header is missing")
            if file.stat().st_size != info["size"]:
                raise CheckpointError(
                    f"{directory}: {name} has {file.stat().st_size} bytes, the header says {info['size']}; "
                    "the checkpoint is truncated or modified"
                )
            if _sha256(file) != info["sha256"]:
                raise CheckpointError(
                    f"{directory}: {name} fails its sha256 check; the checkpoint is corrupt"
                )
    return header


def load_checkpoint(directory: str | Path, *, verify: bool = True) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Rebuild ``(model, tokenizer, header)`` from an anybit checkpoint, verifying it first."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from anybit.models.adapters import get_adapter

    directory = Path(directory)
    header = read_header(directory, verify=verify)
    try:
        tensors = load_file(str(directory / TENSORS))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{directory / TENSORS} cannot be read ({err}); the checkpoint is corrupt"
        ) from None
    config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    get_adapter(model).prepare(model)
    model.eval()
    for name, info in header["layers"].items():
        qweight = qtensor_from_entries(tensors, f"{name}.qweight", info["qweight"])
        if info["kind"] == "linear":
            act = None
            if "acts" in info:
                act = ActQuantizer(parse_scheme(info["acts"]), f"{name} input")
                if f"{name}.act.scale" in tensors:
                    act.load_static(tensors[f"{name}.act.scale"], tensors.get(f"{name}.act.zero"))
            bias = tensors.get(f"{name}.bias") if info.get("bias") else None
            out_f, in_f = qweight.shape
            module: nn.Module = QLinear(in_f, out_f, qweight, bias, act, name)
        else:
            module = QEmbedding(qweight, info.get("padding_idx"), name)
        set_module(model, name, module)
    quantized = tuple(f"{n}." for n in header["layers"])
    rest = {k: v for k, v in tensors.items() if not k.startswith(quantized)}
    result = model.load_state_dict(rest, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(quantized)]
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
        missing = [k for k in missing if "lm_head" not in k]
    missing = [k for k in missing if not k.endswith(("rotary_emb.inv_freq", "original_inv_freq"))]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{directory}: tensors do not match the architecture (missing {missing[:3]}, unexpected "
            f"{result.unexpected_keys[:3]}); the checkpoint is corrupt or for another model"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception:  # a checkpoint saved without a tokenizer is still usable through the API
        tokenizer = None
    return model, tokenizer, header


# config flags that give a family's linears a bias (Llama/Mistral-style configs), by linear name
_BIAS_FLAGS = (
    ("attention_bias", ("q_proj", "k_proj", "v_proj", "o_proj")),
    ("mlp_bias", ("gate_proj", "up_proj", "down_proj")),
)


@torch.no_grad()
def _declare_biases(model: nn.Module) -> list[str]:
    """Make every bias of ``model`` one that ``from_pretrained`` will load.

    Bias correction (AdaQuant) gives bias-free linears a bias; an HF config that does not declare
    it would silently drop those tensors on load. Where the config has a flag for them (Llama's
    ``attention_bias``/``mlp_bias``) it is set and the sibling linears get zero biases; any other
    tensor the architecture would not load is an error rather than a silently different model.
    """
    notes: list[str] = []
    config = model.config
    names = dict(model.named_modules())
    for flag, linears in _BIAS_FLAGS:
        if not hasattr(config, flag) or getattr(config, flag):
            continue
        group = [(n, m) for n, m in names.items() if isinstance(m, nn.Linear) and n.split(".")[-1] in linears]
        if not any(m.bias is not None for _, m in group):
            continue
        setattr(config, flag, True)
        for _, module in group:
            if module.bias is None:
                module.bias = nn.Parameter(torch.zeros(module.out_features, dtype=module.weight.dtype))
        notes.append(f"config.{flag} set to true: bias correction gave these linears biases")
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(copy.deepcopy(config))
    dropped = sorted(set(model.state_dict()) - set(fresh.state_dict()))
    if dropped:
        raise CheckpointError(
            f"a transformers {type(model).__name__} would not load {len(dropped)} exported tensors "
            f"(e.g. {dropped[:3]}): this architecture's config cannot declare them (bias correction "
            "on a family without bias flags?). Quantize without bias correction "
            "(--opt adaquant.bias_correction=false) or keep the anybit checkpoint"
        )
    return notes


def dense_copy(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A deep copy of ``model`` as plain transformers knows it: every ``QLinear``/``QEmbedding``
    replaced by its dequantized ``nn.Linear``/``nn.Embedding``, the adapter's layout restored, the
    biases bias correction added declared in the config (their notes returned), and the source's
    quantizer metadata (a GGUF load's ``hf_quantizer``/``quantization_config``) dropped. Both
    exports start from it."""
    from anybit.models.adapters import get_adapter

    dense = copy.deepcopy(model)
    for name, module in quantized_modules(dense).items():
        set_module(dense, name, module.to_linear() if isinstance(module, QLinear) else module.to_embedding())
    get_adapter(dense).restore(dense)
    notes = _declare_biases(dense)
    if hasattr(dense, "hf_quantizer"):
        dense.hf_quantizer = None
    if hasattr(dense.config, "quantization_config"):
        delattr(dense.config, "quantization_config")
    return dense, notes


def export_hf_dequantized(
    model: nn.Module, tokenizer: Any, directory: str | Path, *, overwrite: bool = False
) -> tuple[Path, list[str]]:
    """A plain transformers directory with dequantized weights (loadable by ``from_pretrained``).

    Activation quantization cannot be expressed there and is dropped (returned as a note).
    """
    notes: list[str] = []
    if any(isinstance(m, QLinear) and m.act_quant is not None for m in quantized_modules(model).values()):
        notes.append("activation quantization is not part of a dequantized export (weights only)")
    exported, bias_notes = dense_copy(model)
    notes += bias_notes
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        exported.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return Path(directory), notes
