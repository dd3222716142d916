"""Fetch Debian packages with ``apt-get download`` and read them in pure Python.

Text corpora ship as Debian packages (DESIGN.md, "Real data"). Installing them would need root and
change the system, and ``dpkg-deb`` is not on every machine, so anybit only downloads the ``.deb``
and reads it itself: a ``.deb`` is an ``ar`` archive holding ``debian-binary``, ``control.tar.*`` and
``data.tar.*``; the tar members are read into memory (never extracted to disk, so hostile paths in a
package cannot write anywhere). xz, gzip, bzip2 and uncompressed tars are handled by the standard
library; zstd needs the ``zstandard`` module (or Python >= 3.14), and its absence is a clear error.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from anybit.errors import DataError

_AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60
# apt's words for "I do not know this package (yet)": a fresh machine has no package lists
_UNKNOWN_PACKAGE = re.compile(
    r"Unable to locate package|has no installation candidate|Can't select candidate|"
    r"no candidate|Failed to fetch|404\s+Not Found",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class DebPackage:
    """The parts of a ``.deb`` that corpora need: its control fields and its regular files."""

    path: Path
    control: dict[str, str]
    files: dict[str, bytes]  # path inside the package without leading "./" -> contents

    @property
    def name(self) -> str:
        return self.control.get("Package", "")

    @property
    def version(self) -> str:
        return self.control.get("Version", "")


def read_ar(data: bytes, origin: str) -> dict[str, bytes]:
    """Members of a Unix ``ar`` archive (the container format of ``.deb``), by name."""
    if not data.startswith(_AR_MAGIC):
        raise DataError(f"{origin}: not a Debian package (no ar header); delete it and fetch it again")
    members: dict[str, bytes] = {}
    pos = len(_AR_MAGIC)
    while pos < len(data):
        if data[pos : pos + 1] == b"\n":  # padding byte
            pos += 1
            continue
        header = data[pos : pos + _AR_HEADER]
        if len(header) < _AR_HEADER or header[58:60] != b"`\n":
            raise DataError(f"{origin}: corrupt ar member header at byte {pos}; delete it and fetch it again")
        name = header[0:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError as exc:
            raise DataError(f"{origin}: corrupt ar member size at byte {pos}") from exc
        start = pos + _AR_HEADER
        if start + size > len(data):
            raise DataError(f"{origin}: truncated (member {name!r} runs past the end); fetch it again")
        members[name] = data[start : start + size]
        pos = start + size + (size & 1)
    return members


def _decompress_zstd(blob: bytes, origin: str) -> bytes:
    """Decompress a zstd stream with whatever zstd binding this Python has."""
    try:
        from compression import zstd  # type: ignore[import-not-found]  # Python >= 3.14

        return zstd.decompress(blob)
    except ImportError:
        pass
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError as exc:
        raise DataError(
            f"{origin}: the package is compressed with zstd, which this Python cannot read; "
            "run `pip install zstandard` (or use Python >= 3.14) and retry"
        ) from exc
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read()


def _open_tar(members: dict[str, bytes], stem: str, origin: str) -> tarfile.TarFile:
    """Open ``<stem>.tar[.xz|.gz|.bz2|.zst]`` from the ar members."""
    for name, blob in members.items():
        if not name.startswith(stem + ".tar"):
            continue
        if name.endswith(".zst"):
            blob = _decompress_zstd(blob, origin)
        try:
            return tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"{origin}: cannot read {name} ({exc}); delete it and fetch it again") from exc
    raise DataError(f"{origin}: no {stem}.tar.* member (has: {', '.join(members)}); not a binary package")


def _tar_files(tar: tarfile.TarFile, origin: str) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    try:
        for info in tar:
            if not info.isfile():
                continue
            fh = tar.extractfile(info)
            if fh is not None:
                files[info.name.removeprefix("./")] = fh.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{origin}: corrupt or truncated archive ({exc}); delete it, fetch again") from exc
    return files


def _parse_control(text: str) -> dict[str, str]:
    """RFC-822-like ``control`` file → fields (continuation lines appended)."""
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def read_deb(path: Path) -> DebPackage:
    """Read a ``.deb``: control fields and every regular file of ``data.tar.*``, in memory."""
    origin = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{origin}: cannot read the package file ({exc})") from exc
    members = read_ar(data, origin)
    control_files = _tar_files(_open_tar(members, "control", origin), origin)
    control_text = control_files.get("control", b"").decode("utf-8", "replace")
    files = _tar_files(_open_tar(members, "data", origin), origin)
    return DebPackage(path=path, control=_parse_control(control_text), files=files)


def _run_apt(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    except FileNotFoundError as exc:
        raise DataError(
            f"`{args[0]}` is not available on this machine; on a non-Debian system download the "
            f"package by hand and put the .deb into {cwd.parent}"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise DataError(f"`{' '.join(args)}` took longer than 10 minutes; check the network") from exc


def cached_deb(package: str, deb_dir: Path) -> Path | None:
    """The newest ``<package>_*.deb`` already in ``deb_dir``, if any."""
    found = sorted(deb_dir.glob(f"{package}_*.deb"), key=lambda p: (p.stat().st_mtime, p.name))
    return found[-1] if found else None


def fetch_deb(package: str, deb_dir: Path) -> Path:
    """Path of ``<package>_*.deb`` in ``deb_dir``, downloading it with ``apt-get download`` if absent.

    A fresh machine has no package lists, so when apt does not know the package we run
    ``apt-get update`` once and retry. A ``.deb`` placed in ``deb_dir`` by hand is used as is,
    which is the way to work on a machine without apt.
    """
    existing = cached_deb(package, deb_dir)
    if existing is not None:
        return existing
    deb_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".apt-", dir=deb_dir) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # lets apt's unprivileged _apt user write here when run as root
        result = _run_apt(["apt-get", "download", package], work)
        if result.returncode != 0 and _UNKNOWN_PACKAGE.search(result.stderr + result.stdout):
            update = _run_apt(["apt-get", "update"], work)
            if update.returncode != 0:
                raise DataError(
                    f"apt does not know package {package!r} and `apt-get update` failed "
                    f"({_last_line(update.stderr)}); run `apt-get update` as root and retry"
                )
            result = _run_apt(["apt-get", "download", package], work)
        if result.returncode != 0:
            raise DataError(
                f"`apt-get download {package}` failed ({_last_line(result.stderr)}); check the network "
                f"and apt sources, or put {package}_*.deb into {deb_dir} by hand"
            )
        debs = sorted(work.glob(f"{package}_*.deb"))
        if not debs:
            raise DataError(f"`apt-get download {package}` succeeded but wrote no {package}_*.deb")
        target = deb_dir / debs[-1].name
        shutil.move(str(debs[-1]), target)
    return target


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E:")]
    return (errors or lines or ["no output"])[-1]
