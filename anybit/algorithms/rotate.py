"""Hadamard rotation of the residual stream (QuaRot-style), fused into the weights.

Paper: Ashkboos et al., "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs", NeurIPS 2024
(building on SliceGPT's computational invariance). A transformer with RMSNorm computes the same
function if every vector on the residual stream is multiplied by an orthogonal ``Q``:

1. fold each RMSNorm's weight into the linears it feeds (``W <- W diag(w)``, ``w <- 1``), so the norm
   is a pure ``x / rms(x)``, which commutes with any orthogonal ``Q`` (``rms(x Q) = rms(x)``);
2. embeddings ``E <- E Q``; every linear *reading* the residual (q/k/v, gate/up, lm_head)
   ``W <- W Q``; every linear *writing* it (o_proj, down_proj) ``W <- Q^T W`` (bias ``b <- Q^T b``).

With ``Q`` a randomized Hadamard matrix (``H diag(±1) / sqrt(n)``) every residual channel becomes a
balanced mix of all channels, so a few outlier channels no longer set the range of a per-token
activation scale, and the rotated weights are "incoherent" (flatter per-group ranges).

What is implemented: steps 1-2 for RMSNorm decoder models (anybit adapters ``llama`` -- Llama,
Mistral, Qwen 2 -- and ``qwen3``), everything fused offline into the weights; tied embeddings are
untied (the embedding gets ``E Q``, ``lm_head`` gets ``E diag(w_final) Q``). Not implemented: QuaRot's
*online* Hadamard before ``down_proj`` and inside attention (it needs an op in the forward pass that
anybit's ``QLinear`` does not have; see the report), and KV-cache rotation.

Refused, with the reason: Gemma 3 (its ``post_attention_layernorm``/``post_feedforward_layernorm``
normalize a linear's *output* before the residual add, so their weights cannot be folded into a
linear and ``diag(1 + w)`` does not commute with ``Q``); OPT and GPT-2 (LayerNorm subtracts the mean,
which does not commute with a rotation unless the mean direction is projected out first, SliceGPT
style; GPT-2 also adds learned positions to the embeddings).

Sizes that are not a power of two (SmolLM2's hidden 576): :func:`hadamard` builds ``H_m ⊗ H_{2^k}``
where ``H_m`` comes from a Paley construction (order ``q + 1`` for a prime ``q ≡ 3 mod 4``, or
``2(q + 1)`` for a prime ``q ≡ 1 mod 4``); 576 = 36 x 16 with ``H_36`` from Paley II (q = 17).
When no such factorization exists, a seeded random orthogonal matrix (QR of a Gaussian) is used
instead: the function is still preserved exactly, only the "every channel mixes evenly" property
is lost (entries are no longer all ``±1/sqrt(n)``).

Why a model-level function: the rotation touches the embeddings and ``lm_head`` and must be applied
before the pipeline records the blocks' calibration inputs, so it cannot run block by block.
:func:`rotate_model` does it; the ``rotate`` algorithm exposes it as ``prepare_model`` for the
pipeline to call before it captures block inputs, and refuses to run if that did not happen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from anybit.algorithms.base import Algorithm, BlockContext, register
from anybit.errors import AlgorithmError
from anybit.recipe import Recipe

ROTATABLE_ADAPTERS = ("llama", "qwen3")  # RMSNorm pre-norm decoders without post-norms
READERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
WRITERS = ("self_attn.o_proj", "mlp.down_proj")
NORM_FEEDS = (("input_layernorm", READERS[:3]), ("post_attention_layernorm", READERS[3:]))
CONFIG_MARK = "anybit_rotation"  # set on model.config once rotated (the pipeline and check read it)


# -- Hadamard matrices ----------------------------------------------------------------------------
def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, math.isqrt(q) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """``Q[i, j] = chi(j - i)`` with ``chi`` the quadratic character mod the prime ``q``."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0] + [1 if a in squares else -1 for a in range(1, q)], dtype=torch.float64)
    idx = (torch.arange(q)[None, :] - torch.arange(q)[:, None]) % q
    return chi[idx]


