"""Loading the compiled extension and choosing the instruction set its kernels run with.

The extension ``anybit._kernels`` is built by the package's own build (scikit-build-core + CMake,
``pip install .`` or ``pip install -e .``). It holds four copies of every kernel, compiled for
AVX-512 (F/BW/VL/DQ/VNNI) + GFNI (``avx512gfni``: the same code, but the bit-field kernel extracts
fields with one GFNI affine instead of a shift and an AND), AVX-512, AVX2+FMA and plain x86-64
(``scalar``); which copy runs is chosen per call:

1. the innermost :func:`use_isa` context (tests use it to walk every path), else
2. the ``ANYBIT_ISA`` environment variable (``avx512gfni``, ``avx512``, ``avx2`` or ``scalar``), else
3. the best ISA the CPU supports.

Asking for an ISA the CPU cannot run is a :class:`~anybit.errors.KernelError` (never a crash with
an illegal instruction). When the extension is not built, :func:`extension` raises a
``KernelError`` that says how to build it; :data:`EXTENSION_ERROR` holds the import error so that
tests can skip with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from anybit.errors import KernelError

ISA_ENV = "ANYBIT_ISA"
ISAS: tuple[str, ...] = ("avx512gfni", "avx512", "avx2", "scalar")  # best first

try:
    from anybit import _kernels as _EXT  # type: ignore[attr-defined]

    EXTENSION_ERROR: str | None = None
except ImportError as _err:  # not built: the pure-torch references still work
    _EXT = None
    EXTENSION_ERROR = f"anybit._kernels is not built ({_err}); build it with `python -m pip install -e .`"

_override: list[str] = []


def extension() -> ModuleType:
    """The compiled module, or a ``KernelError`` saying how to build it."""
    if _EXT is None:
        raise KernelError(str(EXTENSION_ERROR))
    return _EXT


def is_available() -> bool:
    """Whether the compiled kernels can be used in this process."""
    return _EXT is not None


_SUPPORTED: tuple[str, ...] = ()


def supported_isas() -> tuple[str, ...]:
    """ISAs this CPU can run, best first (always ends with ``scalar``); asked once per process (the
    answer cannot change, and every matmul asks)."""
    global _SUPPORTED
    if not _SUPPORTED:
        _SUPPORTED = tuple(extension().supported_isas())
    return _SUPPORTED


def _check_isa(name: str, source: str) -> str:
    key = name.strip().lower()
    if key not in ISAS:
        raise KernelError(f"{source}: unknown ISA {name!r}; use one of {', '.join(ISAS)}")
    supported = supported_isas()
    if key not in supported:
        raise KernelError(
            f"{source}: this CPU cannot run the {key} kernels; it supports {', '.join(supported)} "
            f"(features: {extension().cpu_features()})"
        )
    return key


def active_isa() -> str:
    """The ISA the next kernel call will use (see the module docstring for the order)."""
    if _override:
        return _override[-1]
    env = os.environ.get(ISA_ENV, "").strip()
    if env:
        return _check_isa(env, f"environment variable {ISA_ENV}")
    return supported_isas()[0]


@contextmanager
def use_isa(name: str) -> Iterator[str]:
    """Run the kernels called inside the ``with`` block on ``name`` (one of :data:`ISAS`)."""
    key = _check_isa(name, "use_isa")
    _override.append(key)
    try:
        yield key
    finally:
        _override.pop()
