"""The algorithm interface and registry.

An algorithm is one of two kinds:

- a *transform* (SmoothQuant, AQAS, rotation ...) changes the float block before its weights are
  quantized (``transform(ctx)``), keeping the block's function (exactly or approximately);
- a *weight quantizer* (RTN, GPTQ, AdaQuant ...) returns the ``QTensor`` of each linear of the
  block (``quantize_block(ctx)``).

A recipe lists transforms first and at most one weight quantizer (RTN when none is named). Every
algorithm checks up front (``check(recipe)``) that it can serve the recipe's schemes, so a bad
combination is refused before any work is done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from anybit.errors import AlgorithmError
from anybit.qtensor import QTensor
from anybit.recipe import LayerPlan, Recipe


@dataclass
class BlockContext:
    """Everything an algorithm may use about the block being quantized."""

    index: int
    prefix: str  # module path of the block in the model, e.g. "model.layers.3"
    block: nn.Module
    linears: dict[str, nn.Linear]  # name inside the block -> module (only those with a weight scheme)
    plans: dict[str, LayerPlan]
    inputs: list[torch.Tensor]  # calibration inputs of the block, one [1, T, H] tensor per sample
    call: tuple[tuple[Any, ...], dict[str, Any]]  # extra block arguments (mask, rotary embeddings)
    recipe: Recipe
    config: Any
    run_block: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    smooth_groups: list[Any] = field(default_factory=list)
    # a weight quantizer that changes the float block itself (ABQ-LLM folds learned smoothing
    # scales) leaves the new float (weight, bias) of each linear here: the error reference
    float_reference: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)

    def full_name(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    @torch.no_grad()
    def capture_linear_inputs(self, names: list[str], max_rows: int | None = None) -> dict[str, torch.Tensor]:
        """Inputs ``[rows, in]`` of the named linears when the block runs on its calibration inputs."""
        captured: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        handles = []
        for name in names:
            module = self.block.get_submodule(name)

            def hook(_mod: nn.Module, args: tuple[Any, ...], _out: Any, name: str = name) -> None:
                captured[name].append(args[0].detach().reshape(-1, args[0].shape[-1]).float())

            handles.append(module.register_forward_hook(hook))
        try:
            for x in self.inputs:
                self.run_block(self.block, x)
        finally:
            for h in handles:
                h.remove()
        out = {n: torch.cat(v) for n, v in captured.items()}
        if max_rows is not None:
            out = {n: v[:max_rows] for n, v in out.items()}
        return out


class Algorithm:
    name: ClassVar[str]
    kind: ClassVar[Literal["transform", "weights"]]
    needs_calibration: ClassVar[bool] = True
    paper: ClassVar[str] = ""
    model_level: ClassVar[bool] = False  # transforms of the whole model (rotation) run before block 0

    def __init__(self) -> None:
        # weight quantizers: full layer name -> seconds of its own solve (the pipeline reports it)
        self.layer_seconds: dict[str, float] = {}

    def check(self, recipe: Recipe) -> None:
        """Raise ``AlgorithmError`` if this algorithm cannot serve ``recipe``."""

    def check_model(self, model: nn.Module) -> None:
        """Raise ``AlgorithmError`` if this algorithm cannot serve this architecture."""

    def prepare_model(self, model: nn.Module, recipe: Recipe) -> Any:
        """Model-level transforms: change the whole float model once, before block inputs are recorded."""
        raise NotImplementedError

    def transform(self, ctx: BlockContext) -> None:
        raise NotImplementedError

    def quantize_block(self, ctx: BlockContext) -> dict[str, QTensor]:
        raise NotImplementedError


_REGISTRY: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    return sorted(_REGISTRY)


def resolve(recipe: Recipe) -> tuple[list[Algorithm], Algorithm]:
    """Instantiate the recipe's algorithms: (transforms in order, the weight quantizer)."""
    transforms: list[Algorithm] = []
    quantizer: Algorithm | None = None
    for name in recipe.algorithms:
        if name not in _REGISTRY:
            raise AlgorithmError(f"unknown algorithm {name!r}; available: {', '.join(available())}")
        algo = _REGISTRY[name]()
        if algo.kind == "transform":
            if quantizer is not None:
                raise AlgorithmError(
                    f"transform {name!r} comes after the weight quantizer {quantizer.name!r}; "
                    "list transforms first, e.g. --algo smooth,gptq"
                )
            transforms.append(algo)
        else:
            if quantizer is not None:
                raise AlgorithmError(f"two weight quantizers given ({quantizer.name}, {name}); choose one")
            quantizer = algo
    if quantizer is None:
        quantizer = _REGISTRY["rtn"]()
    for algo in (*transforms, quantizer):
        algo.check(recipe)
    return transforms, quantizer