def _paley(m: int) -> torch.Tensor | None:
    """A Hadamard matrix of order ``m`` from Paley's constructions, or None if they do not apply."""
    q = m - 1
    if q % 4 == 3 and _is_prime(q):  # Paley I: H = I + [[0, 1^T], [-1, Q]]
        s = torch.zeros(m, m, dtype=torch.float64)
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, _jacobsthal(q)
        return torch.eye(m, dtype=torch.float64) + s
    if m % 2 == 0:
        q = m // 2 - 1
        if q % 4 == 1 and _is_prime(q):  # Paley II: C ⊗ [[1,1],[1,-1]] + I ⊗ [[1,-1],[-1,-1]]
            c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
            c[0, 1:], c[1:, 0], c[1:, 1:] = 1, 1, _jacobsthal(q)
            a = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
            b = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
            return torch.kron(c, a) + torch.kron(torch.eye(q + 1, dtype=torch.float64), b)
    return None


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hadamard(n: int) -> torch.Tensor | None:
    """An (unnormalized, ±1) Hadamard matrix of order ``n`` = ``H_m ⊗ H_{2^k}``, or None if unknown."""
    power = n & -n  # largest power of two dividing n
    k = power
    while k >= 1:
        m = n // k
        base = torch.ones(1, 1, dtype=torch.float64) if m == 1 else _paley(m)
        if base is not None:
            h = torch.kron(base, _sylvester(k))
            assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64)), "bad Hadamard"
            return h
        k //= 2
    return None


def random_hadamard(n: int, seed: int) -> tuple[torch.Tensor, str]:
    """An orthogonal ``n x n`` matrix (float64): ``H diag(±1) / sqrt(n)``, or random orthogonal."""
    gen = torch.Generator().manual_seed(seed)
    h = hadamard(n)
    if h is None:
        q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
        return q * torch.sign(torch.diagonal(r))[None, :], "random-orthogonal"
    signs = torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1
    return h * signs[None, :] / math.sqrt(n), "hadamard"


# -- the model-level rotation ---------------------------------------------------------------------
@dataclass(frozen=True)
class RotationInfo:
    size: int
    kind: str  # "hadamard" or "random-orthogonal"
    seed: int
    untied: bool  # lm_head got its own weight


def _refuse_reason(model: nn.Module) -> str | None:
    from anybit.models.adapters import get_adapter  # lazy: models.pipeline imports algorithms

    adapter = get_adapter(model)
    if adapter.name in ROTATABLE_ADAPTERS:
        return None
    why = {
        "gemma3": "its post-attention/post-feedforward norms scale a linear's output by diag(1 + w) "
        "after normalizing it, which neither folds into a linear nor commutes with a rotation",
        "opt": "LayerNorm subtracts the mean, which does not commute with a rotation (needs a "
        "SliceGPT-style mean projection first)",
        "gpt2": "LayerNorm subtracts the mean and learned positions are added to the embeddings",
    }.get(adapter.name, "it is not an RMSNorm pre-norm decoder")
    return (
        f"rotate: architecture {adapter.name!r} ({model.config.model_type}) is not supported: {why}; "
        f"supported: {', '.join(ROTATABLE_ADAPTERS)} adapters (Llama, Mistral, Qwen 2, Qwen 3). "
        "Use smooth/aqas for this model instead"
    )


@torch.no_grad()
def _fold_norm(norm: nn.Module, linears: list[nn.Linear]) -> None:
    """``W <- W diag(w)`` for every consumer, then ``w <- 1``: the norm becomes ``x / rms(x)``."""
    w = norm.weight.detach().double()
    for lin in linears:
        lin.weight.copy_((lin.weight.double() * w).to(lin.weight.dtype))
    norm.weight.fill_(1.0)


def _rotate_in(lin: nn.Linear, q: torch.Tensor) -> None:
    lin.weight.copy_((lin.weight.double() @ q).to(lin.weight.dtype))


