"""anybit: post-training quantization of LLMs to any bit-width and number format.

Core API::

    import anybit
    q = anybit.quantize(weight, "int4:g64:asym")     # -> QTensor (codes, scales, zeros, ids)
    w = q.dequantize()                                # reference dequantization
    w = anybit.fake_quantize(weight, "nvfp4")         # same values, no codes materialized
    anybit.get_format("fp8_e4m3").levels              # every representable value
"""

from anybit.errors import AnybitError
from anybit.formats import get_format
from anybit.qtensor import QTensor
from anybit.quantizer import fake_quantize, quantize
from anybit.scheme import PRESETS, Granularity, QScheme, parse_scheme

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AnybitError",
    "Granularity",
    "QScheme",
    "QTensor",
    "__version__",
    "fake_quantize",
    "get_format",
    "parse_scheme",
    "quantize",
]
