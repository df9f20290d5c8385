"""Read a file for fixing: its bytes as they came, decoded, and which file they came from.

The bytes are kept so that a fix changes nothing else: a UTF-8 BOM, a PEP 263 encoding
and the line-ending style (LF or CRLF) survive the round trip. A file with mixed line
endings is refused rather than normalised behind the user's back. The file's identity
(device and inode) is kept too: ``writer.write_fixed`` writes only over that very file,
still holding those very bytes.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from kvguard.disk import NotRegularFile, read_regular
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
    identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the file the bytes came from

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
        info, data = read_regular(path)
    except NotRegularFile:
        raise FixError("not a regular file; kvguard fixes Python source files") from None
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
        identity=(info.st_dev, info.st_ino),
    )
