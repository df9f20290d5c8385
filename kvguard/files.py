"""Find the Python files under the paths given, and read them as Python source text."""

from __future__ import annotations

import codecs
import errno
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from kvguard.config import Config
from kvguard.findings import FileError

_CODING = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")


@dataclass(frozen=True)
class SourceFile:
    display: str  # as the user gave it, or relative to the working directory
    real: str  # resolved path, the cache key


def discover(paths: list[str], config: Config) -> tuple[list[SourceFile], list[FileError]]:
    """Python files under ``paths``; explicit files are taken even if excluded."""
    files: list[SourceFile] = []
    errors: list[FileError] = []
    seen: set[str] = set()

    def add(display: str, real: str = "") -> None:
        real = real or os.path.realpath(display)
        if real not in seen:
            seen.add(real)
            files.append(SourceFile(display, real))

    for arg in paths:
        if os.path.isdir(arg):
            for display, error, real in _walk(arg, config):
                if error:
                    errors.append(FileError(display, error))
                else:
                    add(display, real)
        elif os.path.isfile(arg):
            add(arg)
        elif os.path.islink(arg) and not os.path.exists(arg):
            errors.append(FileError(arg, _dangling(arg)))
        elif os.path.exists(arg):
            errors.append(FileError(arg, _NOT_A_FILE))
        else:
            errors.append(FileError(arg, "no such file or directory; check the path"))
    return files, errors


def _walk(top: str, config: Config) -> Iterator[tuple[str, str, str]]:
    """(path, why it is skipped or "", resolved path) of the files under ``top``."""
    visited: set[str] = set()
    stack = [top]
    while stack:
        directory = stack.pop()
        real = os.path.realpath(directory)
        if real in visited:
            yield directory, "symbolic link loop: directory already visited, skipped", ""
            continue
        visited.add(real)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            yield directory, f"cannot list directory: {exc.strerror or exc}", ""
            continue
        subdirs = []
        for entry in entries:
            path = os.path.join(directory, entry.name) if directory != "." else entry.name
            if config.is_excluded(path):
                continue
            try:
                is_dir = entry.is_dir()
                is_file = entry.is_file()
            except OSError as exc:
                yield (
                    path,
                    _LOOP if exc.errno == errno.ELOOP else f"cannot stat: {exc.strerror or exc}",
                    "",
                )
                continue
            if is_dir:
                if entry.is_symlink() and os.path.realpath(path) in _ancestors(real):
                    yield path, "symbolic link loop: points to an enclosing directory, skipped", ""
                    continue
                subdirs.append(path)
            elif is_file and entry.name.endswith((".py", ".pyi")):
                # scandir knows whether the entry is a link: only links need resolving
                # (one lstat per path component); the rest lie in the resolved directory
                link = entry.is_symlink()
                yield path, "", os.path.realpath(path) if link else os.path.join(real, entry.name)
            elif entry.is_symlink() and not os.path.exists(path) and entry.name.endswith(".py"):
                yield path, _dangling(path), ""
        stack.extend(reversed(subdirs))


_NOT_A_FILE = (
    "not a regular file or directory (a FIFO, socket or device); kvguard reads Python source files"
)


_LOOP = "symbolic link loop: it never resolves to a file, skipped"


def _dangling(path: str) -> str:
    """Why a symbolic link leads nowhere: it loops, or its target is missing."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return _LOOP
    return "broken symbolic link: its target does not exist"


def _ancestors(real: str) -> set[str]:
    out = {real}
    parent = os.path.dirname(real)
    while parent and parent not in out:
        out.add(parent)
        parent = os.path.dirname(parent)
    return out


class SourceError(Exception):
    """The bytes of a file are not Python source text; the message says how to fix it."""


def decode_source(data: bytes) -> str:
    """Decode like the interpreter: UTF-8 (BOM allowed) unless a PEP 263 cookie says otherwise."""
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise SourceError(f"line {line}: contains a NUL byte; this is not Python source text")
    encoding = "utf-8"
    for raw_line in data.split(b"\n", 2)[:2]:
        match = _CODING.match(raw_line)
        if match:
            encoding = match.group(1).decode("ascii", "replace")
            break
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise SourceError(f"unknown encoding {encoding!r} in the coding declaration") from None
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SourceError(
            f"line {line}: byte 0x{data[exc.start]:02x} is not valid {encoding}; re-save the file "
            "as UTF-8 or declare its encoding (PEP 263)"
        ) from None
    return text.removeprefix("\ufeff")


def read_source(path: str) -> tuple[bytes, str]:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except PermissionError:
        raise SourceError("permission denied; make the file readable or exclude it") from None
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror or exc}") from None
    return data, decode_source(data)
