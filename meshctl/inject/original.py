"""The user's original compose file, kept inside the meshed file so `meshctl uninject` can give it back.

inject adds to the meshed file's `x-meshctl` marker (always its last top-level key):

    sha256: …                   of the meshed file without this block: an edit since inject changes it
    original:
      files: [compose.yaml]     what it was made from
      model: true               only when compose resolved the files (merged, interpolated): its model is kept
      sha256: …                 of the original's exact bytes
      gzip_base64: |-           the original's exact bytes (CRLF, no final newline, BOM and all)
        H4sIAAAAAAAC/…

The hash covers everything but the marker block, so it can sit inside the file it hashes; it is taken with
line ends as Python reads text (a checkout that turns LF into CRLF is no edit).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml.scalarstring import LiteralScalarString

from meshctl.errors import InvalidInput

MARKER_LINE = re.compile(r"^x-meshctl:", re.MULTILINE)  # rewrite.MARKER as a top-level key
PLACEHOLDER = "pending"  # `seal` writes the hash over it
SHA_LINE = re.compile(r"^( +sha256: ).*$", re.MULTILINE)
WRAP = 76  # base64 line length, as MIME writes it


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def newlines_as_read(raw: bytes) -> str:
    """`raw` decoded as Python's text mode reads a file (universal newlines): how inject saw it."""
    return raw.decode().replace("\r\n", "\n").replace("\r", "\n")


def source_bytes(source: str, text: str) -> bytes:
    """The exact bytes inject read as `text`: the file again (text mode dropped its CR), or, from stdin, the text."""
    if source == "<stdin>":
        return text.encode()
    try:
        raw = Path(source).read_bytes()
        same = newlines_as_read(raw) == text
    except (OSError, UnicodeDecodeError):
        same = False
    if not same:
        raise InvalidInput(f"{source} changed while it was being read", "run inject again")
    return raw


def record(files: list[str], original: bytes, model: bool = False) -> dict[str, Any]:
    """The fields inject adds to the marker; `seal` fills in the meshed body's hash once the file is written.
    `model`: `original` is compose's resolved model of `files` (merged, interpolated), not a file's bytes."""
    packed = base64.b64encode(gzip.compress(original, mtime=0)).decode()
    lines = "\n".join(packed[i:i + WRAP] for i in range(0, len(packed), WRAP))
    kept: dict[str, Any] = {"files": list(files), "sha256": _sha256(original)}
    if model:
        kept["model"] = True
    return {"sha256": PLACEHOLDER, "original": {**kept, "gzip_base64": LiteralScalarString(lines)}}


def _block(text: str) -> tuple[int, int] | None:
    """Where the marker block is: the last `x-meshctl:` line and the indented lines under it (ruamel writes
    the document's closing comments after it; those belong to the body)."""
    found = list(MARKER_LINE.finditer(text))
    if not found:
        return None
    start = found[-1].start()
    lines = text[start:].splitlines(keepends=True)
    return start, start + len(lines[0]) + sum(map(len, itertools.takewhile(lambda x: x.startswith(" "), lines[1:])))


def body_hash(text: str) -> str | None:
    """The sha256 of the meshed file without its marker block; None when it has none."""
    where = _block(text)
    return None if where is None else _sha256((text[:where[0]] + text[where[1]:]).encode())


def seal(text: str) -> str:
    """`text` (the meshed file) with the marker's own `sha256:` (its first) set to the hash of the rest."""
    where = _block(text)
    assert where is not None, "inject writes the marker"
    start, end = where
    # quoted: a hash of digits only would read as a number
    block = SHA_LINE.sub(lambda m: f'{m.group(1)}"{body_hash(text)}"', text[start:end], count=1)
    return text[:start] + block + text[end:]


@dataclass(frozen=True)
class Kept:
    files: list[str]
    data: bytes
    model: bool = False  # compose's resolved model of `files`, which inject never changed


def unchanged_since_inject(text: str, marker: dict[str, Any]) -> bool:
    digest = body_hash(text)
    return digest is not None and str(marker.get("sha256")) == digest


def kept(marker: dict[str, Any], where: str) -> Kept | None:
    """The original the marker holds (None: a file meshed before meshctl kept it); damaged is an error."""
    entry = marker.get("original")
    if entry is None:
        return None
    try:
        files = [str(f) for f in entry["files"]]
        data = gzip.decompress(base64.b64decode("".join(str(entry["gzip_base64"]).split()), validate=True))
        if _sha256(data) != str(entry["sha256"]):
            raise ValueError("sha256 mismatch")
    except (KeyError, TypeError, ValueError, binascii.Error, OSError, EOFError) as exc:
        raise InvalidInput(f"{where}: x-meshctl.original is damaged ({exc})",
                           "pass --force to remove only what meshctl added") from None
    return Kept(files, data, entry.get("model") is True)
