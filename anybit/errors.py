"""Exceptions raised by anybit.

Every error a user can cause is one of these, with a message that names the input, says what is
wrong and says what to do. They subclass ``ValueError``/``RuntimeError`` so that generic handlers
still work, and ``AnybitError`` so that the CLI can print them without a traceback.
"""

from __future__ import annotations


class AnybitError(Exception):
    """Base class of every anybit error."""


class FormatError(AnybitError, ValueError):
    """An unknown or invalid number-format name or parameter."""


class SchemeError(AnybitError, ValueError):
    """An invalid quantization scheme, scheme string or recipe."""


class ShapeError(AnybitError, ValueError):
    """A tensor whose shape does not fit the scheme (e.g. a group size that does not divide it)."""


class InputError(AnybitError, ValueError):
    """Invalid tensor contents: NaN/Inf, empty, wrong dtype."""


class CheckpointError(AnybitError, RuntimeError):
    """A checkpoint that is missing, corrupt, truncated or of an unknown schema version."""


class ModelError(AnybitError, RuntimeError):
    """A model source that cannot be loaded or an unsupported architecture."""


class DataError(AnybitError, RuntimeError):
    """A text corpus that cannot be found, read, or is too short."""


class AlgorithmError(AnybitError, ValueError):
    """An algorithm that cannot serve the requested scheme or configuration."""


class KernelError(AnybitError, ValueError):
    """An unsupported kernel/format pair, a shape mismatch or a bad buffer."""


class ExportError(AnybitError, ValueError):
    """A model or scheme that the chosen export format cannot express."""
