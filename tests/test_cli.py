"""The CLI end to end on a tiny model saved as a Hugging Face directory and a local text file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anybit.cli import EXIT_USER_ERROR, main
from anybit.models import tiny_model, tiny_tokenizer

SENTENCE = (
    "quantization maps real numbers onto a small grid of levels so that weights take fewer bits and "
    "kernels move fewer bytes; the error it adds depends on the grid, the scale and the data"
)
WORDS = SENTENCE.split(" ")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    model_dir = root / "tiny-llama"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    paragraphs = [" ".join(WORDS[(i * 7) % len(WORDS) :] + WORDS[: (i * 7) % len(WORDS)]) for i in range(200)]
    text = root / "corpus.txt"
    text.write_text("\n\n".join(paragraphs))
    return {"root": root, "model": model_dir, "text": text}


def _quantize_args(ws: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "quantize", "--model", str(ws["model"]),
        "--calib-corpus", str(ws["text"]), "--eval-corpus", str(ws["text"]),
        "--calib-samples", "4", "--calib-seqlen", "64", "--eval-tokens", "1024", "--seq-len", "128",
        "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip


def test_quantize_eval_inspect_export(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = workspace["root"] / "w4a8"
    report = workspace["root"] / "w4a8.json"
    code = main(
        _quantize_args(workspace, out, "--weights", "int4:g32", "--acts", "int8:token", "--json", str(report))
    )
    assert code == 0
    data = json.loads(report.read_text())
    for key in ("model", "weights", "acts", "algo", "bits_per_weight", "ppl_fp", "ppl_q", "kl", "top1",
                "eval_tokens", "seconds"):  # fmt: skip
        assert key in data, key
    assert data["weights"] == "int4:g32" and data["acts"] == "int8:token" and data["algo"] == "rtn"
    assert data["bits_per_weight"] == pytest.approx(5.0)
    assert data["eval_tokens"] == 8 * 127 and data["kl"] > 0 and 0 < data["top1"] <= 1
    assert "perplexity" in capsys.readouterr().out

    eval_json = str(workspace["root"] / "eval.json")
    assert main(["eval", str(out), "--corpus", str(workspace["text"]), "--eval-tokens", "1024",
                 "--seq-len", "128", "--json", eval_json, "--quiet"]) == 0  # fmt: skip
    evaluated = json.loads((workspace["root"] / "eval.json").read_text())
    assert evaluated["ppl_q"] == pytest.approx(data["ppl_q"], rel=1e-9)  # the checkpoint reproduces it

    assert main(["inspect", str(out)]) == 0
    assert "q_proj" in capsys.readouterr().out

    exported = workspace["root"] / "hf"
    assert main(["export", str(out), "--to", "hf-dequantized", str(exported)]) == 0
    assert (exported / "config.json").is_file()

    # GGUF needs a GGUF source (this tiny model is a Hugging Face directory): a clear refusal
    assert main(["export", str(out), "--to", "gguf", str(workspace["root"] / "m.gguf")]) != 0
    assert "convert_hf_to_gguf" in capsys.readouterr().err
    assert not (workspace["root"] / "m.gguf").exists()

    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    served = workspace["root"] / "ct"
    assert main(["export", str(out), "--to", "compressed-tensors", str(served)]) == 0
    config = json.loads((served / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    assert AutoModelForCausalLM.from_pretrained(str(served)) is not None


def test_recipe_and_overrides_from_the_command_line(workspace: dict[str, Path]) -> None:
    recipe = workspace["root"] / "recipe.yaml"
    recipe.write_text("weights: int4:g32\noverrides:\n  - pattern: 'down_proj$'\n    weights: int8:channel\n")
    report = workspace["root"] / "recipe.json"
    args = _quantize_args(workspace, workspace["root"] / "r", "--recipe", str(recipe), "--override",
                          r"layers\.0\.=skip", "--json", str(report), "--no-eval")  # fmt: skip
    assert main(args) == 0
    layers = {layer["name"]: layer["weights"] for layer in json.loads(report.read_text())["layers"]}
    assert layers["model.layers.1.mlp.down_proj"] == "int8:channel"
    assert not any(".layers.0." in name for name in layers)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weights", "int4:g48"], "group size 48 does not divide"),
        (["--weights", "int9"], "neither a preset nor a number format"),
        (["--weights", "int4:g32", "--algo", "magic"], "unknown algorithm 'magic'"),
        (["--weights", "int4:g32", "--eval-tokens", "10000000"], "tokens"),
    ],
)
def test_bad_input_is_one_clear_line_and_leaves_no_output(
    workspace: dict[str, Path], capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = workspace["root"] / "bad"
    assert main(_quantize_args(workspace, out, *extra)) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()
    assert not [p for p in workspace["root"].iterdir() if p.name.startswith(".bad")]


def test_missing_model_and_existing_output(
    workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["quantize", "--model", "/no/such/model", "--weights", "int4:g32", "--quiet"]) == EXIT_USER_ERROR
    )
    assert "/no/such/model" in capsys.readouterr().err
    out = workspace["root"] / "exists"
    out.mkdir()
    assert main(_quantize_args(workspace, out, "--weights", "int4:g32")) == EXIT_USER_ERROR
    assert "already exists" in capsys.readouterr().err
    assert main(["inspect", str(workspace["root"] / "nothing")]) == EXIT_USER_ERROR


def test_formats_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["formats"]) == 0
    assert "nvfp4" in capsys.readouterr().out
    assert main(["formats", "fp4_e2m1", "bitmod3"]) == 0
    out = capsys.readouterr().out
    assert "fp4_e2m1 (4 bits, 15 levels): -6, -4, -3" in out and "bitmod3.ea_neg" in out


def test_bench_model_packs_lm_head_on_request(workspace: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "model", "--model", str(workspace["model"]), "--weights", "int4:g32", "--lm-head"]
    assert main([*argv, "--prompt", "8", "--new-tokens", "4", "--runs", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    packed = result["packed"]["packed_modules"]
    assert "lm_head" in packed and any(name.endswith("mlp.down_proj") for name in packed)
    assert result["packed"]["lm_head"] is True
    # the tied lm_head gets its own packed copy: more bytes than the decoder alone, fewer than fp32
    assert result["packed"]["expected_bytes"] < result["fp32"]["expected_bytes"]
