"""Architecture adapters: where the blocks, linears and norms of each supported model live.

Why a table and not per-model code everywhere: the pipeline, the smoothing/rotation transforms and
the exporters all need the same facts (which ``nn.ModuleList`` holds the decoder blocks, which
linears a block runs and in which order, which norm feeds which linears). Keeping them in one
registry keyed by ``config.model_type`` makes adding an architecture a data change and makes an
unsupported one a single clear error.

Facts that are easy to get wrong and are modelled here:

* Gemma 3 normalises with ``x̂ · (1 + w)`` (``norm_offset = 1``), its ``post_attention_layernorm``
  normalises the *attention output* before the residual add (it does not feed the MLP; the MLP is
  fed by ``pre_feedforward_layernorm``), and ``q_norm``/``k_norm`` sit after q/k projections (they
  are per-head RMS norms, so q/k output channels cannot absorb a scale). Qwen 3 has the same q/k norms.
* GPT-2 stores its linears as ``Conv1D`` (weight ``[in, out]``); :func:`conv1d_to_linear` turns
  them into ``nn.Linear`` so that the rest of anybit only sees ``nn.Linear``; undo it with
  :func:`linear_to_conv1d` before ``save_pretrained`` or transformers will load transposed weights.
* OPT has biases everywhere, ReLU between fc1 and fc2 (so fc1 -> fc2 scaling is exact for positive
  scales) and, for some sizes (350m), post-LayerNorm blocks where no norm can absorb a scale.
* With grouped-query attention, v_proj output channel ``c`` is read by several o_proj input
  columns; :class:`SmoothGroup.channel_map` says which.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from anybit.errors import ModelError


@dataclass(frozen=True)
class SmoothGroup:
    """A producer whose output channels can absorb ``1/s`` and the linears whose inputs take ``s``.

    SmoothQuant/AWQ-style scaling divides channel ``c`` of ``prev``'s output by ``s[c]`` and multiplies
    input column ``c`` of every linear in ``linears`` by ``s[c]``; the block's function is unchanged.

    * ``kind == "norm"``: ``prev`` is a LayerNorm/RMSNorm; scale ``weight`` (and ``bias`` if any). With
      ``norm_offset = 1`` (Gemma) the norm multiplies by ``1 + weight``: fold as
      ``weight' = (1 + weight) / s - 1``.
    * ``kind == "linear"``: ``prev`` is an ``nn.Linear``; scale its weight rows and bias entries.
    * ``channel_map`` (only for ``kind == "linear"``): a LongTensor of length ``in_features`` of the
      consumers giving, for each consumer input column, the ``prev`` output channel it reads
      (grouped-query attention repeats v heads). ``None`` means identity.
    * ``positive_only``: the path between prev and consumers is only positively homogeneous
      (ReLU), so every scale must be > 0 (true of any sensible smoothing scale anyway).
    """

    prev_name: str
    prev: nn.Module
    linear_names: tuple[str, ...]
    linears: tuple[nn.Linear, ...]
    kind: str
    norm_offset: float = 0.0
    channel_map: torch.Tensor | None = None
    positive_only: bool = False


def _get(root: nn.Module, dotted: str) -> Any:
    obj: Any = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Adapter:
    """Where things are in one architecture family. All names are relative to the model or block."""

    name: str
    model_types: tuple[str, ...]
    layers_path: str  # the nn.ModuleList of decoder blocks
    embed_path: str  # token embedding
    norm_path: str  # final norm before lm_head (may be None at run time, e.g. OPT-350m)
    linears: tuple[str, ...]  # every linear in a block, in execution order
    norm_groups: tuple[tuple[str, tuple[str, ...]], ...]  # (norm, linears it feeds)
    v_o: tuple[str, str] | None = None  # (v projection, attention output projection)
    up_down: tuple[str, str] | None = None  # (producer, consumer) across the MLP nonlinearity
    up_down_positive_only: bool = False
    norm_offset: float = 0.0
    lm_head_path: str = "lm_head"
    extra_norms: tuple[str, ...] = ()  # norms in a block that feed no linear (documentation + tests)
    norms_usable: Callable[[Any], bool] = field(default=lambda config: True)

    # -- model-level accessors -------------------------------------------------------------
    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The decoder blocks, in order."""
        return _get(model, self.layers_path)

    def embeddings(self, model: nn.Module) -> nn.Embedding:
        """The token embedding (positional embeddings, if any, are not quantized)."""
        return _get(model, self.embed_path)

    def final_norm(self, model: nn.Module) -> nn.Module | None:
        """The norm applied after the last block (None for post-LN OPT variants)."""
        return _get(model, self.norm_path)

    def lm_head(self, model: nn.Module) -> nn.Linear:
        """The output projection (may share its weight with the embedding: check before quantizing)."""
        return _get(model, self.lm_head_path)

    # -- block-level accessors -------------------------------------------------------------
    def linear_names(self, block: nn.Module) -> list[str]:
        """Qualified names (inside ``block``) of every linear, in execution order."""
        names = [n for n in self.linears if _has(block, n)]
        missing = [n for n, m in ((n, _get(block, n)) for n in names) if not isinstance(m, nn.Linear)]
        if missing:
            raise ModelError(
                f"{self.name} block: {missing} are not nn.Linear (found "
                f"{[type(_get(block, n)).__name__ for n in missing]}); for GPT-2 call "
                "anybit.models.conv1d_to_linear(model) first (load_model does it)"
            )
        return names

    def linear_modules(self, block: nn.Module) -> dict[str, nn.Linear]:
        """``{name: module}`` of :meth:`linear_names`, in execution order."""
        return {n: _get(block, n) for n in self.linear_names(block)}

    def smooth_groups(self, block: nn.Module, config: Any) -> list[SmoothGroup]:
        """Every (producer, consumers) pair across which a per-channel scale can be moved exactly."""
        groups: list[SmoothGroup] = []
        if self.norms_usable(config):
            for norm_name, lin_names in self.norm_groups:
                groups.append(
                    SmoothGroup(
                        prev_name=norm_name,
                        prev=_get(block, norm_name),
                        linear_names=lin_names,
                        linears=tuple(_get(block, n) for n in lin_names),
                        kind="norm",
                        norm_offset=self.norm_offset,
                    )
                )
        if self.v_o is not None:
            v_name, o_name = self.v_o
            v, o = _get(block, v_name), _get(block, o_name)
            groups.append(
                SmoothGroup(
                    prev_name=v_name,
                    prev=v,
                    linear_names=(o_name,),
                    linears=(o,),
                    kind="linear",
                    channel_map=_gqa_channel_map(config, v.out_features, o.in_features),
                )
            )
        if self.up_down is not None:
            u_name, d_name = self.up_down
            groups.append(
                SmoothGroup(
                    prev_name=u_name,
                    prev=_get(block, u_name),
                    linear_names=(d_name,),
                    linears=(_get(block, d_name),),
                    kind="linear",
                    positive_only=self.up_down_positive_only,
                )
            )
        return groups

    # -- layout conversions ----------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        """Bring a freshly loaded model to the layout anybit expects (only nn.Linear); in place."""
        conv1d_to_linear(model)
        return model

    def restore(self, model: nn.Module) -> nn.Module:
        """Undo :meth:`prepare` so that ``save_pretrained`` writes the layout transformers expects."""
        if self.name == "gpt2":
            names = [
                f"{self.layers_path}.{i}.{n}" for i in range(len(self.blocks(model))) for n in self.linears
            ]
            linear_to_conv1d(model, names)
        return model


