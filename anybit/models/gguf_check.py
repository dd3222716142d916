"""Fast structural validation of a GGUF file before transformers touches it.

Why: transformers' GGUF loader reads the file through numpy memmaps and fails deep inside (struct
errors, IndexError, or a silently short tensor) when the file is truncated or is not a GGUF at all.
Walking the header ourselves costs ~50 ms, lets us name the exact problem (bad magic, truncated
header, tensor *X* runs past the end of the file) and gives us the architecture, so an unsupported
model is rejected before several seconds of dequantization.

Layout (GGUF v2/v3, little endian): magic ``GGUF``, u32 version, u64 tensor count, u64 key/value
count; key/values (string key, u32 type, value); tensor infos (string name, u32 n_dims, u64 dims,
u32 ggml type, u64 offset); padding to ``general.alignment`` (default 32); tensor data.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

from anybit.errors import ModelError

_MAGIC = b"GGUF"
# GGUF value types -> struct format of one scalar (8 = string, 9 = array are handled apart).
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_DEFAULT_ALIGNMENT = 32


@dataclass
class GGUFInfo:
    """What the header says: enough to decide whether and how to load the file."""

    version: int
    architecture: str | None
    name: str | None
    n_tensors: int
    data_offset: int
    data_bytes: int
    metadata: dict[str, object] = field(default_factory=dict)  # scalars and short strings only


class _Truncated(Exception):
    """Raised internally when a read runs past the end of the file."""


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, fmt: str) -> object:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise _Truncated
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = int(self.take("Q"))  # type: ignore[arg-type]
        if self.pos + n > len(self.buf):
            raise _Truncated
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, *, keep: bool) -> object:
        if vtype in _SCALAR:
            return self.take(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type = int(self.take("I"))  # type: ignore[arg-type]
            count = int(self.take("Q"))  # type: ignore[arg-type]
            if item_type in _SCALAR:  # skip fixed-size items in one step
                nbytes = struct.calcsize("<" + _SCALAR[item_type]) * count
                if self.pos + nbytes > len(self.buf):
                    raise _Truncated
                self.pos += nbytes
            else:
                for _ in range(count):
                    self.value(item_type, keep=False)
            return f"<array of {count}>" if keep else None
        raise ValueError(f"unknown GGUF value type {vtype}")


def _tensor_nbytes(ggml_type: int, dims: list[int]) -> int:
    import gguf  # local: keeps `import anybit.models` cheap

    try:
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError) as exc:
        raise ValueError(f"unknown ggml tensor type {ggml_type}") from exc
    return math.prod(dims) // block * type_size


def inspect_gguf(path: str | Path) -> GGUFInfo:
    """Validate the structure of a GGUF file and return its header summary.

    Raises ``ModelError`` naming the file for: not a GGUF (bad magic), unsupported version, a header
    cut short, an unknown value/tensor type, or tensor data that runs past the end of the file
    (a truncated download or copy).
    """
    path = Path(path)
    size = path.stat().st_size
    # The header of a real model is a few MB at most (vocabulary); read it, not the whole file.
    with path.open("rb") as f:
        head = f.read(min(size, 64 << 20))
    fix = "re-create the file (for a packaged model reinstall its package), or pass a different source"
    if head[:4] != _MAGIC:
        raise ModelError(
            f"{path}: not a GGUF file (first bytes {head[:4]!r}, expected b'GGUF'); it is corrupt or of "
            f"another format; {fix}"
        )
    r = _Reader(head)
    r.pos = 4
    try:
        version = int(r.take("I"))  # type: ignore[arg-type]
        if version not in (2, 3):
            raise ModelError(f"{path}: GGUF version {version} is not supported (2 or 3 are); {fix}")
        n_tensors = int(r.take("Q"))  # type: ignore[arg-type]
        n_kv = int(r.take("Q"))  # type: ignore[arg-type]
        if n_tensors > 1_000_000 or n_kv > 1_000_000:
            raise ValueError(f"implausible counts ({n_tensors} tensors, {n_kv} keys)")
        meta: dict[str, object] = {}
        for _ in range(n_kv):
            key = r.string()
            vtype = int(r.take("I"))  # type: ignore[arg-type]
            value = r.value(vtype, keep=True)
            if not isinstance(value, str) or len(value) < 256:
                meta[key] = value
        tensors: list[tuple[str, int, int]] = []  # name, offset, nbytes
        for _ in range(n_tensors):
            name = r.string()
            n_dims = int(r.take("I"))  # type: ignore[arg-type]
            if n_dims > 8:
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
            dims = [int(r.take("Q")) for _ in range(n_dims)]  # type: ignore[call-overload]
            ggml_type = int(r.take("I"))  # type: ignore[arg-type]
            offset = int(r.take("Q"))  # type: ignore[arg-type]
            tensors.append((name, offset, _tensor_nbytes(ggml_type, dims)))
    except _Truncated:
        raise ModelError(
            f"{path}: the GGUF header is cut short ({size} bytes); the file is truncated; {fix}"
        ) from None
    except ValueError as exc:
        raise ModelError(f"{path}: corrupt GGUF header ({exc}); {fix}") from None
    alignment = int(meta.get("general.alignment", _DEFAULT_ALIGNMENT))  # type: ignore[call-overload]
    data_offset = -(-r.pos // alignment) * alignment
    data_bytes = 0
    for name, offset, nbytes in tensors:
        end = data_offset + offset + nbytes
        if end > size:
            raise ModelError(
                f"{path}: tensor {name!r} needs bytes up to {end} but the file has only {size}; the file "
                f"is truncated; {fix}"
            )
        data_bytes = max(data_bytes, offset + nbytes)
    arch = meta.get("general.architecture")
    name = meta.get("general.name")
    return GGUFInfo(
        version=version,
        architecture=arch if isinstance(arch, str) else None,
        name=name if isinstance(name, str) else None,
        n_tensors=n_tensors,
        data_offset=data_offset,
        data_bytes=data_bytes,
        metadata=meta,
    )
