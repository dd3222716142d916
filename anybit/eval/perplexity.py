"""Perplexity, KL divergence and top-1 agreement, with one fixed, documented protocol.

Protocol (the same tokens for every compared method):

- the evaluation text is tokenized once (with the tokenizer's BOS at its start, if it has one);
- it is cut into non-overlapping windows of ``seq_len`` tokens (default 1024); a trailing partial
  window is dropped; no BOS is inserted per window;
- each window is one forward pass with no cache; logits are taken in float32;
- every position but the first of a window is scored: ``seq_len - 1`` predicted tokens per window,
  and ``n_tokens`` reports how many were scored;
- perplexity = ``exp(mean negative log-likelihood)``; KL = mean over positions of
  ``KL(p_original || p_quantized)`` in nats; top-1 = fraction of positions where both models'
  argmax agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from anybit.errors import DataError

DEFAULT_SEQ_LEN = 1024


@dataclass
class PerplexityResult:
    ppl: float
    nll: float
    n_tokens: int
    n_windows: int
    seq_len: int


@dataclass
class Comparison:
    reference: PerplexityResult
    candidate: PerplexityResult
    kl: float
    top1: float

    @property
    def n_tokens(self) -> int:
        return self.candidate.n_tokens


def windows(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """``[n_windows, seq_len]`` non-overlapping windows (trailing partial window dropped)."""
    if tokens.dim() != 1:
        raise DataError(f"evaluation tokens must be a 1-D tensor, got shape {tuple(tokens.shape)}")
    n = tokens.numel() // seq_len
    if n == 0:
        raise DataError(
            f"evaluation text has {tokens.numel()} tokens, fewer than one window of {seq_len}; "
            "use a longer text or a smaller --seq-len"
        )
    return tokens[: n * seq_len].reshape(n, seq_len)


def _logits(model: nn.Module, window: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=window.unsqueeze(0), use_cache=False)
    return out.logits[0, :-1].float()


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="window")


@torch.no_grad()
def perplexity(
    model: nn.Module, tokens: torch.Tensor, seq_len: int = DEFAULT_SEQ_LEN, *, progress: bool = False
) -> PerplexityResult:
    wins = windows(tokens, seq_len)
    total_nll, count = 0.0, 0
    bar = _progress(len(wins), "perplexity", progress)
    for window in wins:
        logp = F.log_softmax(_logits(model, window), dim=-1)  # same arithmetic as compare_models
        total_nll -= float(logp.gather(1, window[1:, None]).sum())
        count += seq_len - 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    nll = total_nll / count
    return PerplexityResult(math.exp(nll), nll, count, len(wins), seq_len)


@torch.no_grad()
def reference_log_probs(
    model: nn.Module, tokens: torch.Tensor, seq_len: int = DEFAULT_SEQ_LEN
) -> list[torch.Tensor]:
    """Log-probabilities of ``model`` per window, to compare many candidates against one reference.

    Memory: windows x (seq_len - 1) x vocab float32 (SmolLM2, 16 windows: 3.2 GB).
    """
    return [F.log_softmax(_logits(model, w), dim=-1) for w in windows(tokens, seq_len)]


@torch.no_grad()
def compare_models(
    reference: nn.Module | list[torch.Tensor],
    candidate: nn.Module,
    tokens: torch.Tensor,
    seq_len: int = DEFAULT_SEQ_LEN,
    *,
    progress: bool = False,
) -> Comparison:
    """Perplexity of both models, KL(reference || candidate) and top-1 agreement on the same windows.

    ``reference`` is a model or its :func:`reference_log_probs` on the same tokens.
    """
    wins = windows(tokens, seq_len)
    cached = reference if isinstance(reference, list) else None
    nll_ref = nll_cand = kl_sum = 0.0
    agree = count = 0
    bar = _progress(len(wins), "evaluate", progress)
    for index, window in enumerate(wins):
        target = window[1:]
        if cached is not None:
            logp_ref = cached[index]
        else:
            assert isinstance(reference, nn.Module)
            logp_ref = F.log_softmax(_logits(reference, window), dim=-1)
        logp_cand = F.log_softmax(_logits(candidate, window), dim=-1)
        nll_ref -= float(logp_ref.gather(1, target[:, None]).sum())
        nll_cand -= float(logp_cand.gather(1, target[:, None]).sum())
        kl_sum += float((logp_ref.exp() * (logp_ref - logp_cand)).sum())
        agree += int((logp_ref.argmax(-1) == logp_cand.argmax(-1)).sum())
        count += seq_len - 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    ref = PerplexityResult(math.exp(nll_ref / count), nll_ref / count, count, len(wins), seq_len)
    cand = PerplexityResult(math.exp(nll_cand / count), nll_cand / count, count, len(wins), seq_len)
    return Comparison(ref, cand, kl_sum / count, agree / count)
