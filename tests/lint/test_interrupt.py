"""SIGTERM and SIGINT to ``kvguard check`` mid-run: workers gone, no litter, exit 143/130.

A real ``python -m kvguard`` process on a generated project big enough to be caught while
its worker processes analyze it; the signal goes to kvguard alone (SIGTERM, as ``kill``
sends it: the workers would be orphaned if kvguard did not stop them) or to its whole
process group (SIGINT, as a terminal's Ctrl-C does).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvguard.cache import Store
from kvguard.disk import SUFFIX
from kvguard.engine import CACHE_VERSION
from kvguard.interrupt import Interrupted

ROOT = Path(__file__).resolve().parents[2]
METHODS = "".join(
    f"""
    def views_{m}(self, layer, query, kv_cache, metadata):
        key_cache, value_cache = kv_cache.unbind(0)
        return key_cache, value_cache, self.scale * {m}
"""
    for m in range(12)
)


def _project(root: Path, files: int) -> Path:
    project = root / "proj"
    (project / "pkg").mkdir(parents=True)
    (project / ".kvguard.toml").write_text("")
    for i in range(files):
        (project / "pkg" / f"mod{i}.py").write_text(f"class Impl{i}:\n    scale = 1.0\n{METHODS}")
    return project


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    ("signum", "group", "code"),
    [(signal.SIGTERM, False, 143), (signal.SIGINT, True, 130), (signal.SIGTERM, True, 143)],
)
def test_a_signal_mid_run_stops_the_workers_and_leaves_nothing_half_written(
    tmp_path: Path, signum: int, group: bool, code: int
) -> None:
    project = _project(tmp_path, 300)
    cache = tmp_path / "cache"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "KVGUARD_CACHE_DIR": str(cache),
        "PYTHONFAULTHANDLER": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "kvguard", "check", "-j", "2", "--no-progress", str(project)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,  # its own process group, as a shell job has
    )
    workers: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        workers = _children(process.pid)
        if len(workers) >= 2:
            break
        time.sleep(0.02)
    assert len(workers) >= 2, "kvguard finished or never started its workers"
    time.sleep(0.3)  # let them get going
    assert process.poll() is None, "the run ended before the signal: make the project bigger"
    if group:
        os.killpg(process.pid, signum)
    else:
        os.kill(process.pid, signum)
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGABRT)  # PYTHONFAULTHANDLER: where it hangs
        out, err = process.communicate(timeout=10)
        pytest.fail(f"kvguard did not stop:\n{err.decode()}")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == code, err.decode()
    assert err.decode().splitlines() == [f"kvguard: stopped by {signal.Signals(signum).name}"]
    assert out == b""  # no partial report
    assert [pid for pid in workers if _alive(pid)] == []  # joined, not orphaned
    litter = [p.name for p in cache.iterdir()] if cache.exists() else []
    assert not [name for name in litter if name.endswith(SUFFIX)]
    for name in litter:  # a cache written before the signal is whole
        store = Store(cache / name, CACHE_VERSION)
        assert store.dropped == 0


def test_interrupted_is_not_an_exception_the_safety_nets_catch() -> None:
    from kvguard.interrupt import Interrupted

    stop = Interrupted(signal.SIGTERM)
    assert not isinstance(stop, Exception)
    assert stop.exit_code == 143
    assert str(stop) == "SIGTERM"


def test_a_signal_inside_a_deferred_step_is_raised_when_it_ends() -> None:
    from kvguard.interrupt import Interrupted, deferred, handled

    steps = []
    with pytest.raises(Interrupted) as stopped, handled():
        with deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here, and must not raise
            steps.append("renamed")
        steps.append("after")
    assert steps == ["renamed"]
    assert stopped.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


@pytest.mark.parametrize("stop", [Interrupted(signal.SIGTERM), KeyboardInterrupt()])
def test_a_signal_wrapped_by_the_code_it_interrupted_is_still_the_signal(stop) -> None:
    """A signal raised inside ``__set_name__`` during an import reaches the per-file safety
    net as ``RuntimeError('Error calling __set_name__ ...')`` caused by it: the run stops
    (exit 143/130), it does not report an internal error for that file."""
    from kvguard.engine import guarded

    def work(deep: bool) -> None:
        try:
            raise stop
        except BaseException as exc:
            raise RuntimeError("Error calling __set_name__ on 'Field' instance") from exc

    with pytest.raises(type(stop)) as info:
        guarded(work, "a.py", lambda error: pytest.fail(f"reported as {error}"))
    assert info.value is stop
