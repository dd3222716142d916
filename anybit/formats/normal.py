"""NormalFloat ``nf{k}`` (QLoRA, Dettmers et al. 2023), k = 2..8.

Spec. Levels are quantiles of N(0, 1), normalized to [-1, 1], with an exact zero and one more
positive level than negative ones (``2^(k-1)`` positive, ``2^(k-1) - 1`` negative, and 0), built as
bitsandbytes' ``create_normal_map(offset, use_extra_value=True)`` builds NF4:

    positive = Phi^-1(linspace(offset, 0.5, 2^(k-1) + 1)[:-1])
    negative = -Phi^-1(linspace(offset, 0.5, 2^(k-1))[:-1])
    levels   = sort(positive + [0] + negative) / max

with the same float32 arithmetic, so ``nf4`` equals bitsandbytes' NF4 table bit for bit
(tested). ``offset`` is 0.9677083 for k = 4 (the constant in bitsandbytes) and, for other k, the
same rule that gives it: ``1 - (1/(2(2^k - 1)) + 1/(2 * 2^k)) / 2``, the mean of the outermost
quantile positions of a (2^k - 1)- and a 2^k-point grid. Codes are level indices (0 = -1.0).
"""

from __future__ import annotations

import torch
from scipy.stats import norm

from anybit.errors import FormatError
from anybit.formats.base import NumberFormat

NF4_OFFSET = 0.9677083  # bitsandbytes create_normal_map default


def normal_float_offset(bits: int) -> float:
    if bits == 4:
        return NF4_OFFSET
    return 1 - (1 / (2 * (2**bits - 1)) + 1 / (2 * 2**bits)) / 2


def normal_float_levels(bits: int) -> torch.Tensor:
    """The NF-k levels as float32 (bitsandbytes' arithmetic), returned as float64."""
    offset = normal_float_offset(bits)
    half = 2 ** (bits - 1)
    positive = norm.ppf(torch.linspace(offset, 0.5, half + 1)[:-1].numpy()).tolist()
    negative = (-norm.ppf(torch.linspace(offset, 0.5, half)[:-1].numpy())).tolist()
    values = torch.tensor([*positive, 0.0, *negative], dtype=torch.float32)
    values = values.sort().values
    values = values / values.max()
    return values.double()


def make_normal_float(bits: int) -> NumberFormat:
    if not 2 <= bits <= 8:
        raise FormatError(f"nf formats take 2..8 bits, got nf{bits}; e.g. nf4, nf3")
    return NumberFormat.from_values(
        f"nf{bits}",
        bits,
        normal_float_levels(bits),
        f"NormalFloat{bits} (QLoRA): normal quantiles, exact zero, codes are level indices",
    )
