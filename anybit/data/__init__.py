"""Real text for calibration and evaluation, from Debian packages or a user's file.

- ``load_corpus("foldoc")``: Free On-line Dictionary of Computing (Debian ``dict-foldoc``, GNU FDL);
- ``load_corpus("mhcc")``: Matthew Henry's Concise Commentary (Debian ``sword-comm-mhcc``, public
  domain);
- ``load_corpus("path/to/file.txt")``: any UTF-8 text; paragraphs are its documents.

Packages are fetched with ``apt-get download`` into ``$ANYBIT_CACHE`` (default ``~/.cache/anybit``)
and read in pure Python; nothing comes from a model hub. ``Corpus.split()`` puts each whole document
in the calibration (~90%) or evaluation (~10%) part by a hash of its text, so the parts never overlap
and never change between runs (rule: :data:`SPLIT_RULE`). :func:`evaluation_tokens` and
:func:`calibration_samples` turn a part's text into token ids.
"""

from anybit.data.corpora import (
    CORPORA,
    DOCUMENT_SEPARATOR,
    EVAL_PERCENT,
    SPLIT_RULE,
    Corpus,
    CorpusPart,
    CorpusSplit,
    join_documents,
    load_corpus,
    load_text_file,
    split_key,
)
from anybit.data.tokens import calibration_samples, evaluation_tokens, tokenize, tokenizer_identity

__all__ = [
    "CORPORA",
    "DOCUMENT_SEPARATOR",
    "EVAL_PERCENT",
    "SPLIT_RULE",
    "Corpus",
    "CorpusPart",
    "CorpusSplit",
    "calibration_samples",
    "evaluation_tokens",
    "join_documents",
    "load_corpus",
    "load_text_file",
    "split_key",
    "tokenize",
    "tokenizer_identity",
]
