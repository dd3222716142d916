"""The main job as one function: load -> calibrate -> quantize -> evaluate -> save.

The CLI's ``anybit quantize`` is a thin wrapper around :func:`run_quantize`, so the same job is one
call from Python too::

    from anybit.workflow import QuantizeJob, run_quantize
    report = run_quantize(QuantizeJob(model="smollm2", recipe=Recipe(weights="int4:g64"), out="out/w4"))
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from anybit.errors import CheckpointError
from anybit.eval import DEFAULT_SEQ_LEN, compare_models
from anybit.recipe import Recipe

DEFAULT_EVAL_TOKENS = 16 * DEFAULT_SEQ_LEN


@dataclass
class QuantizeJob:
    model: str
    recipe: Recipe
    out: str | None = None
    overwrite: bool = False
    evaluate: bool = True
    eval_corpus: str = "foldoc"
    eval_tokens: int | None = DEFAULT_EVAL_TOKENS
    seq_len: int = DEFAULT_SEQ_LEN
    progress: bool = True


@dataclass
class QuantizeReport:
    model: str
    recipe: Recipe
    bits_per_weight: float
    quantized_params: int
    quantized_bytes: int
    model_bytes_fp32: int
    model_bytes_quantized: int
    seconds: float
    quantize_seconds: float
    peak_rss_mb: float
    calibration_tokens: int
    layers: list[Any]
    ppl_fp: float | None = None
    ppl_q: float | None = None
    kl: float | None = None
    top1: float | None = None
    eval_tokens: int | None = None
    eval_seq_len: int | None = None
    eval_corpus: str | None = None
    out: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        r = self.recipe
        return {
            "model": self.model,
            "weights": str(r.weights) if r.weights else None,
            "acts": str(r.acts) if r.acts else None,
            "algo": ",".join(r.algorithms),
            "bits_per_weight": self.bits_per_weight,
            "quantized_params": self.quantized_params,
            "quantized_bytes": self.quantized_bytes,
            "model_bytes_fp32": self.model_bytes_fp32,
            "model_bytes_quantized": self.model_bytes_quantized,
            "ppl_fp": self.ppl_fp,
            "ppl_q": self.ppl_q,
            "kl": self.kl,
            "top1": self.top1,
            "eval_tokens": self.eval_tokens,
            "eval_seq_len": self.eval_seq_len,
            "eval_corpus": self.eval_corpus,
            "calibration_tokens": self.calibration_tokens,
            "seconds": self.seconds,
            "quantize_seconds": self.quantize_seconds,
            "peak_rss_mb": self.peak_rss_mb,
            "out": self.out,
            "recipe": r.to_dict(),
            "notes": self.notes,
            "layers": [
                {
                    "name": layer.name,
                    "weights": layer.weights,
                    "acts": layer.acts,
                    "params": layer.params,
                    "bits_per_weight": layer.bits_per_weight,
                    "rel_error": layer.rel_error,
                    "seconds": layer.seconds,
                    "block_seconds": layer.block_seconds,
                }
                for layer in self.layers
            ],
        }


def model_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes if every parameter were fp32, bytes as quantized: packed modules + the rest in fp32)."""
    from anybit.io import quantized_modules

    qmods = quantized_modules(model)
    skip = tuple(f"{n}." for n in qmods)
    seen: set[int] = set()
    rest = 0
    for key, value in model.state_dict(keep_vars=True).items():
        if key.startswith(skip) or value.data_ptr() in seen:
            continue
        seen.add(value.data_ptr())
        rest += value.numel() * 4
    quant = sum(m.qweight.nbytes for m in qmods.values())
    bias = sum(m.bias.numel() * 4 for m in qmods.values() if getattr(m, "bias", None) is not None)
    fp32 = rest + sum(m.qweight.numel * 4 for m in qmods.values()) + bias
    return fp32, rest + quant + bias


def run_quantize(job: QuantizeJob) -> QuantizeReport:
    from anybit.data import calibration_samples, evaluation_tokens, load_corpus
    from anybit.io import save_checkpoint
    from anybit.models import load_model
    from anybit.models.pipeline import quantize_model

    start = time.perf_counter()
    if job.out is not None and Path(job.out).exists() and not job.overwrite:
        raise CheckpointError(
            f"output directory {job.out} already exists; choose another path or pass --force"
        )
    loaded = load_model(job.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    calib = job.recipe.calibration
    calib_ids = calibration_samples(
        tokenizer, load_corpus(calib.corpus).split().calibration, calib.samples, calib.seqlen, calib.seed
    )
    eval_ids = None
    if job.evaluate:  # tokenize first: a too-short text fails before minutes of work
        eval_part = load_corpus(job.eval_corpus).split().evaluation
        eval_ids = evaluation_tokens(tokenizer, eval_part, job.eval_tokens, bos=True)
    reference = copy.deepcopy(model) if job.evaluate else None
    result = quantize_model(model, job.recipe, calib_ids, progress=job.progress)
    fp32_bytes, q_bytes = model_bytes(model)
    report = QuantizeReport(
        model=job.model,
        recipe=job.recipe,
        bits_per_weight=result.bits_per_weight,
        quantized_params=result.quantized_params,
        quantized_bytes=sum(layer.bits for layer in result.layers) // 8,
        model_bytes_fp32=fp32_bytes,
        model_bytes_quantized=q_bytes,
        seconds=0.0,
        quantize_seconds=result.seconds,
        peak_rss_mb=result.peak_rss_mb,
        calibration_tokens=result.calibration_tokens,
        layers=result.layers,
        notes=list(loaded.notes) + list(result.notes),
    )
    if reference is not None and eval_ids is not None:
        comparison = compare_models(reference, model, eval_ids, job.seq_len, progress=job.progress)
        report.ppl_fp, report.ppl_q = comparison.reference.ppl, comparison.candidate.ppl
        report.kl, report.top1 = comparison.kl, comparison.top1
        report.eval_tokens, report.eval_seq_len = comparison.n_tokens, job.seq_len
        report.eval_corpus = job.eval_corpus
        del reference
    if job.out is not None:
        save_checkpoint(
            model,
            job.out,
            tokenizer=tokenizer,
            recipe=job.recipe,
            source=loaded.identity,
            overwrite=job.overwrite,
        )
        report.out = job.out
    report.seconds = time.perf_counter() - start
    return report
