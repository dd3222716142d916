"""Number formats by name: ``get_format("int4")``, ``get_format("fp8_e4m3")``, ...

See :data:`FORMAT_GRAMMAR` for every name that parses. Each family lives in its own module with its
spec in the docstring: :mod:`.integer`, :mod:`.floating`, :mod:`.normal`, :mod:`.dint`,
:mod:`.bitmod`, :mod:`.balance`.
"""

from anybit.formats.base import Format, FormatFamily, NumberFormat, check_finite
from anybit.formats.registry import FORMAT_GRAMMAR, format_examples, get_format

__all__ = [
    "FORMAT_GRAMMAR",
    "Format",
    "FormatFamily",
    "NumberFormat",
    "check_finite",
    "format_examples",
    "get_format",
]
