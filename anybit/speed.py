"""``anybit bench model``: decode speed and resident memory of a model in fp32 and packed.

Each variant runs in its own process so resident memory is not polluted by the other:

1. import torch/transformers, record the baseline RSS;
2. build the variant: ``fp32`` loads the model; ``packed`` loads it, quantizes it (RTN) with the
   given scheme (``lm_head`` too on request: a tied one gets its own packed copy, the embedding
   stays float for the lookup), packs every ``QLinear`` for the CPU kernels and frees the float and
   unpacked weights (``malloc_trim`` returns freed heap pages to the OS);
3. after a 4-token warm-up generate (so every weight page is resident, mmap'd files included),
   record RSS minus the baseline (the model's own memory plus small activations) and the bytes the
   model should need (packed kernel buffers + every other tensor at its dtype). The packed variant
   is built from the float model in the same process, so allocator leftovers of quantization count
   against it: a packed model loaded straight from a checkpoint is the fair measurement (not yet
   implemented);
4. greedy decode: a ``prompt`` token prefill, then ``new_tokens`` tokens with the KV cache; decode
   tokens/s = new_tokens / (time of the whole generate - time of a 1-token generate), median of runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import torch


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (for benchmark reports)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _expected_bytes(model: torch.nn.Module) -> int:
    from anybit.nn import QLinear

    total, seen = 0, set()
    for module in model.modules():
        if isinstance(module, QLinear) and module.packed is not None:
            total += module.packed.nbytes
        for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            if t is not None and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


def measure_variant(
    source: str,
    variant: str,
    weights: str,
    acts: str | None,
    prompt: int,
    new_tokens: int,
    runs: int,
    lm_head: bool = False,
) -> dict[str, Any]:
    """Run in a fresh process (see module docstring)."""
    import transformers  # noqa: F401  (its import is part of the baseline)

    from anybit.models import load_model

    _trim()
    baseline = rss_bytes()
    loaded = load_model(source)
    model = loaded.model
    if variant == "packed":
        from anybit.models.pipeline import quantize_model
        from anybit.nn import pack_model
        from anybit.recipe import Recipe

        quantize_model(model, Recipe(weights=weights, acts=acts, lm_head=lm_head), None, progress=False)
        kinds = pack_model(model, keep_qtensor=False)
        # the float weights were memory-mapped from the converted safetensors file; any tensor still
        # viewing that mapping keeps every touched page of it resident, so copy what remains float
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                tensor.data = tensor.data.clone()
    else:
        kinds = {}
    expected = _expected_bytes(model)
    ids = torch.randint(
        0, loaded.tokenizer.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(0)
    )
    gen = {"do_sample": False, "use_cache": True, "pad_token_id": loaded.tokenizer.eos_token_id}
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **gen)  # warm-up: all weight pages touched
        _trim()
        model_rss = rss_bytes() - baseline
        speeds = []
        for _ in range(runs):
            start = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, **gen)
            prefill = time.perf_counter() - start
            start = time.perf_counter()
            model.generate(ids, max_new_tokens=new_tokens + 1, min_new_tokens=new_tokens + 1, **gen)
            speeds.append(new_tokens / (time.perf_counter() - start - prefill))
    peak = rss_bytes() - baseline
    return {
        "variant": variant,
        "weights": weights if variant == "packed" else "fp32",
        "acts": acts if variant == "packed" else None,
        "lm_head": lm_head if variant == "packed" else False,
        "kernels": sorted(set(kinds.values())),
        "packed_modules": sorted(kinds),
        "model_rss_bytes": model_rss,
        "expected_bytes": expected,
        "rss_over_expected": model_rss / expected,
        "rss_after_decode_bytes": peak,
        "decode_tokens_per_s": statistics.median(speeds),
        "prompt_tokens": prompt,
        "new_tokens": new_tokens,
        "threads": torch.get_num_threads(),
    }


def run_model_bench(
    source: str = "smollm2",
    weights: str = "int4:g64",
    acts: str | None = None,
    prompt: int = 64,
    new_tokens: int = 64,
    runs: int = 3,
    json_path: str | None = None,
    lm_head: bool = False,
) -> dict[str, Any]:
    """fp32 and packed variants, each in a subprocess; returns (and optionally writes) the results."""
    results = []
    for variant in ("fp32", "packed"):
        numbers = (prompt, new_tokens, runs, int(lm_head))
        args = [source, variant, weights, acts or "", *map(str, numbers)]
        proc = subprocess.run(
            [sys.executable, "-m", "anybit.speed", *args], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"bench model ({variant}) failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    fp32, packed = results
    summary = {
        "model": source,
        "fp32": fp32,
        "packed": packed,
        "decode_speedup": packed["decode_tokens_per_s"] / fp32["decode_tokens_per_s"],
        "memory_ratio": packed["model_rss_bytes"] / fp32["model_rss_bytes"],
    }
    if json_path:
        with open(json_path, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    src, var, w, a, p, n, r, head = sys.argv[1:9]
    print(json.dumps(measure_variant(src, var, w, a or None, int(p), int(n), int(r), head == "1")))
