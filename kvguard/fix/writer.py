"""Read a file for fixing and write it back atomically, as it was apart from the fix.

The bytes are kept as they came: a UTF-8 BOM, a PEP 263 encoding and the line-ending
style (LF or CRLF) survive the round trip. A file with mixed line endings is refused
rather than normalised behind the user's back. The new content goes to a temporary file
in the same directory, which then replaces the original (``os.replace``), only if the
original still has the content the fix was computed from.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import os
import re
import stat
import tempfile
from dataclasses import dataclass

from kvguard.files import SourceError, decode_source

_CODING = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")
_BOM = codecs.BOM_UTF8


class FixError(Exception):
    """A file could not be fixed; the message names the cause and the way out."""


@dataclass(frozen=True)
class SourceText:
    data: bytes  # the bytes read
    text: str  # decoded, BOM removed, line endings as "\n"
    newline: str  # "\n" or "\r\n": how the file ends its lines
    bom: bool
    encoding: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def encode(self, text: str) -> bytes:
        """``text`` (with "\\n" line endings) as bytes in this file's style."""
        if self.newline != "\n":
            text = text.replace("\n", self.newline)
        data = text.encode(self.encoding)
        return _BOM + data if self.bom else data


def _encoding(data: bytes) -> str:
    for line in data.split(b"\n", 2)[:2]:
        match = _CODING.match(line)
        if match:
            return match.group(1).decode("ascii", "replace")
    return "utf-8"


def read_for_fix(path: str) -> SourceText:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise FixError(f"cannot read: {exc.strerror or exc}") from None
    try:
        text = decode_source(data)
    except SourceError as exc:
        raise FixError(str(exc)) from None
    crlf = text.count("\r\n")
    lone_cr = text.count("\r") - crlf
    lf = text.count("\n") - crlf
    if lone_cr or (crlf and lf):
        raise FixError(
            f"mixed line endings ({crlf} CRLF, {lf} LF, {lone_cr} CR); normalise them "
            "(e.g. `dos2unix`) and run --fix again"
        )
    return SourceText(
        data=data,
        text=text.replace("\r\n", "\n") if crlf else text,
        newline="\r\n" if crlf else "\n",
        bom=data.startswith(_BOM),
        encoding=_encoding(data),
    )


def write_atomic(path: str, source: SourceText, new_data: bytes) -> None:
    """Replace ``path`` with ``new_data`` if it still holds ``source.data``; all or nothing."""
    path = os.path.realpath(path)  # a symlink stays a symlink; its target is replaced
    try:
        info = os.stat(path)
    except OSError as exc:
        raise FixError(f"cannot stat: {exc.strerror or exc}") from None
    if not info.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise FixError("read-only file, left unchanged; make it writable to fix it")
    try:
        with open(path, "rb") as handle:
            current = handle.read()
    except OSError as exc:
        raise FixError(f"cannot read: {exc.strerror or exc}") from None
    if hashlib.sha256(current).hexdigest() != source.digest:
        raise FixError("changed on disk while kvguard was fixing it, left unchanged; run again")
    directory, name = os.path.split(os.path.abspath(path))
    try:
        handle_fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".kvguard", dir=directory)
    except OSError as exc:
        raise FixError(f"cannot create a temporary file beside it: {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle_fd, "wb") as handle:
            handle.write(new_data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, stat.S_IMODE(info.st_mode))
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise FixError(f"cannot write: {exc.strerror or exc}") from None
