"""Tiny random models of every supported architecture, built in code, for fast tests.

Why: the unit tests (and anyone debugging the pipeline) need each architecture's real module
structure in milliseconds and without any download. Dimensions are multiples of 32 (hidden 64,
FFN 128, head dim 16 or 32) so group-32/64 schemes apply to every linear; norms get a random
perturbation so that folding a scale into a norm is actually exercised (Gemma's ``1 + w`` norms
start at zero otherwise).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from anybit.errors import ModelError

TINY_VOCAB = 288  # 256 byte tokens + 4 specials, padded to a multiple of 32
_SPECIALS = ("<bos>", "<eos>", "<pad>", "<unk>")


def _configs() -> dict[str, Any]:
    from transformers import (
        GPT2Config,
        LlamaConfig,
        MistralConfig,
        OPTConfig,
        Qwen2Config,
        Qwen3Config,
    )
    from transformers.models.gemma3 import Gemma3TextConfig

    common = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=256,
        eos_token_id=257,
        pad_token_id=258,
    )
    return {
        "llama": LlamaConfig(**common),
        "mistral": MistralConfig(**common, sliding_window=None),
        "qwen2": Qwen2Config(**common),
        "qwen3": Qwen3Config(**common, head_dim=16),
        "gemma3_text": Gemma3TextConfig(
            **{**common, "num_key_value_heads": 1, "tie_word_embeddings": True},
            head_dim=32,
            query_pre_attn_scalar=32,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
        ),
        "gpt2": GPT2Config(
            vocab_size=TINY_VOCAB,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=256,
            bos_token_id=256,
            eos_token_id=257,
        ),
        "opt": OPTConfig(
            vocab_size=TINY_VOCAB,
            hidden_size=64,
            ffn_dim=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
            word_embed_proj_dim=64,
            bos_token_id=256,
            eos_token_id=257,
            pad_token_id=258,
        ),
    }


TINY_ARCHS: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gpt2", "opt")


def tiny_model(arch: str, seed: int = 0, *, prepare: bool = True) -> nn.Module:
    """A 2-layer random causal LM of ``arch`` (a model_type; ``gemma3`` is accepted for gemma3_text).

    ``prepare=True`` applies the adapter's layout preparation (GPT-2 Conv1D -> nn.Linear), as
    ``load_model`` does, so tiny and real models look the same to the rest of anybit. The result
    is in eval mode, float32, deterministic in ``seed`` and leaves the global RNG untouched.
    """
    from transformers import AutoModelForCausalLM

    from anybit.models.adapters import get_adapter

    arch = "gemma3_text" if arch == "gemma3" else arch
    configs = _configs()
    if arch not in configs:
        raise ModelError(f"tiny_model: unknown architecture {arch!r}; choose one of {', '.join(TINY_ARCHS)}")
    config = configs[arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        with torch.no_grad():
            for module in model.modules():
                if "norm" in type(module).__name__.lower() or isinstance(module, nn.LayerNorm):
                    for p in module.parameters(recurse=False):
                        p.add_(0.1 * torch.randn_like(p))
    model.eval()
    if prepare:
        get_adapter(model).prepare(model)
    return model


def tiny_tokenizer() -> Any:
    """A byte-level tokenizer matching the tiny models' vocabulary (ids 0-255 bytes, 256+ specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    # ByteLevel maps each byte to a printable char; order them by byte value so id == byte.
    table = _bytes_to_unicode()
    assert set(table.values()) == set(byte_chars)
    vocab = {table[b]: b for b in range(256)}
    vocab.update({tok: 256 + i for i, tok in enumerate(_SPECIALS)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the one ByteLevel uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))
