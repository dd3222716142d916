"""``anybit``: quantize | eval | inspect | export | formats | bench.

Every user error is an ``anybit.errors.AnybitError`` and is printed as one clear message (exit code
2), never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from anybit.errors import AnybitError, SchemeError

EXIT_USER_ERROR = 2


def _console():
    from rich.console import Console

    # wider than rich's 80-column default when writing to a file or pipe, so names are not cut
    return Console(stderr=False, width=None if sys.stdout.isatty() else 140)


def _table(title: str, columns: list[str]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right", overflow="fold")
    return table


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _write_json(path: str, data: dict[str, Any]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, target)


# ----- quantize -------------------------------------------------------------------------------
def _recipe_from_args(args: argparse.Namespace):
    from anybit.recipe import CalibrationConfig, LayerOverride, Recipe

    base = Recipe.load(args.recipe) if args.recipe else None
    overrides = []  # command-line overrides first: the first matching override wins
    for item in args.override or []:
        pattern, sep, scheme = item.rpartition("=")
        if not sep or not pattern:
            raise SchemeError(
                f"--override {item!r}: use REGEX=SCHEME, "
                "e.g. 'down_proj$=int8:channel' or 'layers\\.0\\.=skip'"
            )
        overrides.append(LayerOverride(pattern, weights=scheme))
    overrides += list(base.overrides) if base else []
    options = dict(base.options) if base else {}
    for item in args.opt or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SchemeError(f"--opt {item!r}: use KEY=VALUE, e.g. smooth.alpha=0.8 or gptq.act_order=false")
        options[key.strip()] = _parse_option(value.strip())
    calib = base.calibration if base else CalibrationConfig()
    calib = CalibrationConfig(
        samples=args.calib_samples if args.calib_samples is not None else calib.samples,
        seqlen=args.calib_seqlen if args.calib_seqlen is not None else calib.seqlen,
        seed=args.seed if args.seed is not None else calib.seed,
        corpus=args.calib_corpus or calib.corpus,
    )
    weights = args.weights if args.weights is not None else (base.weights if base else None)
    if weights is None:
        raise SchemeError("give a weight scheme with --weights (e.g. int4:g64) or a --recipe file")
    return Recipe(
        weights=weights,
        acts=args.acts if args.acts is not None else (base.acts if base else None),
        algorithms=tuple(args.algo.split(",")) if args.algo else (base.algorithms if base else ("rtn",)),
        overrides=tuple(overrides),
        lm_head=args.lm_head or (base.lm_head if base else False),
        embeddings=args.embeddings or (base.embeddings if base else False),
        calibration=calib,
        options=tuple(sorted(options.items())),
    )


def _parse_option(value: str) -> bool | int | float | str:
    lowered = value.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def cmd_quantize(args: argparse.Namespace) -> int:
    from anybit.workflow import QuantizeJob, run_quantize

    recipe = _recipe_from_args(args)
    job = QuantizeJob(
        model=args.model,
        recipe=recipe,
        out=args.out,
        overwrite=args.force,
        evaluate=not args.no_eval,
        eval_corpus=args.eval_corpus,
        eval_tokens=args.eval_tokens,
        seq_len=args.seq_len,
        progress=not args.quiet,
    )
    report = run_quantize(job)
    console = _console()
    if args.layers:
        layers = _table(
            "per-layer relative output error (calibration data)",
            ["layer", "weights", "acts", "bpw", "rel. error", "layer s", "block s"],
        )
        for layer in report.layers:
            layers.add_row(
                layer.name,
                layer.weights,
                layer.acts or "-",
                f"{layer.bits_per_weight:.3f}",
                _fmt(layer.rel_error, ".2e"),
                _fmt(layer.seconds, ".2f"),
                _fmt(layer.block_seconds, ".1f"),
            )
        console.print(layers)
    table = _table(f"anybit quantize: {args.model}", ["", "original", "quantized"])
    table.add_row("weights / acts", "fp32", f"{recipe.weights} / {recipe.acts or 'fp'}")
    table.add_row("algorithms", "-", ",".join(recipe.algorithms))
    table.add_row("bits/weight (quantized layers)", "32", f"{report.bits_per_weight:.3f}")
    table.add_row("size (whole model)", _mb(report.model_bytes_fp32), _mb(report.model_bytes_quantized))
    if report.ppl_q is not None:
        table.add_row(
            f"perplexity ({report.eval_corpus}, {report.eval_tokens} tokens, seq {report.eval_seq_len})",
            f"{report.ppl_fp:.3f}",
            f"{report.ppl_q:.3f}",
        )
        table.add_row("KL(original || quantized), nats/token", "0", f"{report.kl:.4f}")
        table.add_row("top-1 agreement", "1", f"{report.top1:.4f}")
    table.add_row("time (quantize / total)", "-", f"{report.quantize_seconds:.1f} s / {report.seconds:.1f} s")
    table.add_row("peak memory (RSS)", "-", f"{report.peak_rss_mb:.0f} MiB")
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}")
    if report.out:
        console.print(f"checkpoint: {report.out}")
    if args.json:
        _write_json(args.json, report.to_json())
    return 0


# ----- eval -----------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from anybit.data import evaluation_tokens, load_corpus
    from anybit.eval import compare_models, perplexity
    from anybit.io import load_checkpoint

    model, tokenizer, header = load_checkpoint(args.checkpoint)
    if tokenizer is None:
        raise AnybitError(f"{args.checkpoint} has no tokenizer files; re-save it with its tokenizer")
    tokens = evaluation_tokens(
        tokenizer, load_corpus(args.corpus).split().evaluation, args.eval_tokens, bos=True
    )
    result: dict[str, Any] = {"checkpoint": args.checkpoint, "eval_corpus": args.corpus}
    if args.reference:
        from anybit.models import load_model

        reference = load_model(args.reference).model
        cmp = compare_models(reference, model, tokens, args.seq_len, progress=not args.quiet)
        result.update(
            ppl_fp=cmp.reference.ppl,
            ppl_q=cmp.candidate.ppl,
            kl=cmp.kl,
            top1=cmp.top1,
            eval_tokens=cmp.n_tokens,
        )
    else:
        ppl = perplexity(model, tokens, args.seq_len, progress=not args.quiet)
        result.update(ppl_q=ppl.ppl, eval_tokens=ppl.n_tokens)
    result["seq_len"] = args.seq_len
    table = _table(f"anybit eval: {args.checkpoint}", ["metric", "value"])
    for key, value in result.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    _console().print(table)
    if header.get("source"):
        _console().print(
            f"source: {header['source'].get('source')} (sha256 {str(header['source'].get('sha256'))[:12]})"
        )
    if args.json:
        _write_json(args.json, result)
    return 0


# ----- inspect --------------------------------------------------------------------------------
def cmd_inspect(args: argparse.Namespace) -> int:
    from anybit.io import read_header

    header = read_header(args.checkpoint, verify=True)
    console = _console()
    layers = header["layers"]
    total_bits = sum(info["bits"] for info in layers.values())
    total_params = 0
    table = _table(
        f"anybit checkpoint {args.checkpoint} (schema {header['schema_version']}, verified)",
        ["module", "kind", "weights", "acts", "shape", "bpw"],
    )
    for name, info in layers.items():
        shape = info["qweight"]["shape"]
        params = shape[0] * shape[1]
        total_params += params
        table.add_row(
            name,
            info["kind"],
            info["qweight"]["scheme"],
            info.get("acts", "-"),
            "x".join(map(str, shape)),
            f"{info['bits'] / params:.3f}",
        )
    if not args.summary:
        console.print(table)
    source = header.get("source") or {}
    console.print(
        f"architecture: {header.get('architecture')}, source: {source.get('source')} "
        f"({source.get('kind')}, sha256 {str(source.get('sha256'))[:16]})"
    )
    console.print(
        f"quantized modules: {len(layers)}, parameters: {total_params:,}, "
        f"bits/weight: {total_bits / max(total_params, 1):.4f}"
    )
    for name, info in header["files"].items():
        console.print(f"file {name}: {info['size']:,} bytes, sha256 {info['sha256'][:16]}")
    if args.json:
        _write_json(args.json, header)
    return 0


# ----- export ---------------------------------------------------------------------------------
EXPORT_TARGETS = ("hf-dequantized", "compressed-tensors", "gguf")


def cmd_export(args: argparse.Namespace) -> int:
    from anybit.io import export_compressed_tensors, export_hf_dequantized, load_checkpoint

    if args.to not in EXPORT_TARGETS:
        raise AnybitError(
            f"export target {args.to!r} is not supported; choose one of {', '.join(EXPORT_TARGETS)}"
        )
    if Path(args.out).exists() and not args.force:
        raise AnybitError(f"output directory {args.out} already exists; choose another path or pass --force")
    model, tokenizer, header = load_checkpoint(args.checkpoint)
    if args.to == "gguf":
        from anybit.io.gguf_export import export_gguf

        path, notes = export_gguf(model, header.get("source"), args.out, overwrite=args.force)
        how = f"run it with `llama-cli -m {path}`"
    else:
        export = export_compressed_tensors if args.to == "compressed-tensors" else export_hf_dequantized
        path, notes = export(model, tokenizer, args.out, overwrite=args.force)
        how = f"load it with AutoModelForCausalLM.from_pretrained({str(path)!r})"
        how += f"; serve it with `vllm serve {path}`" if args.to == "compressed-tensors" else ""
    for note in notes:
        _console().print(f"note: {note}")
    _console().print(f"exported {args.checkpoint} -> {path} ({args.to}); {how}")
    return 0


# ----- formats --------------------------------------------------------------------------------
def cmd_formats(args: argparse.Namespace) -> int:
    from anybit.formats import FORMAT_GRAMMAR, FormatFamily, get_format
    from anybit.scheme import PRESETS, scheme_grammar

    console = _console()
    if not args.names:
        console.print(FORMAT_GRAMMAR, markup=False)
        console.print()
        console.print(scheme_grammar(), markup=False)
        for name, scheme in PRESETS.items():
            console.print(f"  {name:12s} = {scheme}", markup=False)
        return 0
    for name in args.names:
        fmt = get_format(name)
        members = fmt.members if isinstance(fmt, FormatFamily) else (fmt,)
        for member in members:
            values = ", ".join(f"{v:g}" for v in member.levels.tolist())
            console.print(
                f"{member.name} ({member.bits} bits, {member.num_levels} levels): {values}", markup=False
            )
    return 0


# ----- bench ----------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "kernels":
        try:
            from anybit.kernels.bench import run_kernel_bench  # type: ignore[import-not-found]
        except ImportError as err:
            raise AnybitError(f"the kernel benchmark is not available in this build ({err})") from None
        run_kernel_bench(args.json)
        return 0
    if args.what == "model":
        from anybit.speed import run_model_bench

        result = run_model_bench(
            args.model,
            args.weights,
            args.acts,
            args.prompt,
            args.new_tokens,
            args.runs,
            args.json,
            lm_head=args.lm_head,
        )
        packed_name = f"packed {args.weights}{' + lm_head' if args.lm_head else ''}"
        table = _table(f"anybit bench model: {args.model}", ["", "fp32", packed_name])
        fp32, packed = result["fp32"], result["packed"]
        table.add_row("kernels", "torch", ", ".join(packed["kernels"]))
        table.add_row(
            "decode tokens/s", f"{fp32['decode_tokens_per_s']:.1f}", f"{packed['decode_tokens_per_s']:.1f}"
        )
        table.add_row("model resident memory", _mb(fp32["model_rss_bytes"]), _mb(packed["model_rss_bytes"]))
        table.add_row("bytes the model needs", _mb(fp32["expected_bytes"]), _mb(packed["expected_bytes"]))
        table.add_row(
            "resident - needed (activations, runtime)",
            _mb(fp32["model_rss_bytes"] - fp32["expected_bytes"]),
            _mb(packed["model_rss_bytes"] - packed["expected_bytes"]),
        )
        _console().print(table)
        _console().print(
            f"decode speed-up {result['decode_speedup']:.2f}x, memory ratio {result['memory_ratio']:.3f}"
        )
        return 0
    raise AnybitError(f"unknown benchmark {args.what!r}; choose kernels or model")


# ----- parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from anybit.workflow import DEFAULT_EVAL_TOKENS

    parser = argparse.ArgumentParser(
        prog="anybit", description="Quantize LLMs to any bit-width and number format."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser(
        "quantize", help="quantize a model, evaluate it against the original, save a checkpoint"
    )
    q.add_argument("--model", default="smollm2", help="smollm2 | gemma3-270m | a GGUF file | an HF directory")
    q.add_argument("--weights", help="weight scheme, e.g. int4:g64, nf4, mxfp4 (see `anybit formats`)")
    q.add_argument("--acts", help="activation scheme, e.g. int8:token (default: weights only)")
    q.add_argument("--algo", help="algorithms, comma-separated, transforms first (default rtn)")
    q.add_argument("--recipe", help="a YAML/TOML/JSON recipe (command-line options override it)")
    q.add_argument(
        "--override",
        action="append",
        metavar="REGEX=SCHEME",
        help="per-layer weight scheme by regex on module names ('skip' keeps float); repeatable",
    )
    q.add_argument(
        "--opt",
        action="append",
        metavar="KEY=VALUE",
        help="algorithm option, e.g. smooth.alpha=0.8, gptq.damp=0.01 (repeatable)",
    )
    q.add_argument("--lm-head", action="store_true", help="also quantize lm_head")
    q.add_argument("--embeddings", action="store_true", help="also quantize the token embeddings")
    q.add_argument("--out", help="checkpoint directory to write")
    q.add_argument("--force", action="store_true", help="replace --out if it exists")
    q.add_argument("--json", help="write the summary as JSON here")
    q.add_argument("--calib-corpus", help="calibration text: foldoc | mhcc | a text file (default foldoc)")
    q.add_argument("--calib-samples", type=int, help="calibration sequences (default 128)")
    q.add_argument("--calib-seqlen", type=int, help="calibration sequence length (default 512)")
    q.add_argument("--seed", type=int, help="calibration sampling seed (default 0)")
    q.add_argument("--eval-corpus", default="foldoc", help="evaluation text: foldoc | mhcc | a text file")
    q.add_argument(
        "--eval-tokens",
        type=int,
        default=DEFAULT_EVAL_TOKENS,
        help=f"evaluation tokens (default {DEFAULT_EVAL_TOKENS})",
    )
    q.add_argument("--seq-len", type=int, default=1024, help="evaluation window (default 1024)")
    q.add_argument("--no-eval", action="store_true", help="skip evaluation")
    q.add_argument("--layers", action="store_true", help="print the per-layer error table")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_quantize)

    e = sub.add_parser("eval", help="perplexity of a checkpoint (and KL against --reference)")
    e.add_argument("checkpoint")
    e.add_argument("--corpus", default="foldoc")
    e.add_argument("--eval-tokens", type=int, default=DEFAULT_EVAL_TOKENS)
    e.add_argument("--seq-len", type=int, default=1024)
    e.add_argument("--reference", help="original model source, for KL and top-1 (e.g. smollm2)")
    e.add_argument("--json")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("inspect", help="verify a checkpoint and show how each layer is quantized")
    i.add_argument("checkpoint")
    i.add_argument("--summary", action="store_true", help="totals only")
    i.add_argument("--json", help="write the header as JSON here")
    i.set_defaults(func=cmd_inspect)

    x = sub.add_parser("export", help="export a checkpoint for other tools")
    x.add_argument("checkpoint")
    x.add_argument("--to", required=True, help=f"target: {', '.join(EXPORT_TARGETS)}")
    x.add_argument("out", help="output directory (a .gguf file for --to gguf)")
    x.add_argument("--force", action="store_true")
    x.set_defaults(func=cmd_export)

    f = sub.add_parser("formats", help="list number formats, scheme grammar and presets, or show levels")
    f.add_argument("names", nargs="*", help="format names to show (e.g. nf4 fp4_e2m1 bitmod4)")
    f.set_defaults(func=cmd_formats)

    b = sub.add_parser("bench", help="benchmarks")
    b.add_argument("what", choices=["kernels", "model"])
    b.add_argument("--json")
    b.add_argument("--model", default="smollm2", help="model: decode speed and memory, fp32 vs packed")
    b.add_argument("--weights", default="int4:g64", help="weight scheme of the packed model")
    b.add_argument("--acts", help="activation scheme (int8b:token runs the INT8 kernels)")
    b.add_argument("--prompt", type=int, default=64)
    b.add_argument("--new-tokens", type=int, default=64)
    b.add_argument("--runs", type=int, default=3)
    b.add_argument("--lm-head", action="store_true", help="pack lm_head too (a tied one gets its own copy)")
    b.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AnybitError as err:
        print(f"anybit {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