def _has(root: nn.Module, dotted: str) -> bool:
    try:
        return _get(root, dotted) is not None
    except AttributeError:
        return False


def _gqa_channel_map(config: Any, v_out: int, o_in: int) -> torch.Tensor | None:
    """Map each o_proj input column to the v_proj output channel it reads (None if one to one)."""
    if v_out == o_in:
        return None
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", heads) or heads
    head_dim = o_in // heads
    if kv_heads * head_dim != v_out or heads % kv_heads:
        raise ModelError(
            f"cannot map v_proj ({v_out} outputs) to o_proj ({o_in} inputs) with {heads} heads and "
            f"{kv_heads} KV heads; the config does not describe this attention layout"
        )
    head = torch.arange(o_in) // head_dim
    kv = head // (heads // kv_heads)
    return kv * head_dim + torch.arange(o_in) % head_dim


_LLAMA_LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_GATE_UP = ("mlp.gate_proj", "mlp.up_proj")

_ADAPTERS: tuple[Adapter, ...] = (
    Adapter(
        name="llama",
        model_types=("llama", "mistral", "qwen2"),
        layers_path="model.layers",
        embed_path="model.embed_tokens",
        norm_path="model.norm",
        linears=_LLAMA_LINEARS,
        norm_groups=(("input_layernorm", _QKV), ("post_attention_layernorm", _GATE_UP)),
        v_o=("self_attn.v_proj", "self_attn.o_proj"),
        up_down=("mlp.up_proj", "mlp.down_proj"),
    ),
    Adapter(
        name="qwen3",
        model_types=("qwen3",),
        layers_path="model.layers",
        embed_path="model.embed_tokens",
        norm_path="model.norm",
        linears=_LLAMA_LINEARS,
        norm_groups=(("input_layernorm", _QKV), ("post_attention_layernorm", _GATE_UP)),
        v_o=("self_attn.v_proj", "self_attn.o_proj"),
        up_down=("mlp.up_proj", "mlp.down_proj"),
        extra_norms=("self_attn.q_norm", "self_attn.k_norm"),
    ),
    Adapter(
        name="gemma3",
        model_types=("gemma3_text",),
        layers_path="model.layers",
        embed_path="model.embed_tokens",
        norm_path="model.norm",
        linears=_LLAMA_LINEARS,
        norm_groups=(("input_layernorm", _QKV), ("pre_feedforward_layernorm", _GATE_UP)),
        v_o=("self_attn.v_proj", "self_attn.o_proj"),
        up_down=("mlp.up_proj", "mlp.down_proj"),
        norm_offset=1.0,
        extra_norms=(
            "self_attn.q_norm",
            "self_attn.k_norm",
            "post_attention_layernorm",
            "post_feedforward_layernorm",
        ),
    ),
    Adapter(
        name="gpt2",
        model_types=("gpt2",),
        layers_path="transformer.h",
        embed_path="transformer.wte",
        norm_path="transformer.ln_f",
        linears=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
        norm_groups=(("ln_1", ("attn.c_attn",)), ("ln_2", ("mlp.c_fc",))),
        # v is a slice of the fused c_attn output and c_fc -> c_proj crosses a GELU: no exact pairs.
    ),
    Adapter(
        name="opt",
        model_types=("opt",),
        layers_path="model.decoder.layers",
        embed_path="model.decoder.embed_tokens",
        norm_path="model.decoder.final_layer_norm",
        linears=(
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.out_proj",
            "fc1",
            "fc2",
        ),
        norm_groups=(("self_attn_layer_norm", _QKV), ("final_layer_norm", ("fc1",))),
        v_o=("self_attn.v_proj", "self_attn.out_proj"),
        up_down=("fc1", "fc2"),
        up_down_positive_only=True,
        # post-LN OPT (do_layer_norm_before=False, e.g. 350m): the norms sit after the residual add.
        norms_usable=lambda config: bool(getattr(config, "do_layer_norm_before", True)),
    ),
)

