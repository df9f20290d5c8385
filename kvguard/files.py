"""Find the Python files of a check, and read them as Python source text.

Two sets come out of discovery: the files to check (the paths given, directories walked)
and the project's files (every Python file under the project root, walked the same way),
which feed the project index so that a check of one file knows the base classes that live
in others. Walks skip ``exclude`` patterns and, inside a git work tree, what git ignores
(``respect-gitignore``); explicitly given files are taken even when excluded unless
``force-exclude`` is on. Paths are shown relative to the working directory, as ruff does.
"""

from __future__ import annotations

import codecs
import errno
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from kvguard.config import Config
from kvguard.findings import FileError
from kvguard.gitignore import Ignores, ignores_for

_CODING = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")
PYTHON_SUFFIXES = (".py", ".pyi")
STDIN = "-"


@dataclass(frozen=True)
class SourceFile:
    display: str  # relative to the working directory when below it, else absolute
    real: str  # resolved path, the cache key


@dataclass
class Discovery:
    checked: list[SourceFile] = field(default_factory=list)  # findings are reported for these
    project: list[SourceFile] = field(default_factory=list)  # the index reads these too
    errors: list[FileError] = field(default_factory=list)


@dataclass(frozen=True)
class Walking:
    """How walks and explicit paths are filtered."""

    config: Config
    respect_gitignore: bool = True
    force_exclude: bool = False
    root: str | None = None  # the project root (absolute), where exclusion stops looking up


def display_path(path: str, cwd: str) -> str:
    absolute = os.path.normpath(os.path.join(cwd, path))
    if absolute == cwd:
        return "."
    prefix = cwd.rstrip(os.sep) + os.sep
    return absolute[len(prefix) :] if absolute.startswith(prefix) else absolute


def discover(paths: list[str], walking: Walking, stdin_name: str | None = None) -> Discovery:
    """The files to check (``paths``, or the stdin file) and the project's files."""
    cwd = os.getcwd()
    found = Discovery()
    seen: set[str] = set()
    walked: set[str] = set()  # real paths of directories already walked

    def add(display: str, real: str, checked: bool) -> None:
        if real not in seen:
            seen.add(real)
            source = SourceFile(display, real)
            found.project.append(source)
            if checked:
                found.checked.append(source)

    if stdin_name is not None:
        display = display_path(stdin_name, cwd) if stdin_name != STDIN else STDIN
        real = os.path.realpath(stdin_name) if stdin_name != STDIN else "<stdin>"
        if not (walking.force_exclude and _excluded_explicitly(display, cwd, walking)):
            add(display, real, True)
    for arg in paths:
        display = display_path(arg, cwd)
        if os.path.isdir(arg):
            for shown, error, real in _walk(display, walking, walked, report=True):
                if error:
                    found.errors.append(FileError(shown, error))
                else:
                    add(shown, real, True)
        elif walking.force_exclude and _excluded_explicitly(display, cwd, walking):
            continue
        elif os.path.isfile(arg):
            add(display, os.path.realpath(arg), True)
        elif os.path.islink(arg) and not os.path.exists(arg):
            found.errors.append(FileError(display, _dangling(arg)))
        elif os.path.exists(arg):
            found.errors.append(FileError(display, _NOT_A_FILE))
        else:
            found.errors.append(FileError(display, "no such file or directory; check the path"))
    if walking.root is not None:
        root = display_path(walking.root, cwd)
        for shown, error, real in _walk(root, walking, walked, report=False):
            if not error:
                add(shown, real, False)
    return found


def _excluded_explicitly(display: str, cwd: str, walking: Walking) -> bool:
    """``force-exclude``: the file, or a directory above it below the project root,
    matches an exclude pattern."""
    config = walking.config
    absolute = os.path.normpath(os.path.join(cwd, display))
    stop = walking.root or cwd
    path = absolute
    while True:
        if config.is_excluded(display_path(path, cwd)):
            return True
        parent = os.path.dirname(path)
        if parent == path or not parent.startswith(stop.rstrip(os.sep) + os.sep):
            return False
        if parent == stop:
            return False
        path = parent


