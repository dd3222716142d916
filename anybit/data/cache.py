"""Where anybit keeps downloaded packages, cleaned corpora and token ids.

Everything lives under one directory, ``$ANYBIT_CACHE`` or ``~/.cache/anybit``, so that a machine
fetches each Debian package once and later runs work offline. Files are written to a temporary name
and renamed, so an interrupted run never leaves a half-written file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def cache_root(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: ``override``, else ``$ANYBIT_CACHE``, else ``~/.cache/anybit``."""
    if override is not None:
        return Path(override)
    env = os.environ.get("ANYBIT_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "anybit"


def sha256_text(text: str) -> str:
    """Hex sha256 of the UTF-8 bytes of ``text`` (how manifests identify cleaned text)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache should be readable like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
