"""Files read and written so that nothing found on disk can hang, tear or litter a run.

``read_regular`` reads only a regular file, opened ``O_NONBLOCK`` and checked with
``fstat`` first: a FIFO or a device put where a file was expected is never waited on.

A ``TempFile`` starts unnamed (``O_TMPFILE``) where the file system allows it, so that a
write that fails (a full disk, a file-size limit) or a SIGKILL while writing leaves nothing.
It gets a name only to be renamed over its target at once. Whenever it has a name, its
writer holds an exclusive ``flock`` on it, and the kernel drops that lock when the writer
dies, however it dies: ``sweep`` removes every temporary name in a directory whose lock it
can take, because no living writer holds it. Where ``O_TMPFILE`` is not supported, the file
is created under its name and locked at once; a sweep in between removes it, which the
writer sees (``named`` checks that its name is still its file) and answers with a new one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat

SUFFIX = ".kvguard-tmp"  # never ``.py``: a checked tree's discovery cannot pick one up
_OPEN_NEW = os.O_WRONLY | os.O_CLOEXEC
_UNNAMED = getattr(os, "O_TMPFILE", 0)
# naming an unnamed file goes through /proc; tests switch this off to try the fallback
use_unnamed = bool(_UNNAMED) and os.path.isdir("/proc/self/fd")


class NotRegularFile(OSError):
    """Something other than a regular file (a FIFO, a device, a directory) is there."""


def read_regular(path: str | os.PathLike[str], limit: int = -1) -> tuple[os.stat_result, bytes]:
    """The status and bytes of the regular file at ``path`` (at most ``limit`` bytes, if
    given: a larger file raises ``NotRegularFile`` unread). Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", os.fspath(path))
        if 0 <= limit < info.st_size:
            raise NotRegularFile(errno.EFBIG, f"larger than {limit} bytes", os.fspath(path))
        chunks = []
        while chunk := os.read(fd, max(info.st_size + 1, 1 << 16)):
            chunks.append(chunk)
        return info, b"".join(chunks)
    finally:
        os.close(fd)


class TempFile:
    """A locked temporary file in ``directory``, removed on ``close`` unless renamed away."""

    def __init__(self, directory: str, stem: str) -> None:
        self.directory = directory
        self.stem = stem
        self.path: str | None = None
        self.fd = -1
        if use_unnamed:
            with contextlib.suppress(OSError):
                self.fd = os.open(directory, _UNNAMED | _OPEN_NEW, 0o600)
        if self.fd < 0:
            self._create_named()
        else:
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def _candidate(self) -> str:
        return os.path.join(self.directory, f".{self.stem}.{os.urandom(6).hex()}{SUFFIX}")

    def _create_named(self) -> None:
        for _ in range(100):
            path = self._candidate()
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _OPEN_NEW, 0o600)
            except FileExistsError:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(path, fd):
                self.fd, self.path = fd, path
                return
            os.close(fd)  # a sweep removed it before the lock was taken
        raise OSError(errno.EEXIST, "no free temporary file name", self.directory)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def named(self) -> str:
        """A name for the file (one it keeps while this object holds it), for ``rename``."""
        if self.path is not None:
            if _same_file(self.path, self.fd):
                return self.path
            raise OSError(errno.ENOENT, "the temporary file was removed", self.path)
        # os.link calls linkat(AT_SYMLINK_FOLLOW), which links the open file itself, only
        # when given a directory fd; plain link() would try to link the /proc symlink
        directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for _ in range(100):
                path = self._candidate()
                try:
                    os.link(
                        f"/proc/self/fd/{self.fd}",
                        os.path.basename(path),
                        dst_dir_fd=directory,
                        follow_symlinks=True,
                    )
                except FileExistsError:
                    continue
                self.path = path
                return path
        finally:
            os.close(directory)
        raise OSError(errno.EEXIST, "no free temporary file name", self.directory)

    def renamed(self) -> None:
        """The name was renamed away (onto the target): nothing of it is left to remove."""
        self.path = None

    def close(self) -> None:
        if self.path is not None and _same_file(self.path, self.fd):
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self.path = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> TempFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _same_file(path: str, fd: int) -> bool:
    try:
        named, held = os.lstat(path), os.fstat(fd)
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def sweep(directory: str, stem: str = "") -> int:
    """Remove the temporary files (of ``stem``, or all) in ``directory`` that no living
    writer holds; the number removed. Never raises: a sweep that cannot look only waits."""
    prefix = f".{stem}." if stem else "."
    removed = 0
    try:
        names = [n for n in os.listdir(directory) if n.startswith(prefix) and n.endswith(SUFFIX)]
    except OSError:
        return 0
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # a living writer holds it
            continue
        try:
            if _same_file(path, fd):
                os.unlink(path)
                removed += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed
