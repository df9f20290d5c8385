"""Writing a report file (``check -o PATH``, ``report --svg PATH``) without leaving half of one.

As ruff does, missing parent directories are created. The text goes to a temporary file
beside the target, which is then renamed over it: a reader (or a crash, or a full disk)
never sees a partial report. A target that exists and is not a regular file (``/dev/null``,
``/dev/stdout``, a FIFO) is written in place, since renaming over it would replace the
device instead of writing to it. Every failure is one ``OutputError`` line naming the path,
the reason and a way out.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path


class OutputError(Exception):
    """A report file that cannot be written; ``str()`` is the one-line message."""


_WAY_OUT = {
    errno.EISDIR: "it is a directory; name a file inside it",
    errno.ENOTDIR: "a parent of it is a file, not a directory; choose another path",
    errno.EEXIST: "a parent of it is a file, not a directory; choose another path",
    errno.EACCES: "permission denied; choose a writable path",
    errno.EPERM: "permission denied; choose a writable path",
    errno.EROFS: "read-only file system; choose a writable path",
    errno.ENOSPC: "no space left on the device; free some or choose another path",
}


def _failure(path: Path, exc: OSError) -> OutputError:
    why = _WAY_OUT.get(exc.errno or 0)
    if why is None:
        reason = (exc.strerror or str(exc)).lower()
        why = f"{reason}; choose another path"
    return OutputError(f"cannot write {path}: {why}")


def _mode_for(target: Path) -> int:
    """The permission bits a plain ``open(target, "w")`` would have given."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def check_writable(path: Path) -> Path:
    """Create the parent directories and refuse a directory, before any work is done.
    Returns the path that will be written (symbolic links followed)."""
    target = Path(os.path.realpath(path))
    try:
        if target.is_dir():
            raise IsADirectoryError(errno.EISDIR, "Is a directory")
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _failure(path, exc) from None
    return target


def write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)`` and move the result onto ``path``. The temporary name
    ends as ``path`` does, so a writer that picks its format from the suffix still can."""
    import tempfile  # only when a file is written: kept off the start-up path

    target = check_writable(path)
    try:
        if target.exists() and not target.is_file():  # a device or a FIFO: write through
            write(str(target))
            return
        fd, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=f".tmp{target.suffix}"
        )
    except OSError as exc:
        raise _failure(path, exc) from None
    os.close(fd)
    try:
        os.chmod(temporary, _mode_for(target))
        write(temporary)
        os.replace(temporary, target)
    except OSError as exc:
        raise _failure(path, exc) from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_text(path: Path, text: str) -> None:
    def put(name: str) -> None:
        with open(name, "w", encoding="utf-8") as f:
            f.write(text)

    write_atomically(path, put)