def _rotate_out(lin: nn.Linear, q: torch.Tensor) -> None:
    lin.weight.copy_((q.T @ lin.weight.double()).to(lin.weight.dtype))
    if lin.bias is not None:
        lin.bias.copy_((q.T @ lin.bias.double()).to(lin.bias.dtype))


@torch.no_grad()
def rotate_model(model: nn.Module, seed: int = 0) -> RotationInfo:
    """Fold RMSNorm weights and rotate the residual stream by a seeded randomized Hadamard, in place.

    The float model computes the same logits afterwards (up to rounding). Raises ``AlgorithmError``
    for architectures where the rotation cannot be fused (module docstring), and if already rotated.
    """
    reason = _refuse_reason(model)
    if reason is not None:
        raise AlgorithmError(reason)
    if getattr(model.config, CONFIG_MARK, None):
        raise AlgorithmError("rotate: this model is already rotated (config.anybit_rotation is set)")
    from anybit.models.adapters import get_adapter

    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    for i, block in enumerate(blocks):
        for name in READERS + WRITERS:
            if not isinstance(block.get_submodule(name), nn.Linear):
                raise AlgorithmError(
                    f"rotate: {adapter.layers_path}.{i}.{name} is not a float nn.Linear; rotate the "
                    "model before quantizing it"
                )
    emb, head, final_norm = adapter.embeddings(model), adapter.lm_head(model), adapter.final_norm(model)
    hidden = emb.weight.shape[1]
    q, kind = random_hadamard(hidden, seed)

    # tied embeddings: the embedding gets E Q, the head E diag(w_final) Q -- no longer one matrix
    untied = head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr()
    if untied:
        head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
        model.config.tie_word_embeddings = False

    # 1. fold every norm into its consumers (the norms become weightless RMS normalizations)
    for block in blocks:
        for norm_name, lin_names in NORM_FEEDS:
            _fold_norm(block.get_submodule(norm_name), [block.get_submodule(n) for n in lin_names])
    _fold_norm(final_norm, [head])

    # 2. rotate the residual stream: embeddings, readers (W Q), writers (Q^T W), lm_head
    emb.weight.copy_((emb.weight.double() @ q).to(emb.weight.dtype))
    for block in blocks:
        for name in READERS:
            _rotate_in(block.get_submodule(name), q)
        for name in WRITERS:
            _rotate_out(block.get_submodule(name), q)
    _rotate_in(head, q)
    info = RotationInfo(size=hidden, kind=kind, seed=seed, untied=untied)
    setattr(model.config, CONFIG_MARK, {"kind": kind, "size": hidden, "seed": seed})
    return info


@register
class HadamardRotation(Algorithm):
    """QuaRot-style residual rotation; model-level (``prepare_model``), checked per block."""

    name = "rotate"
    kind = "transform"
    needs_calibration = False
    paper = "Ashkboos et al. 2024, QuaRot (arXiv 2404.00456)"
    model_level = True  # the pipeline must call prepare_model(model, recipe) before block inputs

    def check(self, recipe: Recipe) -> None:
        seed = recipe.option("rotate.seed", 0)
        if not isinstance(seed, int) or seed < 0:
            raise AlgorithmError(f"rotate.seed must be a non-negative integer, got {seed!r}")

    def check_model(self, model: nn.Module) -> None:
        """Refuse an architecture the rotation cannot be fused into (before any work is done)."""
        reason = _refuse_reason(model)
        if reason is not None:
            raise AlgorithmError(reason)

    def prepare_model(self, model: nn.Module, recipe: Recipe) -> RotationInfo:
        """Rotate ``model`` in place; the pipeline calls this before recording block inputs."""
        return rotate_model(model, seed=int(recipe.option("rotate.seed", 0)))

    def transform(self, ctx: BlockContext) -> None:
        if not getattr(ctx.config, CONFIG_MARK, None):
            raise AlgorithmError(
                "rotate is a model-level transform: the pipeline must call "
                "HadamardRotation.prepare_model(model, recipe) (or anybit.algorithms.rotate.rotate_model) "
                "before it records the blocks' calibration inputs; the model reached block "
                f"{ctx.index} unrotated"
            )