ADAPTERS: dict[str, Adapter] = {mt: a for a in _ADAPTERS for mt in a.model_types}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(ADAPTERS))


def unsupported_message(what: str, model_type: str) -> str:
    """The one wording used for an unsupported architecture wherever it is detected."""
    return (
        f"{what}: architecture {model_type!r} is not supported; supported model types are "
        f"{', '.join(SUPPORTED_MODEL_TYPES)} (Llama family, Gemma 3 text, GPT-2, OPT); use a model of "
        "one of these or add an Adapter in anybit/models/adapters.py"
    )


def adapter_for_type(model_type: str, what: str = "model") -> Adapter:
    """The adapter of ``model_type`` or a ``ModelError`` listing the supported ones."""
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise ModelError(unsupported_message(what, model_type)) from None


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter of a transformers model, chosen by ``model.config.model_type``."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise ModelError(
            f"{type(model).__name__} has no config.model_type; anybit needs a transformers causal LM"
        )
    return adapter_for_type(model_type, what=type(model).__name__)


# -- GPT-2 Conv1D <-> nn.Linear ------------------------------------------------------------------
def conv1d_to_linear(model: nn.Module) -> list[str]:
    """Replace every ``transformers.pytorch_utils.Conv1D`` by an equivalent ``nn.Linear``, in place.

    Conv1D computes ``x @ W + b`` with ``W`` of shape ``[in, out]``; the Linear gets ``W.T`` (a copy,
    contiguous) and the same bias, so outputs are identical. Returns the converted names.
    """
    from transformers.pytorch_utils import Conv1D

    converted = []
    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            nx, nf = module.weight.shape
            lin = nn.Linear(nx, nf, bias=True, device=module.weight.device, dtype=module.weight.dtype)
            with torch.no_grad():
                lin.weight.copy_(module.weight.t())
                lin.bias.copy_(module.bias)
            lin.requires_grad_(module.weight.requires_grad)
            set_module(model, name, lin)
            converted.append(name)
    return converted


