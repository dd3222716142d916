"""Text corpora for calibration and evaluation, and their fixed calibration/evaluation split.

Two corpora come from Debian packages, fetched with ``apt-get download`` into the cache
(``$ANYBIT_CACHE`` or ``~/.cache/anybit``) and read in pure Python, so a run never touches a model hub:

- ``foldoc``: the Free On-line Dictionary of Computing (``dict-foldoc``; GNU FDL), about 12k
  encyclopedic entries, ~4.8 MB of prose once cleaned (see :mod:`anybit.data.foldoc`);
- ``mhcc``: Matthew Henry's Concise Commentary (``sword-comm-mhcc``; public domain), about 4k notes,
  ~3.9 MB (see :mod:`anybit.data.sword`).

Any UTF-8 text file works too; its paragraphs (blocks separated by blank lines) are its documents.

**Split rule.** Whole documents, never pieces of one, go to one part: a document is in the
*evaluation* part when the first 8 bytes of the sha256 of its UTF-8 text, read as a big-endian
integer, are ``< 10`` modulo 100; every other document is *calibration* (~90% / ~10%). The rule depends
on nothing but the document's own text, so it is the same on every machine and run, a document keeps
its part when other entries are added or removed in a newer package version, and identical documents
always land in the same part: the parts never share a document. If a small text (a user file) gets
no evaluation document that way, the document with the smallest hash becomes evaluation; if it gets
no calibration document, the one with the largest hash becomes calibration. Both parts carry the
corpus's source and license so that results can cite them.

The cleaned documents of a packaged corpus are cached as ``corpora/<name>/documents.jsonl`` with a
``manifest.json`` (package, version, license, sha256 of the text, document count); a cache whose
checksum or cleaner version does not match is rebuilt from the cached ``.deb``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anybit.data.cache import atomic_write_bytes, atomic_write_json, cache_root, sha256_file, sha256_text
from anybit.data.debian import fetch_deb, read_deb
from anybit.data.foldoc import parse_foldoc
from anybit.data.sword import parse_zcom
from anybit.errors import DataError

DOCUMENT_SEPARATOR = "\n\n"
EVAL_PERCENT = 10
SPLIT_RULE = (
    "whole documents; evaluation iff int.from_bytes(sha256(doc.encode('utf-8')).digest()[:8], 'big') "
    f"% 100 < {EVAL_PERCENT}, else calibration (if a part would be empty: smallest hash -> evaluation, "
    "largest -> calibration)"
)
# bump when cleaning changes, so that cached text made by an older cleaner is rebuilt
CLEANER_VERSION = 3


def join_documents(documents: Sequence[str], separator: str = DOCUMENT_SEPARATOR) -> str:
    """Documents as one text, separated by a blank line (the form that is tokenized)."""
    return separator.join(documents)


@dataclass(frozen=True)
class CorpusPart:
    """The calibration or the evaluation part of a corpus, with its provenance."""

    corpus: str
    part: str  # "calibration" or "evaluation"
    source: str
    license: str
    documents: tuple[str, ...] = field(repr=False)

    @property
    def text(self) -> str:
        return join_documents(self.documents)

    def describe(self) -> dict[str, Any]:
        """Provenance for reports and checkpoint headers."""
        text = self.text
        return {
            "corpus": self.corpus,
            "part": self.part,
            "source": self.source,
            "license": self.license,
            "n_documents": len(self.documents),
            "n_chars": len(text),
            "sha256": sha256_text(text),
            "split_rule": SPLIT_RULE,
        }


@dataclass(frozen=True)
class CorpusSplit:
    """The two disjoint parts of a corpus."""

    calibration: CorpusPart
    evaluation: CorpusPart


@dataclass(frozen=True)
class Corpus:
    """A named list of documents (dictionary entries, commentary notes, paragraphs) with provenance."""

    name: str
    license: str
    source: str
    documents: list[str] = field(repr=False)
    version: str = ""

    @property
    def text(self) -> str:
        return join_documents(self.documents)

    def split(self) -> CorpusSplit:
        """Deterministic calibration/evaluation split by whole documents (module docstring: rule)."""
        if len(self.documents) < 2:
            raise DataError(
                f"corpus {self.name!r} has {len(self.documents)} document(s); a calibration/evaluation "
                "split needs at least 2 (for a text file: paragraphs separated by blank lines)"
            )
        keys = [split_key(doc) for doc in self.documents]
        is_eval = [key % 100 < EVAL_PERCENT for key in keys]
        if not any(is_eval):
            is_eval[min(range(len(keys)), key=keys.__getitem__)] = True
        if all(is_eval):
            is_eval[max(range(len(keys)), key=keys.__getitem__)] = False
        calibration = tuple(d for d, e in zip(self.documents, is_eval, strict=True) if not e)
        evaluation = tuple(d for d, e in zip(self.documents, is_eval, strict=True) if e)
        return CorpusSplit(
            calibration=CorpusPart(self.name, "calibration", self.source, self.license, calibration),
            evaluation=CorpusPart(self.name, "evaluation", self.source, self.license, evaluation),
        )

    def describe(self) -> dict[str, Any]:
        text = self.text
        return {
            "corpus": self.name,
            "source": self.source,
            "license": self.license,
            "version": self.version,
            "n_documents": len(self.documents),
            "n_chars": len(text),
            "sha256": sha256_text(text),
        }


def split_key(document: str) -> int:
    """The stable 64-bit hash that places a document in a part."""
    return int.from_bytes(hashlib.sha256(document.encode("utf-8")).digest()[:8], "big")


@dataclass(frozen=True)
class PackagedCorpus:
    """How to get one corpus out of one Debian package."""

    name: str
    package: str
    license: str
    description: str
    parse: Callable[[dict[str, bytes], str], list[str]]


CORPORA: dict[str, PackagedCorpus] = {
    "foldoc": PackagedCorpus(
        "foldoc",
        "dict-foldoc",
        "GFDL-1.1-or-later",
        "Free On-line Dictionary of Computing, ed. Denis Howe",
        parse_foldoc,
    ),
    "mhcc": PackagedCorpus(
        "mhcc",
        "sword-comm-mhcc",
        "public-domain",
        "Matthew Henry's Concise Commentary on the Whole Bible",
        parse_zcom,
    ),
}


def load_corpus(name_or_path: str, *, cache_dir: str | Path | None = None, refresh: bool = False) -> Corpus:
    """A corpus by name (``foldoc``, ``mhcc``) or a UTF-8 text file by path.

    Named corpora are fetched and cleaned once, then read from the cache; ``refresh`` rebuilds the
    cleaned text from the cached ``.deb`` (delete ``debs/`` in the cache to download again). A corpus
    name wins over a file of the same name: write ``./foldoc`` to mean the file.
    """
    spec = CORPORA.get(name_or_path.lower())
    if spec is not None:
        return _load_packaged(spec, cache_root(cache_dir), refresh)
    return load_text_file(name_or_path)


def _load_packaged(spec: PackagedCorpus, root: Path, refresh: bool) -> Corpus:
    corpus_dir = root / "corpora" / spec.name
    if not refresh:
        cached = _read_cached(spec, corpus_dir)
        if cached is not None:
            return cached
    deb = fetch_deb(spec.package, root / "debs")
    package = read_deb(deb)
    if package.name and package.name != spec.package:
        raise DataError(f"{deb}: holds package {package.name!r}, expected {spec.package!r}; delete it")
    documents = spec.parse(package.files, f"corpus {spec.name!r} ({deb.name})")
    if len(documents) < 2:
        raise DataError(
            f"corpus {spec.name!r}: {deb.name} yielded {len(documents)} document(s); the package is "
            f"not what anybit expects. Delete {deb} and retry"
        )
    corpus = Corpus(
        name=spec.name,
        license=spec.license,
        source=f"Debian package {spec.package} {package.version} ({spec.description})",
        documents=documents,
        version=package.version,
    )
    lines = "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in documents)
    atomic_write_bytes(corpus_dir / "documents.jsonl", lines.encode("utf-8"))
    atomic_write_json(
        corpus_dir / "manifest.json",
        {
            "corpus": spec.name,
            "package": spec.package,
            "version": package.version,
            "license": spec.license,
            "source": corpus.source,
            "deb_file": deb.name,
            "deb_sha256": sha256_file(deb),
            "text_sha256": sha256_text(corpus.text),
            "n_documents": len(documents),
            "n_chars": len(corpus.text),
            "cleaner_version": CLEANER_VERSION,
            "split_rule": SPLIT_RULE,
        },
    )
    return corpus


def _read_cached(spec: PackagedCorpus, corpus_dir: Path) -> Corpus | None:
    """The cached corpus if its manifest matches its text, else None (it will be rebuilt)."""
    try:
        manifest = json.loads((corpus_dir / "manifest.json").read_text(encoding="utf-8"))
        raw = (corpus_dir / "documents.jsonl").read_text(encoding="utf-8")
        documents = [json.loads(line) for line in raw.splitlines() if line]
    except (OSError, ValueError):
        return None
    if manifest.get("cleaner_version") != CLEANER_VERSION or manifest.get("n_documents") != len(documents):
        return None
    if manifest.get("text_sha256") != sha256_text(join_documents(documents)):
        return None
    return Corpus(
        name=spec.name,
        license=manifest.get("license", spec.license),
        source=manifest.get("source", spec.package),
        documents=documents,
        version=manifest.get("version", ""),
    )


_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def load_text_file(path: str | Path) -> Corpus:
    """A UTF-8 text file as a corpus: each blank-line-separated paragraph is one document."""
    file = Path(path).expanduser()
    known = ", ".join(sorted(CORPORA))
    if not file.exists():
        raise DataError(f"text {str(path)!r}: no such file, and not a known corpus name ({known})")
    if file.is_dir():
        raise DataError(f"text {str(path)!r}: is a directory; give a UTF-8 text file or one of: {known}")
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise DataError(f"text {str(path)!r}: cannot read it ({exc})") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"text {str(path)!r}: not UTF-8 (invalid byte at offset {exc.start}); convert it, "
            "e.g. `iconv -f latin1 -t utf-8`"
        ) from exc
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    documents = [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()]
    if not documents:
        raise DataError(f"text {str(path)!r}: contains no text; give a file with prose in it")
    return Corpus(
        name=file.name,
        license="unknown (user-supplied file)",
        source=f"file {file.resolve()} (sha256 {hashlib.sha256(data).hexdigest()[:16]})",
        documents=documents,
    )
