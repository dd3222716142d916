"""``QLinear`` and ``QEmbedding``: modules holding a quantized weight.

Simulated mode (default): the module keeps the ``QTensor`` (what a checkpoint stores) and its
dequantized float weight, and computes ``F.linear(act_quant(x), dequantized_weight, bias)``. Any
format and scheme works, which is what accuracy research needs.

Packed mode (``pack()``): the float weight is dropped and the codes are packed for anybit's CPU
kernels (:class:`anybit.kernels.PackedLinearWeight`). Weight-only schemes run the bit-field integer or
codebook kernels on float activations (after the activation quantizer, if any). With dynamic
``int8b:token`` activations (absmax / 127 per token, the kernels' own activation quantizer),
8-bit integer weights run the INT8 VNNI GEMM (W8A8) and DGQ dual-grained INT4 weights the W4A8
GEMM, with the same arithmetic as the simulated mode. ``pack(keep_qtensor=False)`` also frees the
unpacked codes, so resident memory is what the packed model really needs (it cannot be saved then).

Printing a model shows how each layer is quantized (``extra_repr``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anybit.errors import KernelError
from anybit.nn.act_quant import ActQuantizer
from anybit.qtensor import QTensor

KERNEL_INT8_ACTS = "int8b:token"  # the activation quantization the W8A8/W4A8 kernels perform


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
        self.qweight: QTensor | None = qweight
        self.scheme_str, self.bpw = str(qweight.scheme), qweight.bits_per_weight
        self.register_buffer("weight", qweight.dequantize(torch.float32))
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.act_quant = act_quant
        self.packed = None  # PackedLinearWeight once pack() ran

    @staticmethod
    def from_linear(
        linear: nn.Linear, qweight: QTensor, act_quant: ActQuantizer | None = None, name: str = ""
    ) -> QLinear:
        return QLinear(linear.in_features, linear.out_features, qweight, linear.bias, act_quant, name)

    def pack(self, *, keep_qtensor: bool = True) -> QLinear:
        """Switch to packed mode (module docstring); returns self."""
        from anybit.kernels import PackedLinearWeight

        if self.packed is not None:
            return self
        if self.qweight is None:
            raise KernelError(f"{self.name}: no quantized weight to pack")
        int8_acts = (
            self.act_quant is not None
            and self.act_quant.scheme.dynamic
            and str(self.act_quant.scheme) == KERNEL_INT8_ACTS
        )
        packed = None
        if int8_acts:
            try:
                packed = PackedLinearWeight.from_qtensor(self.qweight, activations="int8")
            except KernelError:
                packed = None  # no integer GEMM for this weight: weight-only kernel after fake act quant
        if packed is None:
            packed = PackedLinearWeight.from_qtensor(self.qweight, activations="fp32")
        self.packed = packed
        self.weight = None
        if not keep_qtensor:
            self.qweight = None
        return self

    @property
    def int8_kernel(self) -> bool:
        return self.packed is not None and self.packed.kind in ("w8a8", "w4a8")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            if self.act_quant is not None and not self.int8_kernel:
                x = self.act_quant(x)
            y = self.packed.matmul(x.float().contiguous())
            if self.bias is not None:
                y = y + self.bias
            return y.to(x.dtype)
        if self.act_quant is not None:
            x = self.act_quant(x)
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def dequantized_weight(self) -> torch.Tensor:
        if self.weight is not None:
            return self.weight
        if self.qweight is not None:
            return self.qweight.dequantize(torch.float32)
        assert self.packed is not None
        return self.packed.dequantize()

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the dequantized weight (activation quantization is dropped)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.dequantized_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        acts = f", acts={self.act_quant.scheme}" if self.act_quant is not None else ""
        packed = f", packed={self.packed.kind}" if self.packed is not None else ""
        return (
            f"in={self.in_features}, out={self.out_features}, weights={self.scheme_str}, "
            f"bpw={self.bpw:.3f}{acts}{packed}"
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


def pack_model(model: nn.Module, *, keep_qtensor: bool = True) -> dict[str, str]:
    """Pack every ``QLinear`` of ``model`` for the CPU kernels; returns {module name: kernel kind}."""
    kinds = {}
    for name, module in model.named_modules():
        if isinstance(module, QLinear):
            module.pack(keep_qtensor=keep_qtensor)
            assert module.packed is not None
            kinds[name] = module.packed.kind
    return kinds
