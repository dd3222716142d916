"""RTN: round-to-nearest with the scheme's own scale choice (min-max, percentile or MSE clipping).

The baseline every other method is measured against; needs no calibration data.
"""

from __future__ import annotations

import time

from anybit.algorithms.base import Algorithm, BlockContext, register
from anybit.qtensor import QTensor
from anybit.quantizer import quantize


@register
class RoundToNearest(Algorithm):
    name = "rtn"
    kind = "weights"
    needs_calibration = False
    paper = "round-to-nearest baseline"

    def quantize_block(self, ctx: BlockContext) -> dict[str, QTensor]:
        out = {}
        for name, linear in ctx.linears.items():
            scheme = ctx.plans[name].weights
            assert scheme is not None
            tic = time.perf_counter()
            out[name] = quantize(linear.weight.detach(), scheme, name=ctx.full_name(name))
            self.layer_seconds[ctx.full_name(name)] = time.perf_counter() - tic
        return out
