"""Quantized modules: :class:`QLinear`, :class:`QEmbedding` and :class:`ActQuantizer`."""

from anybit.nn.act_quant import ActQuantizer
from anybit.nn.qlinear import QEmbedding, QLinear, pack_model

__all__ = ["ActQuantizer", "QEmbedding", "QLinear", "pack_model"]
