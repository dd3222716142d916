"""Kernel benchmark script: ``python bench/bench_kernels.py [--json FILE] [--quick]``.

The measurement lives in :func:`anybit.kernels.bench.run_kernel_bench` (importable, so that
``anybit bench kernels --json FILE`` runs the same code); this script prints the medians as the
markdown table committed in ``bench/kernels.md`` and the issue-5 targets as ratios.
"""

from __future__ import annotations

import argparse
import json
import sys

from anybit.kernels.bench import SHAPES, TOKENS, markdown_table, run_kernel_bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the full results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="only 4096x4096 (the target shape)")
    args = parser.parse_args(argv)
    shapes = SHAPES[:1] if args.quick else SHAPES
    report = run_kernel_bench(
        args.json, shapes=shapes, tokens=TOKENS, progress=lambda s: print(s, file=sys.stderr)
    )
    print(f"memory read bandwidth: {report['bandwidth_gbs']:.1f} GB/s")
    print(f"machine: {json.dumps(report['machine'])}")
    print()
    print(markdown_table(report))
    print()
    for name, check in report["targets"].items():
        value = "n/a" if check["value"] is None else f"{check['value']:.2f}"
        print(f"- {name}: {value} (target >= {check['target']}) {'MET' if check['met'] else 'NOT MET'}")
    for name, value in report["ratios"].items():
        print(f"- {name} (unpaired): {'n/a' if value is None else f'{value:.3f}'}")
    for name, paired in report["paired"].items():
        print(
            f"- {name} (paired): {paired['value']:.3f} (int4 first {paired['slow_first']:.3f}, "
            f"int2 first {paired['fast_first']:.3f}; rounds {paired['min']:.3f}-{paired['max']:.3f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
