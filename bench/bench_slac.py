"""SLAC (sequence-length-aware calibration, Lee et al. EMNLP 2023): calibration vs evaluation length.

The paper observes that activation ranges of LLaMA-style models depend on the sequence length the
model runs on, so a *static* activation range (and smoothing scales) calibrated on one length fits
other lengths worse; SLAC calibrates on the target task's length. This script quantizes the model
once per calibration length (same number of calibration *tokens* for each, so only the length
differs) and evaluates each on every evaluation length; the table shows perplexity and
KL(original || quantized) with the original model evaluated on the same windows.

Recipe: W4A8 with a static per-tensor activation scale (``int4:g64`` + ``int8:tensor:static``), so
calibration sets the activation ranges, plus the SmoothQuant/AQAS transform named by ``--algo``.

Usage:
    nice -n 10 python bench/bench_slac.py --model smollm2 --out bench/slac.md
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from anybit.data import calibration_samples, evaluation_tokens, load_corpus
from anybit.eval import compare_models, reference_log_probs
from anybit.models import load_model
from anybit.models.pipeline import quantize_model
from anybit.recipe import CalibrationConfig, Recipe
from anybit.speed import cpu_name

LENGTHS = (128, 512, 2048)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--weights", default="int4:g64")
    parser.add_argument("--acts", default="int8:tensor:static")
    parser.add_argument("--algo", default="smooth,rtn")
    parser.add_argument("--calib-tokens", type=int, default=8192, help="calibration tokens per length")
    parser.add_argument("--eval-tokens", type=int, default=8192, help="evaluation tokens per length")
    parser.add_argument("--corpus", default="foldoc")
    parser.add_argument("--out", help="markdown file to write")
    parser.add_argument("--json", help="JSON results")
    args = parser.parse_args()

    start_all = time.perf_counter()
    loaded = load_model(args.model)
    corpus = load_corpus(args.corpus).split()
    eval_ids = evaluation_tokens(loaded.tokenizer, corpus.evaluation, args.eval_tokens, True)
    references = {n: reference_log_probs(loaded.model, eval_ids, n) for n in LENGTHS}
    results = []
    for calib_len in LENGTHS:
        calib = CalibrationConfig(samples=max(1, args.calib_tokens // calib_len), seqlen=calib_len)
        calib_ids = calibration_samples(
            loaded.tokenizer, corpus.calibration, calib.samples, calib.seqlen, calib.seed
        )
        model = copy.deepcopy(loaded.model)
        recipe = Recipe(
            weights=args.weights, acts=args.acts, algorithms=tuple(args.algo.split(",")), calibration=calib
        )
        result = quantize_model(model, recipe, calib_ids, progress=False)
        for eval_len in LENGTHS:
            cmp = compare_models(references[eval_len], model, eval_ids, eval_len)
            row = {
                "calib_seqlen": calib_len, "calib_samples": calib.samples, "eval_seqlen": eval_len,
                "ppl_fp": cmp.reference.ppl, "ppl_q": cmp.candidate.ppl, "kl": cmp.kl, "top1": cmp.top1,
                "eval_tokens": cmp.n_tokens, "quantize_seconds": result.seconds,
            }  # fmt: skip
            results.append(row)
            print(json.dumps(row), flush=True)
        del model
    total = time.perf_counter() - start_all
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.out:
        write_markdown(args, results, total)


def write_markdown(args: argparse.Namespace, results: list[dict], total: float) -> None:
    cell = {(r["calib_seqlen"], r["eval_seqlen"]): r for r in results}
    fp = {n: cell[(LENGTHS[0], n)]["ppl_fp"] for n in LENGTHS}
    head = "| calibration seqlen \\ eval seqlen | " + " | ".join(str(n) for n in LENGTHS) + " |"
    lines = [
        f"# SLAC on {args.model}: calibration vs evaluation sequence length",
        "",
        f"Command: `nice -n 10 python bench/bench_slac.py --model {args.model} --weights {args.weights} "
        f"--acts {args.acts} --algo {args.algo} --calib-tokens {args.calib_tokens} "
        f"--eval-tokens {args.eval_tokens} --out {args.out}`",
        "",
        f"Machine: {cpu_name()}, {torch.get_num_threads()} threads (shared, contended), torch "
        f"{torch.__version__}; total {total / 60:.1f} min. Calibration: {args.calib_tokens} tokens of "
        f"{args.corpus} (calibration part) per length, i.e. {args.calib_tokens}/L windows of L tokens. "
        f"Evaluation: the first {args.eval_tokens} tokens of the evaluation part (BOS first), cut into "
        "non-overlapping windows of the evaluation length; the original model is evaluated on the same "
        "windows. Recipe: weights "
        f"`{args.weights}`, activations `{args.acts}` (one static scale per layer input, set by "
        f"calibration), transforms `{args.algo}`.",
        "",
        "Original (fp32) perplexity per evaluation length: "
        + ", ".join(f"{n}: {fp[n]:.3f}" for n in LENGTHS),
        "",
        "## Perplexity (Δ vs original on the same windows)",
        "",
        head,
        "|---|" + "---:|" * len(LENGTHS),
    ]
    for c in LENGTHS:
        vals = [cell[(c, e)] for e in LENGTHS]
        lines.append(
            f"| {c} | "
            + " | ".join(f"{v['ppl_q']:.3f} ({100 * (v['ppl_q'] / v['ppl_fp'] - 1):+.1f}%)" for v in vals)
            + " |"
        )
    lines += ["", "## KL(original || quantized), nats/token", "", head, "|---|" + "---:|" * len(LENGTHS)]
    for c in LENGTHS:
        lines.append(f"| {c} | " + " | ".join(f"{cell[(c, e)]['kl']:.4f}" for e in LENGTHS) + " |")
    lines.append("")
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
