"""Accuracy of quantization recipes on a real model: perplexity, KL, top-1, bits/weight, seconds.

Each row equals what ``anybit quantize --model M --weights W [--acts A] --algo ALGO --eval-tokens N``
reports (same calibration data, same evaluation windows); the reference model's log-probabilities
are computed once and shared by every row to save time.

Usage:
    python bench/bench_accuracy.py --model smollm2 --rows default --eval-tokens 32768 --out bench/accuracy.md
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

# (label, weights, acts, algorithms[, options "key=value;key=value"])
ROW_SETS: dict[str, list[tuple]] = {
    "default": [
        ("W8A8", "int8:channel", "int8:token", "rtn"),
        ("W8 (weights only)", "int8:channel", None, "rtn"),
        ("W4 g64 sym", "int4:g64", None, "rtn"),
        ("W4 g64 asym", "int4:g64:asym", None, "rtn"),
        ("W4A8 (W4 g64, A8 token)", "int4:g64", "int8:token", "rtn"),
        ("W3 g64", "int3:g64", None, "rtn"),
        ("W3 g64 asym", "int3:g64:asym", None, "rtn"),
        ("W2 g32 sym", "int2:g32", None, "rtn"),
        ("W2 g32 asym", "int2:g32:asym", None, "rtn"),
        ("FP4 E2M1 g32", "fp4_e2m1:g32", None, "rtn"),
        ("NF4 (bnb style)", "nf4", None, "rtn"),
        ("MXFP4", "mxfp4", None, "rtn"),
        ("NVFP4", "nvfp4", None, "rtn"),
        ("FP8 E4M3 channel", "fp8_e4m3:channel", None, "rtn"),
        ("dINT4 g64", "dint4:g64", None, "rtn"),
        ("BitMoD4 g64", "bitmod4:g64:scale=fp16", None, "rtn"),
        ("W4 g64 dual (DGQ scales)", "int4:g64:dual:asym", None, "rtn"),
        ("W4 g64 MSE clip", "int4:g64:clip=mse", None, "rtn"),
    ],
    "small": [
        ("W8A8", "int8:channel", "int8:token", "rtn"),
        ("W4 g64 sym", "int4:g64", None, "rtn"),
    ],
    "gptq": [
        ("W4 g64 GPTQ", "int4:g64", None, "gptq"),
        ("W3 g64 GPTQ", "int3:g64", None, "gptq"),
        ("W3 g64 RTN", "int3:g64", None, "rtn"),
    ],
    # W8A8 transforms (16 calibration samples: smoothing needs only channel maxima)
    "w8a8": [
        ("W8A8", "int8:channel", "int8:token", "rtn"),
        ("W8A8", "int8:channel", "int8:token", "smooth,rtn"),
        ("W8A8", "int8:channel", "int8:token", "smooth,rtn", "smooth.alpha=0.75"),
        ("W8A8", "int8:channel", "int8:token", "aqas,rtn"),
        ("W8A8", "int8:channel", "int8:token", "pcsmooth,rtn"),
        ("W8A8", "int8:channel", "int8:token", "rotate,rtn"),
        ("W8A8", "int8:channel", "int8:token", "rotate,smooth,rtn"),
    ],
    # DGQ (A8W4 with dual-grained weights) and AQAS against W4A16, default calibration
    "w4a8": [
        ("W4A16 g64 dual", "int4:g64:dual:asym", None, "rtn"),
        ("W4A16 g64 dual", "int4:g64:dual:asym", None, "dgq"),
        ("W4A8 g64 dual", "int4:g64:dual:asym", "int8:token", "rtn"),
        ("W4A8 g64 dual", "int4:g64:dual:asym", "int8:token", "dgq"),
        ("W4A8 g64 dual", "int4:g64:dual:asym", "int8:token", "pcsmooth,dgq"),
        ("W4A8 g64", "int4:g64", "int8:token", "aqas,rtn"),
        ("W4A16 g64", "int4:g64", None, "aqas,rtn"),
    ],
    # issue 4: each recipe row against RTN and the algorithms that apply, at default calibration.
    # The dual-grained DGQ rows are the "w4a8" set, ABQ W4A8 and AdaRound rows their own tables
    # (bench/accuracy.md); transforms whose point is activation outliers (smooth, rotate) appear on
    # the rows that quantize activations. 27 rows: about 80 min as two one-thread shards here.
    "algorithms": [
        ("W8A8", "int8:channel", "int8:token", "rtn"),
        ("W8A8", "int8:channel", "int8:token", "smooth,rtn"),
        ("W8A8", "int8:channel", "int8:token", "aqas,rtn"),
        ("W8A8", "int8:channel", "int8:token", "rotate,rtn"),
        ("W8A8", "int8:channel", "int8:token", "rotate,smooth,rtn"),
        ("W6A6", "int6:channel", "int6:token", "rtn"),
        ("W6A6", "int6:channel", "int6:token", "smooth,rtn"),
        ("W6A6", "int6:channel", "int6:token", "rotate,rtn"),
        ("W6A6", "int6:channel", "int6:token", "rotate,smooth,rtn"),
        ("W4A16 g64", "int4:g64", None, "rtn"),
        ("W4A16 g64", "int4:g64", None, "gptq"),
        ("W4A16 g64", "int4:g64", None, "dgq"),
        ("W4A16 g64", "int4:g64", None, "adaquant"),
        ("W4A8 g64", "int4:g64", "int8:token", "rtn"),
        ("W4A8 g64", "int4:g64", "int8:token", "aqas,rtn"),
        ("W4A8 g64", "int4:g64", "int8:token", "gptq"),
        ("W4A8 g64", "int4:g64", "int8:token", "aqas,gptq"),
        ("W4A8 g64", "int4:g64", "int8:token", "dgq"),
        ("W3A16 g64", "int3:g64", None, "rtn"),
        ("W3A16 g64", "int3:g64", None, "gptq"),
        ("W3A16 g64", "int3:g64", None, "dgq"),
        ("W3A16 g64", "int3:g64", None, "adaquant"),
        ("W2A16 g32 asym", "int2:g32:asym", None, "rtn"),
        ("W2A16 g32 asym", "int2:g32:asym", None, "gptq"),
        ("W2*A8 g32 bit balance", "int2bb:g32", "int8:token", "rtn"),
        ("W2*A8 g32 bit balance", "int2bb:g32", "int8:token", "gptq"),
        ("W2*A8 g32 bit balance", "int2bb:g32", "int8:token", "abq"),
    ],
}


def _key_of(row: tuple) -> tuple:
    return (row[1], row[2], row[3], row[4] if len(row) > 4 else "")


def _row_key(result: dict) -> tuple:
    return (result["weights"], result["acts"], result["algo"], result.get("options", ""))


# rough relative cost of a row (an RTN row with evaluation = 1), to balance --shard
ALGO_COST = {"gptq": 4, "dgq": 4, "aqas": 4, "adaquant": 6, "adaround": 6, "abq": 6}


def _shard(rows: list[tuple], count: int) -> list[list[tuple]]:
    """Deal ``rows`` to ``count`` shards, each next row to the cheapest shard so far (deterministic)."""
    shards: list[list[tuple]] = [[] for _ in range(count)]
    load = [0] * count
    for row in rows:
        cost = max(ALGO_COST.get(a, 1) for a in row[3].split(","))
        target = load.index(min(load))
        shards[target].append(row)
        load[target] += cost
    return shards


def _number(text: str) -> float | int | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--rows", default="default", choices=sorted(ROW_SETS))
    parser.add_argument("--eval-tokens", type=int, default=32768)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--corpus", default="foldoc")
    parser.add_argument("--out", help="markdown file to write (appends a section if it exists)")
    parser.add_argument("--json", help="JSON results")
    parser.add_argument(
        "--no-reference-cache",
        action="store_true",
        help="recompute the reference per row (large vocabularies: Gemma 3's log-probs do not fit in RAM)",
    )
    parser.add_argument("--calib-samples", type=int, default=0, help="default: the recipe's")
    parser.add_argument("--resume", action="store_true", help="skip the rows already in --json")
    parser.add_argument("--max-rows", type=int, default=0, help="stop after this many rows in --json")
    parser.add_argument(
        "--shard",
        default="",
        help="I/N: run only shard I of N (rows dealt out by estimated cost), e.g. two one-thread processes",
    )
    parser.add_argument(
        "--reverse", action="store_true", help="rows in reverse order (a second process from a shard's end)"
    )
    parser.add_argument(
        "--merge", nargs="+", metavar="JSON", help="write --out from these shards' JSON files, run nothing"
    )
    args = parser.parse_args()
    rows = ROW_SETS[args.rows]
    if args.merge:
        merged = {_row_key(r): r for path in args.merge for r in json.loads(Path(path).read_text())}
        missing = [row[:4] for row in rows if _key_of(row) not in merged]
        if missing:
            raise SystemExit(f"--merge: {len(missing)} rows of {args.rows!r} are in no file: {missing}")
        _write_markdown(args, [merged[_key_of(row)] for row in rows])
        return
    if args.shard:
        index, _, count = args.shard.partition("/")
        if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
            parser.error(f"--shard {args.shard!r}: write I/N with 0 <= I < N, e.g. --shard 0/2")
        rows = _shard(rows, int(count))[int(index)]
    if args.reverse:
        rows = rows[::-1]

    loaded = load_model(args.model)
    calib = CalibrationConfig(samples=args.calib_samples) if args.calib_samples else CalibrationConfig()
    calib_ids = calibration_samples(
        loaded.tokenizer,
        load_corpus(calib.corpus).split().calibration,
        calib.samples,
        calib.seqlen,
        calib.seed,
    )
    eval_ids = evaluation_tokens(
        loaded.tokenizer, load_corpus(args.corpus).split().evaluation, args.eval_tokens, True
    )
    start = time.perf_counter()
    reference = (
        loaded.model if args.no_reference_cache else reference_log_probs(loaded.model, eval_ids, args.seq_len)
    )
    print(f"reference: {time.perf_counter() - start:.1f} s")
    results: list[dict] = []
    if args.json and args.resume and Path(args.json).exists():
        results = json.loads(Path(args.json).read_text())
        print(f"resuming: {len(results)} rows already in {args.json}")
    done = {_row_key(r) for r in results}
    for label, weights, acts, algo, *extra in rows:
        options_text = extra[0] if extra else ""
        if (weights, acts, algo, options_text) in done:
            continue
        options = tuple((k, _number(v)) for k, v in (o.split("=") for o in options_text.split(";") if o))
        model = copy.deepcopy(loaded.model)
        recipe = Recipe(
            weights=weights, acts=acts, algorithms=tuple(algo.split(",")), options=options, calibration=calib
        )
        result = quantize_model(model, recipe, calib_ids, progress=False)
        cmp = compare_models(reference, model, eval_ids, args.seq_len)
        row = {
            "label": label, "weights": weights, "acts": acts, "algo": algo, "options": options_text,
            "bits_per_weight": result.bits_per_weight,
            "ppl_fp": cmp.reference.ppl, "ppl_q": cmp.candidate.ppl, "kl": cmp.kl, "top1": cmp.top1,
            "eval_tokens": cmp.n_tokens, "quantize_seconds": result.seconds,
            "threads": torch.get_num_threads(),
        }  # fmt: skip
        results.append(row)
        print(json.dumps(row), flush=True)
        if args.json:  # after every row: a long run can stop and --resume
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        del model
        if args.max_rows and len(results) >= args.max_rows:
            break
    if len(results) < len(rows):
        print(f"{len(results)} of {len(rows)} rows done; run again with --resume")
        return
    if args.out and not args.shard:
        _write_markdown(args, results)


def _write_markdown(args: argparse.Namespace, results: list[dict]) -> None:
    """Append one table of ``results`` to ``args.out`` (or print it)."""
    fp = results[0]["ppl_fp"]
    threads = results[0].get("threads", torch.get_num_threads())
    shards = " (run as shards with `--shard I/N --json F`, joined with `--merge`)" if args.merge else ""
    lines = [
        f"## {args.model}: {args.rows} rows, {results[0]['eval_tokens']} tokens of {args.corpus} "
        "(evaluation part)",
        "",
        f"Command: `python bench/bench_accuracy.py --model {args.model} --rows {args.rows} "
        f"--eval-tokens {args.eval_tokens} --out {args.out}"
        f"{f' --calib-samples {args.calib_samples}' if args.calib_samples else ''}"
        f"{' --no-reference-cache' if args.no_reference_cache else ''}`{shards}",
        "",
        f"Machine: {cpu_name()}, {threads} threads, torch {torch.__version__}. "
        f"Windows of {args.seq_len} tokens; KL(original || quantized) in nats/token; every row is "
        "reproducible on its own with the CLI command shown (same numbers).",
        "",
        "| recipe | algorithms | bits/weight | perplexity | Δ ppl | KL | top-1 | quantize s | command |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
        f"| original (fp32) | | 32 | {fp:.3f} | | 0 | 1 | | |",
    ]
    for r in results:
        cmd = f"anybit quantize --model {args.model} --weights {r['weights']}"
        cmd += f" --acts {r['acts']}" if r["acts"] else ""
        cmd += f" --algo {r['algo']} --eval-tokens {args.eval_tokens}"
        cmd += "".join(f" --opt {o}" for o in r.get("options", "").split(";") if o)
        cmd += f" --calib-samples {args.calib_samples}" if args.calib_samples else ""
        lines.append(
            f"| {r['label']} | {r['algo']}{' ' + r['options'] if r.get('options') else ''} "
            f"| {r['bits_per_weight']:.3f} | {r['ppl_q']:.3f} "
            f"| {100 * (r['ppl_q'] / fp - 1):+.1f}% "
            f"| {r['kl']:.4f} | {r['top1']:.4f} | {r['quantize_seconds']:.1f} | `{cmd}` |"
        )
    lines.append("")
    if not args.out:
        print("\n".join(lines))
        return
    out = Path(args.out)
    previous = out.read_text() if out.exists() else "# Accuracy\n\n"
    out.write_text(previous + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