def linear_to_conv1d(model: nn.Module, names: list[str]) -> None:
    """Inverse of :func:`conv1d_to_linear` for the given module names (they must be nn.Linear)."""
    from transformers.pytorch_utils import Conv1D

    for name in names:
        lin = _get(model, name)
        if not isinstance(lin, nn.Linear):
            raise ModelError(
                f"{name} is a {type(lin).__name__}, not nn.Linear; dequantize it before restoring "
                "the GPT-2 Conv1D layout"
            )
        conv = Conv1D(lin.out_features, lin.in_features).to(lin.weight.device, lin.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(lin.weight.t())
            if lin.bias is not None:
                conv.bias.copy_(lin.bias)
            else:
                conv.bias.zero_()
        set_module(model, name, conv)


def set_module(root: nn.Module, dotted: str, module: nn.Module) -> None:
    """Replace the submodule at ``dotted`` (e.g. ``model.layers.0.mlp.up_proj``) by ``module``."""
    parent, _, leaf = dotted.rpartition(".")
    setattr(_get(root, parent) if parent else root, leaf, module)


# -- what each block is called with ------------------------------------------------------------
@dataclass
class BlockInputs:
    """The input of block 0 and the extra arguments every block receives.

    Why per block: models with mixed attention (Gemma 3 sliding/full layers, Qwen 2 with
    ``layer_types``) pass each block a different mask and rotary embedding, so the arguments
    captured at block 0 are wrong for later blocks. ``calls[i]`` is ``(args, kwargs)`` for block
    ``i`` without the hidden states: run it as ``block(hidden, *args, **kwargs)``.
    """

    hidden_states: torch.Tensor
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]]


class _Stop(Exception):
    pass


@torch.no_grad()
def block_inputs(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> BlockInputs:
    """Run the model's embedding/mask/rotary code without running any block and record block inputs.

    Every block's ``forward`` is temporarily replaced by a recorder that passes the hidden states
    through; the last one stops the forward, so neither the blocks nor the lm_head are computed.
    """
    blocks = get_adapter(model).blocks(model)
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    first: list[torch.Tensor] = []

    def make_recorder(last: bool) -> Callable[..., torch.Tensor]:
        def record(hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if not first:
                first.append(hidden)
            calls.append((args, kwargs))
            if last:
                raise _Stop
            return hidden

        return record

    for i, block in enumerate(blocks):
        block.forward = make_recorder(i == len(blocks) - 1)  # instance attribute shadows the method
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Stop:
        pass
    finally:
        for block in blocks:
            del block.forward
    if len(calls) != len(blocks):
        raise ModelError(
            f"recorded {len(calls)} block calls for {len(blocks)} blocks; the model skipped some"
        )
    return BlockInputs(hidden_states=first[0], calls=calls)


def run_block(
    block: nn.Module, hidden: torch.Tensor, call: tuple[tuple[Any, ...], dict[str, Any]]
) -> torch.Tensor:
    """Run one block on ``hidden`` with its recorded arguments; returns the output hidden states."""
    args, kwargs = call
    out = block(hidden, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out
