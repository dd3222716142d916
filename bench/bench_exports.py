"""Export round trips on a real model: ``python bench/bench_exports.py [--eval-tokens N] [--out FILE]``.

For each row: ``anybit quantize`` (RTN, default calibration) -> ``anybit export`` -> load the export
with the ecosystem's own loader (transformers + compressed-tensors, or transformers' GGUF reader,
which dequantizes with gguf-py) -> perplexity on the same FOLDOC tokens. The figure that matters is
the relative difference between anybit's perplexity and the reloaded model's. Exact agreement
means the file holds anybit's weights bit for bit. The W8A8/W4A8 rows differ by the activation
rounding convention (compressed-tensors' simulated int8 scales by absmax / 127.5, anybit by / 127).
NVFP4 is decompressed by compressed-tensors in bfloat16, so that row runs in bfloat16. Asymmetric
compressed-tensors exports are not in the table: transformers 5.23 cannot load them
(vllm-project/llm-compressor#1618); tests/test_export_ct.py checks them through compressed-tensors'
decompressor.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

ROWS: tuple[tuple[str, str, str | None], ...] = (  # (export target, weights, activations)
    ("compressed-tensors", "int4:g64", None),
    ("compressed-tensors", "int8:channel", "int8:token"),
    ("compressed-tensors", "int4:g64", "int8:token"),
    ("compressed-tensors", "nvfp4", None),
    ("gguf", "int4:g32:scale=fp16", None),
    ("gguf", "uint5:g32:asym=float:scale=fp16", None),
    ("gguf", "int8:g32:scale=fp16", None),
    ("gguf", "mxfp4", None),
)


def _size(path: Path) -> int:
    return (
        path.stat().st_size
        if path.is_file()
        else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )


def _reload_perplexity(target: str, path: Path, weights: str, eval_tokens: int) -> tuple[float, int, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from anybit.data import evaluation_tokens, load_corpus
    from anybit.eval import perplexity

    if target == "gguf":
        kwargs = {"gguf_file": path.name}
        root, loader = path.parent, "transformers GGUF reader (gguf-py dequantize)"
    else:
        kwargs, root, loader = {}, path, "transformers + compressed-tensors"
    dtype = torch.bfloat16 if weights == "nvfp4" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(root), dtype=dtype, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(root), **kwargs)
    tokens = evaluation_tokens(tokenizer, load_corpus("foldoc").split().evaluation, eval_tokens, bos=True)
    result = perplexity(model, tokens, 1024)
    if dtype != torch.float32:
        loader += ", bfloat16"
    return result.ppl, result.n_tokens, loader


def main(argv: list[str] | None = None) -> int:
    from anybit.cli import main as anybit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--out", default=None, help="write the markdown table here")
    parser.add_argument("--json", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (target, weights, acts) in enumerate(ROWS):
            ckpt, report = Path(tmp) / f"q{i}", Path(tmp) / f"q{i}.json"
            extra = ["--acts", acts] if acts else []
            quantize = ["quantize", "--model", "smollm2", "--weights", weights, *extra, "--quiet",
                        "--eval-tokens", str(args.eval_tokens), "--out", str(ckpt),
                        "--json", str(report)]  # fmt: skip
            assert anybit(quantize) == 0
            data = json.loads(report.read_text())
            exported = Path(tmp) / (f"e{i}.gguf" if target == "gguf" else f"e{i}")
            start = time.perf_counter()
            assert anybit(["export", str(ckpt), "--to", target, str(exported)]) == 0
            seconds = time.perf_counter() - start
            ppl, n_tokens, loader = _reload_perplexity(target, exported, weights, args.eval_tokens)
            assert n_tokens == data["eval_tokens"]
            row = {
                "target": target,
                "weights": weights,
                "acts": acts or "-",
                "ppl_fp": data["ppl_fp"],
                "ppl_anybit": data["ppl_q"],
                "ppl_reloaded": ppl,
                "rel_diff": ppl / data["ppl_q"] - 1,
                "size_mib": _size(exported) / 2**20,
                "export_seconds": seconds,
                "loader": loader,
                "eval_tokens": n_tokens,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(ckpt)  # free the disk between rows (each checkpoint is ~170-210 MiB)
    head = (
        "| export | weights | acts | ppl anybit | ppl reloaded | rel. diff | size MiB | export s | loader |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---|"
    )
    lines = [
        f"| {r['target']} | `{r['weights']}` | {r['acts']} | {r['ppl_anybit']:.4f} | "
        f"{r['ppl_reloaded']:.4f} | {r['rel_diff']:+.1e} | {r['size_mib']:.1f} | "
        f"{r['export_seconds']:.1f} | {r['loader']} |"
        for r in rows
    ]
    table = "\n".join([head, *lines])
    print(table)
    print(f"(smollm2, FOLDOC, {rows[0]['eval_tokens']} tokens, seq 1024; fp32 {rows[0]['ppl_fp']:.4f}; "
          f"python {platform.python_version()}, torch {torch.__version__})")  # fmt: skip
    if args.out:
        Path(args.out).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
