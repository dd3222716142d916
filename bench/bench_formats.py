"""Fake-quantize time of a 4096x4096 fp32 weight, per scheme (median of runs).

Usage: python bench/bench_formats.py [--runs 7] [--out bench/formats.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import anybit
from anybit.speed import cpu_name

SCHEMES = [
    ("int4:g128", "INT fast path"),
    ("int4:g64:asym", "INT fast path"),
    ("int8:channel", "INT fast path"),
    ("fp4_e2m1:g32", "FP fast path"),
    ("fp8_e4m3:channel", "FP fast path"),
    ("mxfp4", "FP fast path, E8M0 scales"),
    ("nvfp4", "FP fast path, E4M3 x fp32 scales"),
    ("nf4", "generic levels path, double-quantized scales"),
    ("dint4:g128", "generic levels path"),
    ("bitmod4:g128:scale=fp16", "generic levels path x 4 member types + selection"),
    ("int4:g128:dual", "INT fast path, DGQ dual-grained scales"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", default=None, help="write a markdown table here")
    args = parser.parse_args()
    torch.manual_seed(0)
    weight = torch.randn(4096, 4096) * 0.02
    rows = []
    for scheme, path in SCHEMES:
        anybit.fake_quantize(weight, scheme)  # warm-up
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            anybit.fake_quantize(weight, scheme)
            times.append(time.perf_counter() - start)
        bpw = anybit.quantize(weight, scheme).bits_per_weight
        rows.append((scheme, path, statistics.median(times), min(times), bpw))
        print(f"{scheme:28s} median {statistics.median(times):.3f} s  min {min(times):.3f} s  bpw {bpw:.4f}")
    if args.out:
        lines = [
            "# Fake-quantize speed",
            "",
            f"Command: `python bench/bench_formats.py --runs {args.runs} --out {args.out}`",
            "",
            f"Machine: {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"Python {platform.python_version()}.",
            "",
            "Input: a 4096x4096 float32 weight (N(0, 0.02^2)); time of `anybit.fake_quantize(w, scheme)`, "
            f"median and min of {args.runs} runs after one warm-up.",
            "",
            "| scheme | path | median s | min s | bits/weight |",
            "|---|---|---:|---:|---:|",
            *[f"| `{s}` | {p} | {m:.3f} | {lo:.3f} | {b:.4f} |" for s, p, m, lo, b in rows],
            "",
            "Targets (issue 2): INT path under 0.2 s, generic levels path under 1 s.",
            "",
        ]
        with open(args.out, "w") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main()
