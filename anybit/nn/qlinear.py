"""``QLinear`` and ``QEmbedding``: modules holding a quantized weight.

Simulated mode (this module): the module keeps the ``QTensor`` (what a checkpoint stores) and its
dequantized float weight, and computes ``F.linear(act_quant(x), dequantized_weight, bias)``. Any
format and scheme works, which is what accuracy research needs. The packed mode (real low-bit
storage running anybit's CPU kernels) replaces the float weight by packed codes.

Printing a model shows how each layer is quantized (``extra_repr``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anybit.nn.act_quant import ActQuantizer
from anybit.qtensor import QTensor


class QLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        qweight: QTensor,
        bias: torch.Tensor | None = None,
        act_quant: ActQuantizer | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        if qweight.shape != (out_features, in_features):
            raise ValueError(
                f"{name}: quantized weight shape {qweight.shape} != ({out_features}, {in_features})"
            )
        self.in_features, self.out_features, self.name = in_features, out_features, name
        self.qweight = qweight
        self.register_buffer("weight", qweight.dequantize(torch.float32))
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.act_quant = act_quant

    @staticmethod
    def from_linear(
        linear: nn.Linear, qweight: QTensor, act_quant: ActQuantizer | None = None, name: str = ""
    ) -> QLinear:
        return QLinear(linear.in_features, linear.out_features, qweight, linear.bias, act_quant, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_quant is not None:
            x = self.act_quant(x)
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the dequantized weight (activation quantization is dropped)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        acts = f", acts={self.act_quant.scheme}" if self.act_quant is not None else ""
        return (
            f"in={self.in_features}, out={self.out_features}, weights={self.qweight.scheme}, "
            f"bpw={self.qweight.bits_per_weight:.3f}{acts}"
        )


class QEmbedding(nn.Module):
    """An embedding table stored quantized (rows = tokens; groups run along the hidden dim)."""

    def __init__(self, qweight: QTensor, padding_idx: int | None = None, name: str = "") -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = qweight.shape
        self.padding_idx, self.name = padding_idx, name
        self.qweight = qweight
        self.register_buffer("weight", qweight.dequantize(torch.float32))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight, self.padding_idx)

    def to_embedding(self) -> nn.Embedding:
        emb = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx)
        with torch.no_grad():
            emb.weight.copy_(self.weight)
        return emb

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}x{self.embedding_dim}, weights={self.qweight.scheme}"
