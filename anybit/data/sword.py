"""Matthew Henry's Concise Commentary (MHCC) from the Debian package ``sword-comm-mhcc``.

License: public domain ("Public Domain--Copy Freely", per the package's ``copyright`` file and the
module's ``DistributionLicense``). The text is a SWORD compressed-verse module (``ModDrv=zCom4``,
``CompressType=ZIP``, ``BlockType=BOOK``) in ``usr/share/sword/modules/comments/zcom/mhcc/``, one
set of three files per testament (``ot.*``, ``nt.*``):

- ``*.bzs``: one little-endian ``uint32`` triple ``(offset, size, usize)`` per block: where the
  zlib-compressed block lies in ``*.bzz`` and how long it is once inflated;
- ``*.bzz``: the compressed blocks (one per Bible book here);
- ``*.bzv``: one entry per verse slot of the KJV versification (testament and book headings,
  chapter headings, then verses): ``uint32 block, uint32 offset, uint16|uint32 size`` locating the
  verse's text inside the inflated block. SWORD's ``zVerse`` uses 10-byte entries (``uint16``
  size) and ``zVerse4`` 12-byte ones; this package says ``zCom4`` but its files hold 10-byte
  entries, so the entry width is detected by checking which layout indexes the blocks consistently.

A commentary note covers a range of verses, so consecutive verse slots repeat the same
``(block, offset, size)``; each distinct note is one document, in file order (OT then NT).
The notes are OSIS XML fragments; markup is stripped to prose: ``x-p`` divisions, titles, chapter
markers and table rows become paragraph breaks, everything else keeps only its text.
"""

from __future__ import annotations

import html
import re
import struct
import zlib

from anybit.errors import DataError

MODULE_DIR = "usr/share/sword/modules/comments/zcom/mhcc/"
TESTAMENTS = ("ot", "nt")

_BREAK_TAGS = re.compile(
    r"<(?:div|chapter|title|/title|row|/row|lb|p|/p|/l|l|lg|/lg|/item|item|list|/list)\b[^>]*>",
    re.IGNORECASE,
)
_CELL_END = re.compile(r"</cell\s*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"<[^<>]*>")
_SPACES = re.compile(r"[ \t\r\f\v]+")
_PARAGRAPH_BREAK = "\u2029"  # a character that cannot occur in the OSIS source


def read_blocks(bzs: bytes, bzz: bytes, origin: str) -> list[bytes]:
    """Inflate every block that ``bzs`` describes inside ``bzz``."""
    if len(bzs) % 12:
        raise DataError(f"{origin}: block index is {len(bzs)} bytes, not a multiple of 12; corrupt module")
    blocks = []
    for number, (offset, size, usize) in enumerate(struct.iter_unpack("<III", bzs)):
        if offset + size > len(bzz):
            raise DataError(f"{origin}: block {number} runs past the end of the data file; corrupt module")
        try:
            data = zlib.decompressobj().decompress(bzz[offset : offset + size])
        except zlib.error as exc:
            raise DataError(f"{origin}: block {number} is not zlib data ({exc}); corrupt module") from exc
        if len(data) != usize:
            raise DataError(f"{origin}: block {number} inflates to {len(data)} bytes, index says {usize}")
        blocks.append(data)
    return blocks


def _entries(bzv: bytes, width: int) -> list[tuple[int, int, int]]:
    fmt = "<IIH" if width == 10 else "<III"
    return list(struct.iter_unpack(fmt, bzv))


def _fits(entries: list[tuple[int, int, int]], blocks: list[bytes]) -> bool:
    return all(
        size == 0 or (block < len(blocks) and offset + size <= len(blocks[block]))
        for block, offset, size in entries
    )


def read_verse_index(bzv: bytes, blocks: list[bytes], origin: str) -> list[tuple[int, int, int]]:
    """``(block, offset, size)`` per verse slot; detects 10- vs 12-byte entries (see module doc)."""
    for width in (10, 12):
        if len(bzv) % width == 0 and _fits(entries := _entries(bzv, width), blocks):
            return entries
    raise DataError(f"{origin}: verse index ({len(bzv)} bytes) does not match the blocks; corrupt module")


def clean_osis(fragment: str) -> str:
    """One OSIS note → plain paragraphs separated by blank lines ("" if no text is left)."""
    text = _CELL_END.sub(" ", fragment)
    text = _BREAK_TAGS.sub(_PARAGRAPH_BREAK, text)
    text = html.unescape(_ANY_TAG.sub("", text))
    paragraphs = (_SPACES.sub(" ", part.replace("\n", " ")).strip() for part in text.split(_PARAGRAPH_BREAK))
    return "\n\n".join(p for p in paragraphs if re.search(r"\w", p))


def parse_zcom(files: dict[str, bytes], origin: str, module_dir: str = MODULE_DIR) -> list[str]:
    """The module's files → cleaned documents, one per distinct note, OT then NT."""
    documents: list[str] = []
    found = False
    for testament in TESTAMENTS:
        names = [f"{module_dir}{testament}.{ext}" for ext in ("bzs", "bzz", "bzv")]
        if not all(name in files for name in names):
            continue
        found = True
        where = f"{origin} ({testament})"
        bzs, bzz, bzv = (files[name] for name in names)
        blocks = read_blocks(bzs, bzz, where)
        seen: set[tuple[int, int, int]] = set()
        for block, offset, size in read_verse_index(bzv, blocks, where):
            if size == 0 or (block, offset, size) in seen:
                continue
            seen.add((block, offset, size))
            try:
                fragment = blocks[block][offset : offset + size].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: a note is not UTF-8 ({exc}); corrupt module") from exc
            document = clean_osis(fragment)
            if document:
                documents.append(document)
    if not found:
        raise DataError(f"{origin}: no SWORD module files under {module_dir}; not sword-comm-mhcc?")
    return documents
