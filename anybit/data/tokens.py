"""Token ids for evaluation and calibration, taken deterministically from corpus text.

Evaluation uses the *first* ``n_tokens`` tokens of the evaluation text (optionally after one BOS),
so every method is scored on exactly the same tokens. Calibration draws ``n_samples`` windows of
``seq_len`` tokens at seeded random positions of the calibration text, as GPTQ-style methods expect.
The text is tokenized as one string without special tokens (documents already joined with a blank
line, see :func:`anybit.data.corpora.join_documents`); tokenizing a ~4 MB corpus takes a few seconds,
so ids of large texts are cached in ``<cache>/tokens/`` keyed by the text's sha256 and the
tokenizer's identity (a hash of its serialized definition).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anybit.data.cache import atomic_write_bytes, cache_root, sha256_text
from anybit.data.corpora import DOCUMENT_SEPARATOR, join_documents
from anybit.errors import DataError

__all__ = [
    "DOCUMENT_SEPARATOR",
    "calibration_samples",
    "evaluation_tokens",
    "join_documents",
    "tokenize",
    "tokenizer_identity",
]

# smaller texts tokenize in milliseconds; caching them would only litter the cache
_CACHE_MIN_CHARS = 200_000


def _as_text(text: Any) -> str:
    """Accept a string or anything with a ``.text`` (a :class:`CorpusPart` or :class:`Corpus`)."""
    return text if isinstance(text, str) else text.text


def tokenizer_identity(tokenizer: Any) -> str | None:
    """A stable hash naming what the tokenizer does, or None if it cannot be determined."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        return hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if callable(get_vocab):
        vocab = json.dumps(sorted(get_vocab().items()), ensure_ascii=False)
        return hashlib.sha256(f"{type(tokenizer).__name__}\0{vocab}".encode()).hexdigest()
    return None


def _encode(tokenizer: Any, text: str) -> list[int]:
    # verbose=False: a 4 MB text is far longer than model_max_length, on purpose
    encoded = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)
    return list(encoded["input_ids"])


def tokenize(
    tokenizer: Any, text: str, *, use_cache: bool = True, cache_dir: str | Path | None = None
) -> torch.Tensor:
    """All token ids of ``text`` (no special tokens) as a 1-D LongTensor, cached for large texts."""
    text = _as_text(text)
    if not text.strip():
        raise DataError("cannot tokenize an empty text; check the corpus or file")
    identity = tokenizer_identity(tokenizer) if use_cache and len(text) >= _CACHE_MIN_CHARS else None
    path = None
    if identity is not None:
        key = hashlib.sha256(f"{identity}\0{sha256_text(text)}".encode()).hexdigest()[:32]
        path = cache_root(cache_dir) / "tokens" / f"{key}.npy"
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False).astype(np.int64))
        except (OSError, ValueError):
            pass
    ids = torch.tensor(_encode(tokenizer, text), dtype=torch.long)
    if path is not None:
        buffer = io.BytesIO()
        dtype = np.int32 if (ids.numel() == 0 or int(ids.max()) < 2**31) else np.int64
        np.save(buffer, ids.numpy().astype(dtype), allow_pickle=False)
        atomic_write_bytes(path, buffer.getvalue())
    return ids


def _bos_id(tokenizer: Any) -> int:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise DataError("the tokenizer has no BOS token; ask for bos=False")
    return int(bos)


def evaluation_tokens(tokenizer: Any, corpus_part_text: str, n_tokens: int | None, bos: bool) -> torch.Tensor:
    """The first ``n_tokens`` tokens of the text (all if None), as a 1-D LongTensor.

    With ``bos`` the tensor starts with the tokenizer's BOS id, which counts toward ``n_tokens``.
    Raises :class:`DataError` if the text has fewer tokens than asked for.
    """
    if n_tokens is not None and n_tokens < 1:
        raise DataError(f"n_tokens must be at least 1, got {n_tokens}")
    ids = tokenize(tokenizer, corpus_part_text)
    if bos:
        ids = torch.cat([torch.tensor([_bos_id(tokenizer)], dtype=torch.long), ids])
    if n_tokens is None:
        return ids
    if ids.numel() < n_tokens:
        raise DataError(
            f"the evaluation text has {ids.numel()} tokens with this tokenizer"
            f"{' (including BOS)' if bos else ''}, fewer than the {n_tokens} requested; "
            "ask for fewer tokens or use a longer text"
        )
    return ids[:n_tokens].clone()


def calibration_samples(
    tokenizer: Any, text: str, n_samples: int, seq_len: int, seed: int, *, bos: bool = False
) -> torch.Tensor:
    """``n_samples`` windows of ``seq_len`` tokens at seeded random offsets: LongTensor [n, seq_len].

    Windows may overlap each other (they are drawn independently, like GPTQ's calibration); the same
    text, tokenizer and seed always give the same windows. With ``bos`` each row is BOS followed by a
    window of ``seq_len - 1`` tokens.
    """
    if n_samples < 1 or seq_len < 1 or (bos and seq_len < 2):
        raise DataError(f"need n_samples >= 1 and seq_len >= {2 if bos else 1}, got {n_samples}, {seq_len}")
    ids = tokenize(tokenizer, text)
    window = seq_len - 1 if bos else seq_len
    if ids.numel() < window:
        raise DataError(
            f"the calibration text has {ids.numel()} tokens with this tokenizer, fewer than one window "
            f"of {window}; use a shorter seq_len or a longer text"
        )
    generator = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(0, ids.numel() - window + 1, (n_samples,), generator=generator)
    rows = torch.stack([ids[s : s + window] for s in starts.tolist()])
    if bos:
        rows = torch.cat([torch.full((n_samples, 1), _bos_id(tokenizer), dtype=torch.long), rows], dim=1)
    return rows
