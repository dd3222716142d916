"""FOLDOC, the Free On-line Dictionary of Computing, from the Debian package ``dict-foldoc``.

License: GNU Free Documentation License (v1.1 or later), editor Denis Howe; see the package's
``copyright`` file. The package stores the dictionary in dictd format: ``foldoc.dict.dz`` is dictzip,
which is gzip with an extra header field, so ``gzip`` reads it; ``foldoc.index`` lists
``headword<TAB>offset<TAB>length`` with offset and length in dictd's base64 digits. Several headwords
can point at one entry; each distinct entry becomes one document.

Cleaning turns dictd markup into plain prose: cross-references ``{like this}`` keep their words,
``{label (url)}`` keeps the label, a bare ``{(url)}`` keeps the URL; leading ``<category>`` tags and trailing
``(YYYY-MM-DD)`` date lines are dropped, and hard-wrapped lines are joined into paragraphs
(indented, preformatted blocks keep their lines). A document is ``headword\\n\\nparagraph\\n\\n...``.
"""

from __future__ import annotations

import gzip
import re
import zlib

from anybit.errors import DataError

DICT_FILE = "usr/share/dictd/foldoc.dict.dz"
INDEX_FILE = "usr/share/dictd/foldoc.index"
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64)}

_LINK_URL_ONLY = re.compile(r"\{\s*\(([^{}()]*)\)\s*\}")
_LINK_LABEL_URL = re.compile(r"\{([^{}]*?)\s*\((?:[a-z]+:|[\w.-]+\.html?)[^{}]*\)\s*\}")
_LINK = re.compile(r"\{([^{}]*)\}")
# "{label (url)" whose closing brace the source forgot
_LINK_UNCLOSED = re.compile(r"\{([^{}]*?)\s*\((?:https?|ftp|mailto):[^\s(){}]*\)")
# a {label (url)} link that a blank line breaks in two, as a few entries have
_SPLIT_LINK = re.compile(r"\{[^{}]*\n[ \t]*\n[^{}]*\((?:[a-z]+:|[\w.-]+\.html?)[^{}]*\)\s*\}")
_CATEGORY = re.compile(r"^<[^<>]*>\s*")
_DATE_ONLY = re.compile(r"^\(\d{4}-\d{2}-\d{2}\)$")
_SPACES = re.compile(r"[ \t]+")
_BODY_INDENT = 3


def decode_b64_number(digits: str) -> int:
    """dictd's base64 number: big-endian digits of ``A-Za-z0-9+/``."""
    value = 0
    for ch in digits:
        if ch not in _B64_VALUE:
            raise ValueError(f"bad dictd base64 digit {ch!r} in {digits!r}")
        value = value * 64 + _B64_VALUE[ch]
    return value


def parse_index(index_text: str) -> list[tuple[str, int, int]]:
    """``(headword, offset, length)`` per index line, in file order."""
    rows = []
    for line in index_text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        rows.append((parts[0], decode_b64_number(parts[1]), decode_b64_number(parts[2])))
    return rows


def _clean_links(text: str, *, code: bool = False) -> str:
    """Cross-references to plain words; in ``code`` only URL links, since braces there are code."""
    text = _LINK_URL_ONLY.sub(r"\1", text)
    text = _LINK_LABEL_URL.sub(r"\1", text)
    text = _LINK_UNCLOSED.sub(r"\1", text)
    if code:
        return text
    # nested braces are rare; repeat until none are left
    for _ in range(3):
        text, count = _LINK.subn(r"\1", text)
        if not count:
            break
    return text


def _clean_paragraph(lines: list[str]) -> str:
    """One blank-line-separated block of an entry's body → one clean paragraph (or "").

    Prose lines carry a 3-space indent (a few wrapped continuations none); a line indented further
    marks code, a table or a diagram, whose lines are kept as they are.
    """
    indents = [len(line) - len(line.lstrip(" ")) for line in lines]
    if max(indents) > _BODY_INDENT:
        cut = min(indents)
        text = "\n".join(line[cut:].rstrip() for line in lines)
        text = _clean_links(text, code=True).strip("\n")
    else:
        text = _SPACES.sub(" ", _clean_links(" ".join(line.strip() for line in lines))).strip()
    if _DATE_ONLY.match(text.strip()) or not re.search(r"\w", text):
        return ""
    return text


def clean_entry(raw: str) -> tuple[str, str]:
    """Raw dictd entry → ``(headword, document)``; the document is "" when nothing is left."""
    raw = _SPLIT_LINK.sub(lambda m: re.sub(r"\n[ \t]*\n", "\n", m.group()), raw.replace("\r", ""))
    lines = raw.split("\n")
    # leading unindented lines are the headword(s); the first one names the entry
    head: list[str] = []
    while lines and lines[0].strip() and not lines[0].startswith((" ", "\t")):
        head.append(lines.pop(0).strip())
    headword = head[0] if head else ""
    blocks: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            blocks[-1].append(line.expandtabs(8))
        elif blocks[-1]:
            blocks.append([])
    paragraphs = [_clean_paragraph(block) for block in blocks if block]
    if paragraphs and paragraphs[0]:
        paragraphs[0] = _CATEGORY.sub("", paragraphs[0])
    paragraphs = [p for p in paragraphs if p and re.search(r"\w", p)]
    if not paragraphs:
        return headword, ""
    return headword, "\n\n".join([headword, *paragraphs]) if headword else "\n\n".join(paragraphs)


def parse_foldoc(files: dict[str, bytes], origin: str) -> list[str]:
    """The ``dict-foldoc`` package's files → cleaned documents, in dictionary order."""
    for needed in (DICT_FILE, INDEX_FILE):
        if needed not in files:
            raise DataError(f"{origin}: package has no {needed}; is this really dict-foldoc?")
    try:
        body = gzip.decompress(files[DICT_FILE])
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{origin}: {DICT_FILE} is not readable dictzip/gzip ({exc})") from exc
    try:
        index = parse_index(files[INDEX_FILE].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{origin}: {INDEX_FILE} is corrupt ({exc})") from exc
    spans = sorted({(offset, length) for word, offset, length in index if not word.startswith("00")})
    documents = []
    for offset, length in spans:
        if offset + length > len(body):
            raise DataError(f"{origin}: index points past the end of {DICT_FILE}; the package is corrupt")
        raw = body[offset : offset + length].decode("utf-8", "replace")
        _, document = clean_entry(raw)
        if document:
            documents.append(document)
    return documents
