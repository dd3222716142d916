"""Slow: the main job on the real default model (SmolLM2-135M) and real text (FOLDOC)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from anybit.cli import main

pytestmark = pytest.mark.slow

EVAL_TOKENS = 4 * 1024


def _quantize(tmp: Path, name: str, *extra: str) -> dict:
    report = tmp / f"{name}.json"
    args = ["quantize", "--model", "smollm2", "--eval-tokens", str(EVAL_TOKENS), "--calib-samples", "8",
            "--out", str(tmp / name), "--json", str(report), "--quiet", *extra]  # fmt: skip
    assert main(args) == 0
    return json.loads(report.read_text())


def _reloaded_perplexity(directory: Path, **load: str) -> Any:
    """Perplexity of an export as an outside tool sees it: loaded by transformers (``load``: e.g.
    ``gguf_file``), on the same FOLDOC tokens as ``anybit quantize`` evaluates."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from anybit.data import evaluation_tokens, load_corpus
    from anybit.eval import perplexity

    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype="float32", **load).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(directory), **load)
    tokens = evaluation_tokens(tokenizer, load_corpus("foldoc").split().evaluation, EVAL_TOKENS, bos=True)
    return perplexity(model, tokens, 1024)


def test_w8_is_nearly_lossless_and_w4_is_not(tmp_path: Path) -> None:
    w8 = _quantize(tmp_path, "w8", "--weights", "int8:channel")
    assert w8["eval_tokens"] == 4 * 1023
    assert 5 < w8["ppl_fp"] < 60  # a real language model on real text
    assert abs(w8["ppl_q"] / w8["ppl_fp"] - 1) < 0.01
    assert w8["top1"] > 0.95
    w3 = _quantize(tmp_path, "w3", "--weights", "int3:g64")
    assert w3["ppl_fp"] == w8["ppl_fp"]  # same tokens, same reference
    assert w3["ppl_q"] > 1.05 * w3["ppl_fp"] and w3["kl"] > 5 * w8["kl"]
    assert w3["bits_per_weight"] == pytest.approx(3.5)


def test_checkpoint_reproduces_perplexity_and_exports(tmp_path: Path) -> None:
    data = _quantize(tmp_path, "w4", "--weights", "int4:g64", "--acts", "int8:token")
    assert main(["eval", str(tmp_path / "w4"), "--eval-tokens", str(EVAL_TOKENS), "--quiet",
                 "--json", str(tmp_path / "eval.json")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "eval.json").read_text())["ppl_q"] == pytest.approx(data["ppl_q"], rel=1e-9)
    assert main(["inspect", str(tmp_path / "w4"), "--summary"]) == 0
    assert main(["export", str(tmp_path / "w4"), "--to", "hf-dequantized", str(tmp_path / "hf")]) == 0

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert model.config.model_type == "llama" and tokenizer is not None


def test_weight_only_result_reproduces_through_hf_dequantized_export(tmp_path: Path) -> None:
    """An outside evaluator gets the same perplexity from the exported plain-transformers model."""
    data = _quantize(tmp_path, "w3", "--weights", "int3:g64:asym")
    assert main(["export", str(tmp_path / "w3"), "--to", "hf-dequantized", str(tmp_path / "hf")]) == 0
    result = _reloaded_perplexity(tmp_path / "hf")
    assert result.n_tokens == data["eval_tokens"]
    assert result.ppl == pytest.approx(data["ppl_q"], rel=1e-5)
    assert result.ppl > 1.05 * data["ppl_fp"]  # it carries the quantization error, not float weights


@pytest.mark.parametrize(
    ("weights", "acts", "rel"), [("int4:g64", None, 1e-5), ("int8:channel", "int8:token", 0.01)]
)
def test_result_reproduces_through_compressed_tensors_export(
    weights: str, acts: str | None, rel: float, tmp_path: Path
) -> None:
    """The compressed-tensors export, loaded by transformers + compressed-tensors, gives anybit's
    perplexity: the same for weight-only, within 1% for W8A8 (compressed-tensors' simulated int8
    activations scale by absmax / 127.5, anybit's by / 127)."""
    pytest.importorskip("compressed_tensors")
    data = _quantize(tmp_path, "q", "--weights", weights, *(("--acts", acts) if acts else ()))
    assert main(["export", str(tmp_path / "q"), "--to", "compressed-tensors", str(tmp_path / "ct")]) == 0
    result = _reloaded_perplexity(tmp_path / "ct")
    assert result.n_tokens == data["eval_tokens"]
    assert result.ppl == pytest.approx(data["ppl_q"], rel=rel)
    assert result.ppl > 1.002 * data["ppl_fp"]  # it carries the quantization error


@pytest.mark.parametrize(
    ("weights", "qtype"),
    [("int4:g32:scale=fp16", "Q4_0"), ("uint5:g32:asym=float:scale=fp16", "Q5_1"), ("mxfp4", "MXFP4")],
)
def test_result_reproduces_through_gguf_export(weights: str, qtype: str, tmp_path: Path) -> None:
    """The GGUF export of a smollm2 result, loaded by transformers' GGUF reader (gguf-py's
    dequantizer), gives anybit's perplexity exactly; untouched tensors keep their source type."""
    import gguf

    data = _quantize(tmp_path, "q", "--weights", weights)
    assert main(["export", str(tmp_path / "q"), "--to", "gguf", str(tmp_path / "q.gguf")]) == 0
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "q.gguf")).tensors}
    assert types["blk.0.attn_q.weight"] == types["blk.29.ffn_down.weight"] == qtype
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    result = _reloaded_perplexity(tmp_path, gguf_file="q.gguf")
    assert result.n_tokens == data["eval_tokens"]
    assert result.ppl == pytest.approx(data["ppl_q"], rel=1e-6)
    assert result.ppl > 1.002 * data["ppl_fp"]
