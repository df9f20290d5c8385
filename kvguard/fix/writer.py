"""Write a fixed file back: whole, with its owner, group, mode and extended attributes,
and never over an edit made while kvguard worked.

``write_fixed`` goes in this order:

1. The target is the file a symbolic link leads to (the link stays a link). A file with
   more than one hard link is refused: replacing it would split the links, and writing
   it in place (as ruff does) could leave it half-written if kvguard were killed. So is
   a read-only file.
2. The new bytes go to a temporary file beside it (``kvguard.disk.TempFile``: unnamed
   until it is renamed, swept by the next ``--fix`` if this run dies), flushed to disk.
3. Final compare: the file is read again, and must be the very file (device and inode)
   holding the very bytes that the fix was computed from; else `changed during --fix`.
   The temporary file then gets the file's owner, group, extended attributes and mode
   (a file kvguard cannot give the same owner is refused).
4. Commit: ``renameat2(RENAME_EXCHANGE)`` swaps the temporary file and the target in one
   step, and what was swapped out is compared once more: an edit in the moment between 3
   and 4, in place or by rename, is caught there and swapped back. Where the file system
   cannot exchange names, ``os.replace``, after which the old file (held open) is compared:
   an in-place edit in that moment is put back; a save-by-rename in it is the one edit this
   fallback cannot see.

At every point the path names a whole file, the old or the new: a SIGKILL can leave a
temporary file (removed by the next ``--fix`` in that directory), never a torn source.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from kvguard.disk import TempFile, read_regular, sweep
from kvguard.fix.source import FixError, SourceText
from kvguard.interrupt import deferred

CHANGED = "changed during --fix, left as it is now; run --fix again"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
exchange_supported = True  # tests switch it off to exercise the os.replace fallback


def checkpoint(step: str) -> None:
    """Where tests put a concurrent edit or a SIGKILL ("written", "compared", "swapped",
    "replaced"); it does nothing."""


def _renameat2():  # type: ignore[no-untyped-def]
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    path, directory = ctypes.c_char_p, ctypes.c_int
    function.argtypes = [directory, path, directory, path, ctypes.c_uint]
    return function


def _exchange(a: str, b: str) -> bool:
    """Swap the files named ``a`` and ``b`` atomically; False where that is not supported."""
    function = _renameat2() if exchange_supported else None
    if function is None:
        return False
    import ctypes

    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(error, os.strerror(error), b)


def _refuse(info: os.stat_result, real: str) -> None:
    if info.st_nlink > 1:
        raise FixError(
            f"it has {info.st_nlink} hard links; replacing it would split them and writing "
            "it in place could leave it half-written, so it is left unchanged: break the "
            "link (`cp FILE tmp && mv tmp FILE`) or apply `kvguard check --diff` by hand"
        )
    if not info.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(
        real, os.W_OK
    ):
        raise FixError("read-only file, left unchanged; make it writable to fix it")


def _is_source(info: os.stat_result, data: bytes, source: SourceText) -> bool:
    return (info.st_dev, info.st_ino) == source.identity and data == source.data


def _current(path: str) -> tuple[os.stat_result, bytes]:
    try:
        return read_regular(path)
    except OSError:
        raise FixError(CHANGED) from None


def _owner_name(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _copy_metadata(info: os.stat_result, real: str, fd: int) -> None:
    """Owner and group first (a chown clears set-id bits), extended attributes (ACLs,
    labels) where the file system and permissions allow, the mode last."""
    mine = os.fstat(fd)
    if (mine.st_uid, mine.st_gid) != (info.st_uid, info.st_gid):
        try:
            os.fchown(fd, info.st_uid, info.st_gid)
        except PermissionError:
            raise FixError(
                f"owned by {_owner_name(info.st_uid)}, group {info.st_gid}: kvguard could not "
                "give the fixed file the same owner, so it is left unchanged; run --fix as "
                "its owner or as root"
            ) from None
    with contextlib.suppress(OSError):
        for name in os.listxattr(real):
            with contextlib.suppress(OSError):
                os.setxattr(fd, name, os.getxattr(real, name))
    os.fchmod(fd, stat.S_IMODE(info.st_mode))


def write_fixed(path: str, source: SourceText, new_data: bytes) -> None:
    """Replace the file at ``path`` (holding ``source``) with ``new_data``, or FixError."""
    real = os.path.realpath(path)  # a symlink stays a symlink; its target is replaced
    try:
        info, data = read_regular(real)
    except OSError as exc:
        raise FixError(f"cannot read: {exc.strerror or exc}") from None
    _refuse(info, real)
    if not _is_source(info, data, source):
        raise FixError(CHANGED)
    directory = os.path.dirname(real)
    sweep(directory)  # what a killed run left here
    try:
        temp = TempFile(directory, os.path.basename(real))
    except OSError as exc:
        raise FixError(
            f"cannot create a temporary file beside it ({exc.strerror or exc}); kvguard "
            "replaces a fixed file atomically, so its directory must be writable"
        ) from None
    with temp:
        try:
            temp.write(new_data)
            os.fsync(temp.fd)
        except OSError as exc:
            raise FixError(f"cannot write: {exc.strerror or exc}") from None
        checkpoint("written")
        info, data = _current(real)
        if not _is_source(info, data, source):
            raise FixError(CHANGED)
        try:
            _copy_metadata(info, real, temp.fd)
        except OSError as exc:
            raise FixError(f"cannot copy its mode and owner: {exc.strerror or exc}") from None
        checkpoint("compared")
        try:
            with deferred():  # a signal waits until the file is swapped (or put back)
                _commit(temp, real, source)
        except OSError as exc:
            raise FixError(f"cannot write: {exc.strerror or exc}") from None
    _sync_directory(directory)


def _commit(temp: TempFile, real: str, source: SourceText) -> None:
    named = temp.named()
    if _exchange(named, real):
        checkpoint("swapped")
        try:
            info, data = read_regular(named)  # what `real` held a moment ago
        except OSError:
            info, data = None, b""
        if info is None or not _is_source(info, data, source):
            try:
                _exchange(named, real)  # the other writer's version goes back
            except OSError:
                temp.renamed()  # keep it: it is the only copy of the other version
                raise FixError(f"{CHANGED}; the other version is in {named}") from None
            raise FixError(CHANGED)
        os.unlink(named)  # it names the old file now
        temp.renamed()
        return
    held = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if (os.fstat(held).st_dev, os.fstat(held).st_ino) != source.identity:
            raise FixError(CHANGED)
        os.replace(named, real)
        temp.renamed()
        checkpoint("replaced")
        after = _read_fd(held)
    finally:
        os.close(held)
    if after != source.data:  # written in place a moment before the replace: put it back
        with TempFile(os.path.dirname(real), os.path.basename(real)) as back:
            back.write(after)
            _copy_metadata(os.stat(real), real, back.fd)
            os.replace(back.named(), real)
            back.renamed()
        raise FixError(CHANGED)


def _read_fd(fd: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _sync_directory(directory: str) -> None:
    """Make the rename durable: best effort (some file systems cannot open a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
