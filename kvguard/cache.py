"""The on-disk results cache: one file per (kvguard version, configuration, working
directory, paths), one record per checked file.

What makes a record valid for a file:

- **Its stamp still matches**: size, mtime, ctime, inode and device from ``os.stat``. Any
  write to the file moves its ctime to the time of the write, and ``utime`` cannot set
  ctime, so an edit that restores the size and the mtime still changes the stamp; so does
  an editor's save-by-rename (a new inode).
- **The stamp can prove it**: a file whose ctime or mtime lies within ``RACY_NS`` of the
  moment its content was read could have been changed again within the same timestamp tick
  (the "racy git" problem: coarse or 2-second file-system clocks). Such a record is
  checked by reading the file and comparing its content hash instead, and the check moves
  its read time forward, so the next run trusts the stamp again.

Records are lines of JSON, each behind a checksum of its bytes (``typed_json``: nothing in
it can run code, and every value is checked against the type it must have). A truncated,
bit-flipped, re-typed or foreign record is dropped and its file analyzed again; damage
never raises. Reads never block (only a regular file is read, opened ``O_NONBLOCK``),
writes are atomic and leave no temporary file (``disk``), and a cache that cannot be
written costs only speed. ``KVGUARD_CACHE_DIR`` moves it (empty means unset);
``--no-cache`` bypasses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from kvguard.disk import TempFile, read_regular, sweep
from kvguard.findings import FileError, Finding, Notice
from kvguard.interrupt import deferred
from kvguard.lint.facts import FileFacts
from kvguard.typed_json import decoder, encoder

FORMAT = b"kvguard-cache 1"  # the first line's first words: the layout of the records
# A stamp proves nothing about content read less than this long after the file's last
# change: FAT's mtime ticks in 2 s, and the kernel stamps with a clock that lags by a tick.
RACY_NS = 3_000_000_000
MAX_BYTES = 1 << 30  # a larger "cache" is not one this code wrote
_CHECKSUM_HEX = 32


@dataclass(frozen=True)
class Stamp:
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, info: os.stat_result) -> Stamp:
        return cls(info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev)

    @classmethod
    def unread(cls) -> Stamp:
        """The stamp of a file that could not be read: no file has it, so it is read again."""
        return cls(-1, -1, -1, -1, -1)

    def proves(self, seen_ns: int) -> bool:
        """Whether this stamp, read at ``seen_ns``, would change with any later edit."""
        return max(self.mtime_ns, self.ctime_ns) + RACY_NS < seen_ns


@dataclass
class Entry:
    stamp: Stamp
    content_hash: str
    seen_ns: int  # wall-clock time taken before the stat and the read of this content
    facts: FileFacts | None
    error: FileError | None
    index_key: str = ""  # the project index the findings were computed against
    findings: tuple[Finding, ...] | None = None
    notices: tuple[Notice, ...] = ()  # warnings about its suppression comments
    # the record it was loaded from, and its fields then: saving reuses an unchanged record
    record: bytes | None = field(default=None, compare=False, repr=False)
    loaded: tuple[object, ...] = field(default=(), compare=False, repr=False)

    def _state(self) -> tuple[object, ...]:
        return (
            self.stamp,
            self.seen_ns,
            self.facts,
            self.error,
            self.index_key,
            self.findings,
            self.notices,
        )

    def current_record(self) -> bytes | None:
        """The record it was loaded from, if no field changed since."""
        return self.record if self.record is not None and self._state() == self.loaded else None


# path, then the fields of Entry up to ``notices``
_RECORD = tuple[
    str,
    Stamp,
    str,
    int,
    FileFacts | None,
    FileError | None,
    str,
    tuple[Finding, ...] | None,
    tuple[Notice, ...],
]
_decode_record = decoder(_RECORD)
_encode_record = encoder(_RECORD)


def cache_dir() -> Path:
    chosen = os.environ.get("KVGUARD_CACHE_DIR")
    if chosen:  # empty is unset: never the working directory by accident
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG spec: a relative value is ignored
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvguard"


def cache_file(version: str, config_digest: str, paths: list[str]) -> Path:
    key = "\0".join([version, config_digest, os.getcwd(), *sorted(paths)])
    return cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.jsonl"


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _checksum(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=_CHECKSUM_HEX // 2).hexdigest().encode()


def _read(path: str | Path) -> bytes | None:
    try:
        return read_regular(path, MAX_BYTES)[1]
    except OSError:
        return None


class Store:
    """The valid records of one cache file, and the rules for reusing them."""

    def __init__(self, path: Path | None, version: str) -> None:
        self.path = path
        self.header = FORMAT + b" " + json.dumps(version).encode()
        self.entries: dict[str, Entry] = {}
        self.dropped = 0  # records that failed validation
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        data = _read(path)
        if not data:
            return
        lines = data.split(b"\n")
        if lines[0] != self.header:
            self.dropped = max(len(lines) - 1, 1)
            return
        for line in lines[1:]:
            if not line:
                continue
            loaded = _parse(line)
            if loaded is None:
                self.dropped += 1
                continue
            real, entry = loaded
            self.entries[real] = entry

    def unchanged(self, real: str) -> Entry | None:
        """The record of a file whose content is provably the one it was made from."""
        entry = self.entries.get(real)
        if entry is None:
            return None
        seen = time.time_ns()
        try:
            info = os.stat(real)
        except OSError:
            return None
        if Stamp.of(info) != entry.stamp:
            return None
        if entry.stamp.proves(entry.seen_ns):
            return entry
        data = _read(real)  # racy: the stamp cannot tell, the content can
        if data is None or content_hash(data) != entry.content_hash:
            return None
        entry.seen_ns = seen
        return entry

    def refreshed(
        self,
        real: str,
        stamp: Stamp,
        seen_ns: int,
        digest: str,
        facts: FileFacts | None,
        error: FileError | None,
    ) -> Entry:
        """The record for a file just read: the old one if the content is the same (its
        findings stand while the index does), else a new one."""
        previous = self.entries.get(real)
        if previous is not None and digest and previous.content_hash == digest:
            previous.stamp, previous.seen_ns = stamp, seen_ns
            return previous
        return Entry(stamp, digest, seen_ns, facts, error)

    def save(self, entries: dict[str, Entry]) -> None:
        """Write ``entries`` as the cache's content, unless it holds exactly them already.

        Best effort: a cache that cannot be written only costs speed next time.
        """
        if self.path is None:
            return
        if (
            not self.dropped
            and entries.keys() == self.entries.keys()
            and all(e is self.entries[r] and e.current_record() for r, e in entries.items())
        ):
            return
        records = [self.header]
        for real, entry in entries.items():
            records.append(entry.current_record() or _format(real, entry))
        directory = str(self.path.parent)
        with contextlib.suppress(OSError):
            os.makedirs(directory, exist_ok=True)
            sweep(directory)
            with TempFile(directory, "cache") as temp:
                temp.write(b"\n".join(records) + b"\n")
                with deferred():  # named, then renamed: a signal waits until both are done
                    os.replace(temp.named(), self.path)
                    temp.renamed()


def _format(real: str, entry: Entry) -> bytes:
    values = (real, entry.stamp, entry.content_hash, entry.seen_ns, entry.facts, entry.error)
    payload = json.dumps(
        _encode_record((*values, entry.index_key, entry.findings, entry.notices)),
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()
    return _checksum(payload) + b" " + payload


def _parse(line: bytes) -> tuple[str, Entry] | None:
    checksum, payload = line[:_CHECKSUM_HEX], line[_CHECKSUM_HEX + 1 :]
    if line[_CHECKSUM_HEX : _CHECKSUM_HEX + 1] != b" " or _checksum(payload) != checksum:
        return None
    try:
        real, stamp, digest, seen, facts, error, key, findings, notices = _decode_record(
            json.loads(payload)
        )
    except (ValueError, RecursionError, TypeError):  # ShapeError is a ValueError
        return None
    entry = Entry(stamp, digest, seen, facts, error, key, findings, notices, record=line)
    entry.loaded = entry._state()
    return real, entry
