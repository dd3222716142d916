"""Evaluation: perplexity with a fixed protocol, KL divergence and top-1 agreement against the
original model on the same tokens."""

from anybit.eval.perplexity import (
    DEFAULT_SEQ_LEN,
    Comparison,
    PerplexityResult,
    compare_models,
    perplexity,
    reference_log_probs,
    windows,
)

__all__ = [
    "DEFAULT_SEQ_LEN",
    "Comparison",
    "PerplexityResult",
    "compare_models",
    "perplexity",
    "reference_log_probs",
    "windows",
]