def _walk(
    top: str, walking: Walking, walked: set[str], report: bool
) -> Iterator[tuple[str, str, str]]:
    """(path, why it is skipped or "", resolved path) of the Python files under ``top``.

    Directories whose resolved path is in ``walked`` are skipped (their files came out of
    an earlier walk); the ones walked now are added to it. With ``report``, entries that
    cannot be read (and Python-named entries that are no regular file) come out with why.
    """
    config = walking.config
    stack: list[tuple[str, Ignores | None]] = [(top, None)]
    visited_now: set[str] = set()
    while stack:
        directory, inherited = stack.pop()
        real = os.path.realpath(directory)
        if real in visited_now:
            if report:
                yield directory, "symbolic link loop: directory already visited, skipped", ""
            continue
        if real in walked:
            continue
        visited_now.add(real)
        walked.add(real)
        if not walking.respect_gitignore:
            ignores = Ignores()
        elif inherited is None:
            ignores = ignores_for(real)
        else:
            ignores = inherited.child(real)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            if report:
                yield directory, _unlistable(exc), ""
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
                if report:
                    why = (
                        _LOOP if exc.errno == errno.ELOOP else f"cannot stat: {exc.strerror or exc}"
                    )
                    yield path, why, ""
                continue
            python = entry.name.endswith(PYTHON_SUFFIXES)
            if not (is_dir or python):
                continue
            if ignores and ignores.ignored(os.path.join(real, entry.name), is_dir):
                continue
            if is_dir:
                if entry.is_symlink() and os.path.realpath(path) in _ancestors(real):
                    if report:
                        yield (
                            path,
                            "symbolic link loop: points to an enclosing directory, skipped",
                            "",
                        )
                    continue
                subdirs.append(path)
            elif is_file:
                # scandir knows whether the entry is a link: only links need resolving
                # (one lstat per path component); the rest lie in the resolved directory
                link = entry.is_symlink()
                yield path, "", os.path.realpath(path) if link else os.path.join(real, entry.name)
            elif report:
                is_link = entry.is_symlink()
                yield (
                    path,
                    _dangling(path) if is_link and not os.path.exists(path) else _NOT_A_FILE,
                    "",
                )
        stack.extend((d, ignores) for d in reversed(subdirs))


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

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column

    def error(self, display: str) -> FileError:
        return FileError(display, self.message, self.line, self.column)


def decode_source(data: bytes) -> str:
    """Decode like the interpreter: UTF-8 (BOM allowed) unless a PEP 263 cookie says otherwise."""
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise SourceError("contains a NUL byte; this is not Python source text", line)
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
            f"byte 0x{data[exc.start]:02x} is not valid {encoding}; re-save the file "
            "as UTF-8 or declare its encoding (PEP 263)",
            line,
        ) from None
    except (UnicodeError, LookupError, ValueError) as exc:  # a codec that fails otherwise
        raise SourceError(f"cannot decode as {encoding}: {exc}") from None
    return text.removeprefix("\ufeff")


def _unlistable(exc: OSError) -> str:
    """One line, worded as the file errors are: what failed, why, and the way out."""
    if isinstance(exc, PermissionError):
        why = "permission denied; make it readable or exclude it"
    else:
        why = f"{(exc.strerror or str(exc)).lower()}; exclude it if it cannot be read"
    return f"cannot list directory: {why}"


def read_bytes(path: str) -> bytes:
    """A regular file's bytes; never blocks on a FIFO or device put in its place."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except PermissionError:
        raise SourceError("permission denied; make the file readable or exclude it") from None
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SourceError(_NOT_A_FILE)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_source(path: str) -> tuple[bytes, str]:
    data = read_bytes(path)
    return data, decode_source(data)
