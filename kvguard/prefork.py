"""A lint process forked at the start of a small run, so that libcst loads on another core.

Linting one changed file costs a warm run about 0.12 s of importing libcst (its node
classes), more than the lint itself, and the import cannot overlap this process's own
work in a thread (both hold the GIL). When a run is likely to lint (a named file changed
after the cache was written) and the process may use a second CPU, ``LintHelper`` forks one
that imports the lint stage while this one discovers files, loads the cache and builds
the index; the lint tasks then go to it (with the index, pickled, as the pool's
spawned workers get it) and their results come back. It is only ever a speed-up: a helper
that dies, or is not needed, leaves the lint to this process, and is reaped either way.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import struct
from collections.abc import Callable

_LENGTH = struct.Struct("<Q")
_CPU_MAX = "/sys/fs/cgroup/cpu.max"


def likely_to_lint(paths: list[str], cache_path: os.PathLike[str] | str | None) -> bool:
    """Whether a named file changed after the cache was last written (two or so stats)."""
    if cache_path is None or not paths:
        return False
    try:
        written = os.stat(cache_path).st_mtime_ns
    except OSError:
        return False  # a cold run: large, and the worker pool takes it
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            continue
        if max(info.st_mtime_ns, info.st_ctime_ns) >= written:
            return True
    return False


def second_cpu() -> bool:
    """Whether a helper can run beside this process: more than one usable CPU.

    Not whether one is idle: under fair scheduling two processes get two shares of a busy
    machine, so the helper shortens the run there too (``benchmarks/precommit_one_file.py``,
    vLLM 0.33, one changed file, 2 CPUs with 2 other processes spinning: 0.323 s with the
    helper, 0.344 s without; with 4: 0.587 s and 0.718 s). Its cost is a fork and about
    0.02 s of CPU; on one CPU it would only add that.
    """
    return usable_cpus() > 1


def usable_cpus() -> float:
    """The CPUs this process may run on: its affinity, capped by the cgroup v2 CPU quota
    at the root of its cgroup namespace (a container given 1.5 CPUs of a 64-core host has
    1.5). A quota set on a parent cgroup outside the namespace is not seen: this only
    decides a speed-up."""
    try:
        cpus: float = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        with open(_CPU_MAX, encoding="ascii") as limit:
            quota, period = limit.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return cpus


def _write(fd: int, data: bytes) -> None:
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, count: int) -> bytes | None:
    chunks = []
    while count:
        chunk = os.read(fd, min(count, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def _read(fd: int) -> bytes | None:
    """One message, or None at end of file (the other side closed or died)."""
    header = _read_exactly(fd, _LENGTH.size)
    return None if header is None else _read_exactly(fd, _LENGTH.unpack(header)[0])


class LintHelper:
    """The forked lint process: ``run(tasks)`` there, or None if it cannot."""

    def __init__(self, prepare: Callable[[], None], task: Callable[[object], object]) -> None:
        requests_r, self.requests = os.pipe()
        self.results, results_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the helper
            os.close(self.requests)
            os.close(self.results)
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it
                prepare()
                request = _read(requests_r)
                if request is not None:
                    items = pickle.loads(request)
                    done = [task(item) for item in items]
                    _write(results_w, pickle.dumps(done, pickle.HIGHEST_PROTOCOL))
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(requests_r)
        os.close(results_w)

    def run(self, items: list[object]) -> list[object] | None:
        try:
            _write(self.requests, pickle.dumps(items, pickle.HIGHEST_PROTOCOL))
            os.close(self.requests)
            self.requests = -1
            data = _read(self.results)
            return None if data is None else pickle.loads(data)
        except (OSError, pickle.UnpicklingError, EOFError):
            return None
        finally:
            self.close()

    def close(self) -> None:
        """Let it go (end of file on its requests) or, if it is mid-task, stop it; reap it."""
        for name in ("requests", "results"):
            fd = getattr(self, name)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1)
        if self.pid > 0:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)  # it holds no file: nothing to finish
                os.waitpid(self.pid, 0)
            self.pid = -1
