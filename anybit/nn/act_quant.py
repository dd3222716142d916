"""Activation quantizers: dynamic (scales from each input) or static (calibrated once).

- Dynamic: every call quantizes its input with the scheme (typically ``int8:token``: one scale per
  token, computed at run time, as W8A8 kernels do).
- Static: a per-tensor scale calibrated on calibration data. While ``observing``, the quantizer
  passes inputs through unchanged and records the range of each batch (min-max, or the scheme's
  percentile, e.g. ``int8:tensor:static:clip=p99.99``); ``freeze()`` then sets the scale from the
  widest range seen (the maximum over batches of each batch's range). An unfrozen static quantizer
  refuses to run rather than silently doing nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from anybit.errors import SchemeError
from anybit.grouping import as_rows, to_groups
from anybit.quantizer import fake_quantize, fake_quantize_static, static_scale
from anybit.scales import group_range
from anybit.scheme import QScheme


class ActQuantizer(nn.Module):
    def __init__(self, scheme: QScheme, name: str = "activation") -> None:
        super().__init__()
        if not scheme.dynamic and scheme.granularity.kind != "tensor":
            raise SchemeError(
                f"{name}: static activation scheme {scheme} must be per-tensor (:tensor:static)"
            )
        self.scheme = scheme
        self.name = name
        self.observing = False
        self.register_buffer("scale", None)
        self.register_buffer("zero", None)
        self._hi: torch.Tensor | None = None
        self._lo: torch.Tensor | None = None

    @property
    def calibrated(self) -> bool:
        return self.scheme.dynamic or self.scale is not None

    def observe(self) -> None:
        self.observing = True
        self._hi = self._lo = None

    def freeze(self) -> None:
        if self.scheme.dynamic:
            self.observing = False
            return
        if self._hi is None or self._lo is None:
            raise SchemeError(f"{self.name}: static activation quantizer saw no calibration data")
        self.scale, self.zero = static_scale(self._hi, self._lo, self.scheme)
        self.observing = False

    def load_static(self, scale: torch.Tensor, zero: torch.Tensor | None) -> None:
        self.scale, self.zero = scale.float(), None if zero is None else zero.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            if not self.scheme.dynamic:
                rows = as_rows(x.detach()).float()
                hi, lo = group_range(to_groups(rows, self.scheme.granularity), self.scheme)
                self._hi = hi if self._hi is None else torch.maximum(self._hi, hi)
                self._lo = lo if self._lo is None else torch.minimum(self._lo, lo)
            return x
        if self.scheme.dynamic:
            return fake_quantize(x, self.scheme, name=self.name)
        if self.scale is None:
            raise SchemeError(
                f"{self.name}: static activation quantizer is not calibrated; run calibration first"
            )
        return fake_quantize_static(x, self.scheme, self.scale, self.zero)

    def extra_repr(self) -> str:
        return f"{self.scheme}"
