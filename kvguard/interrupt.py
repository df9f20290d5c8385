"""SIGINT and SIGTERM for the CLI: stop promptly, leave nothing half-written, exit 130/143.

``handled()`` (the CLI wraps a command in it) turns both signals into ``Interrupted``, a
``BaseException`` like ``KeyboardInterrupt``, so that the per-file safety nets
(``except Exception``) let it through and every ``finally`` on the way out runs: the
engine terminates and joins its worker processes, temporary files are closed (an unnamed
one vanishes, a named one is unlinked). ``deferred()`` marks a step that must not be cut
in half (renaming a cache or a fixed file into place, writing the report): a signal that
arrives inside it is raised when the step is done.

Worker processes fork from the CLI and inherit its handler until their initializer calls
``in_worker()``; a signal in that moment is answered as the worker's own would be (SIGTERM
ends it, SIGINT is left to the parent, which terminates the workers itself).
``exit_if_stuck`` ends the process at once where a pool thread would block its exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The run was stopped by a signal; ``exit_code`` is the shell's 128 + its number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_owner = -1  # the process whose handler this is (a forked worker is not it)
_depth = 0  # nesting of deferred() steps
_pending: int | None = None


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending
    if os.getpid() != _owner:  # a worker forked before its initializer ran
        if signum == signal.SIGTERM:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        return
    if _depth:
        _pending = _pending or signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Raise ``Interrupted`` on SIGINT and SIGTERM while the block runs (main thread only)."""
    global _owner
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _owner = os.getpid()
    for signum in SIGNALS:
        signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, action in previous.items():
            signal.signal(signum, action)  # type: ignore[arg-type]


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold back ``Interrupted`` until the block is done."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending is not None:
            signum, _pending = _pending, None
            raise Interrupted(signum)


def in_worker() -> None:
    """A worker process: SIGTERM ends it at once, SIGINT (a terminal's Ctrl-C reaches the
    whole process group) is the parent's to act on."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def exit_if_stuck(code: int) -> None:
    """End the process now if a thread would keep it from exiting.

    A worker killed while it wrote a result leaves the process pool's thread waiting
    forever for the rest of that message, and interpreter exit joins that thread. By now
    the workers are reaped and every file is closed or renamed: only that wait is skipped.
    """
    stuck = [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and t.is_alive() and not t.daemon
    ]
    if not stuck:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
