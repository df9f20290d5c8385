"""The cache under damage: corrupted records, odd things at its path, a full disk, an
unwritable directory, edits its stamps could miss, and writers killed halfway.

Every case must give exactly the output of a run without cache, with no traceback, and
leave no temporary file behind (at the latest after the next run).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import kvguard.cache as cache_module
from kvguard import disk
from kvguard.cache import RACY_NS, Store
from kvguard.engine import CACHE_VERSION
from tests.cache.faults import (
    MARKER,
    Bench,
    named_corruptions,
    outcome,
    random_corruptions,
    run_catalogue,
)
from tests.lint.kvg_helpers import BAD_SOURCE, SCATTERED_SOURCE, write
from tests.vllm_sources import vllm_tree

RANDOM_FAULTS = 5  # seeded random corruptions on top of the named catalogue


def _no_temp_files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob(f"*{disk.SUFFIX}"))


@pytest.fixture
def small_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    write(tree, "impl.py", SCATTERED_SOURCE)
    write(tree, "bad.py", BAD_SOURCE.replace("unbind(1)", "unbind(0)"))
    write(tree, "broken.py", "kv_cache = (\n")
    return tree


def _settle(tree: Path) -> None:
    """Wait until the files are older than ``RACY_NS``: their stamps then prove them."""
    newest = max(p.stat().st_ctime_ns for p in tree.rglob("*"))
    time.sleep(max(0.0, (newest + RACY_NS - time.time_ns()) / 1e9 + 0.05))


def _only_cache_file(cache_dir: Path) -> Path:
    files = [p for p in cache_dir.iterdir() if p.is_file()]
    assert len(files) == 1, files
    return files[0]


# -- damaged records ---------------------------------------------------------------------


@pytest.mark.vllm_sources
@pytest.mark.slow
def test_every_corruption_of_a_real_cache_is_dropped_and_recomputed(tmp_path: Path) -> None:
    shutil.copytree(
        vllm_tree("0.33.0") / "vllm/v1/attention/backends",
        tmp_path / "tree/vllm/v1/attention/backends",
    )
    marker = tmp_path / MARKER
    bench = Bench(tmp_path / "tree", tmp_path / "cache")

    def catalogue(clean: bytes):  # type: ignore[no-untyped-def]
        yield from named_corruptions(clean, marker)
        yield from random_corruptions(RANDOM_FAULTS, seed=15)

    count, failures = run_catalogue(bench, catalogue, marker)
    assert failures == []
    assert count >= 60 + RANDOM_FAULTS


def test_damage_to_whatever_the_cache_wrote_never_changes_the_output(
    kvguard, small_tree: Path, cache_dir: Path
) -> None:
    """Format-blind: truncate, flip bits and turn `axis 0` into `axis 9` in the cache file,
    whatever its format (the pickle cache gave tracebacks and wrong findings here)."""
    reference = kvguard("check", ".", "--no-cache", cwd=small_tree)
    assert "axis 0" in reference.stdout
    _settle(small_tree)
    kvguard("check", ".", cwd=small_tree)
    path = _only_cache_file(cache_dir)
    clean = path.read_bytes()
    damaged = [clean.replace(b"axis 0", b"axis 9")]
    damaged += [clean[: len(clean) * k // 4] for k in range(4)]
    damaged += [
        clean[:i] + bytes([clean[i] ^ 0x10]) + clean[i + 1 :]
        for i in range(len(clean) // 8, len(clean), max(1, len(clean) // 4))
    ]
    for data in damaged:
        path.write_bytes(data)
        got = kvguard("check", ".", cwd=small_tree)
        assert (got.returncode, got.stdout, got.stderr) == (
            reference.returncode,
            reference.stdout,
            reference.stderr,
        )
    assert _no_temp_files(cache_dir) == []


# -- edits that keep size and mtime ------------------------------------------------------


def _edit_keeping_size_and_mtime(path: Path, old: str, new: str) -> None:
    assert len(old) == len(new)
    info = path.stat()
    path.write_text(path.read_text().replace(old, new))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (info.st_size, info.st_mtime_ns)


def test_an_edit_right_after_a_run_that_keeps_size_and_mtime_is_seen(
    kvguard, small_tree: Path
) -> None:
    first = kvguard("check", "bad.py", cwd=small_tree)
    assert "axis 0" in first.stdout
    _edit_keeping_size_and_mtime(small_tree / "bad.py", "unbind(0)", "unbind(1)")
    second = kvguard("check", "bad.py", cwd=small_tree)
    assert "axis 1" in second.stdout and "axis 0" not in second.stdout


def test_an_old_file_edited_keeping_size_and_mtime_is_seen(kvguard, small_tree: Path) -> None:
    _settle(small_tree)
    kvguard("check", "bad.py", cwd=small_tree)  # its stamp now proves its record
    _edit_keeping_size_and_mtime(small_tree / "bad.py", "unbind(0)", "unbind(1)")
    second = kvguard("check", "bad.py", cwd=small_tree)
    assert "axis 1" in second.stdout and "axis 0" not in second.stdout


def test_a_save_by_rename_that_keeps_size_and_mtime_is_seen(kvguard, small_tree: Path) -> None:
    _settle(small_tree)
    kvguard("check", "bad.py", cwd=small_tree)
    path = small_tree / "bad.py"
    info = path.stat()
    replacement = small_tree / "bad.py.new"
    replacement.write_text(path.read_text().replace("unbind(0)", "unbind(1)"))
    os.utime(replacement, ns=(info.st_atime_ns, info.st_mtime_ns))
    os.replace(replacement, path)
    second = kvguard("check", "bad.py", cwd=small_tree)
    assert "axis 1" in second.stdout and "axis 0" not in second.stdout


def test_a_racy_record_is_verified_by_content_then_trusted(small_tree: Path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A record read within RACY_NS of its file's change is checked by hash; the check
    moves its read time, so that the run after trusts the stamp."""
    bench = Bench(small_tree, tmp_path / "cache", (".",))
    bad = small_tree / "bad.py"
    bad.write_bytes(bad.read_bytes())  # changed just now: its record will be racy
    bench.run()
    path = _only_cache_file(bench.cache)
    store = Store(path, CACHE_VERSION)
    record = next(e for r, e in store.entries.items() if r.endswith("bad.py"))
    assert not record.stamp.proves(record.seen_ns)
    _settle(small_tree)
    bench.run()
    store = Store(path, CACHE_VERSION)
    record = next(e for r, e in store.entries.items() if r.endswith("bad.py"))
    assert record.stamp.proves(record.seen_ns)
    before = path.stat().st_mtime_ns
    bench.run()  # nothing changed: the cache is not even rewritten
    assert path.stat().st_mtime_ns == before


# -- odd things at the cache path --------------------------------------------------------


def _cache_path(kvguard, tree: Path, cache_dir: Path) -> Path:  # type: ignore[no-untyped-def]
    kvguard("check", ".", cwd=tree)
    path = _only_cache_file(cache_dir)
    path.unlink()
    return path


def _same_as_without_cache(kvguard, tree: Path, **env: str) -> None:  # type: ignore[no-untyped-def]
    reference = kvguard("check", ".", "--no-cache", cwd=tree)
    for _ in range(2):
        got = kvguard("check", ".", cwd=tree, timeout=60, **env)
        assert (got.returncode, got.stdout, got.stderr) == (
            reference.returncode,
            reference.stdout,
            reference.stderr,
        )


def test_a_fifo_at_the_cache_path_is_not_waited_on(kvguard, small_tree, cache_dir) -> None:  # type: ignore[no-untyped-def]
    path = _cache_path(kvguard, small_tree, cache_dir)
    os.mkfifo(path)
    _same_as_without_cache(kvguard, small_tree)  # a blocking open would hang: timeout
    assert _no_temp_files(cache_dir) == []


def test_a_device_at_the_cache_path_is_not_read(kvguard, small_tree, cache_dir) -> None:  # type: ignore[no-untyped-def]
    path = _cache_path(kvguard, small_tree, cache_dir)
    os.symlink("/dev/zero", path)
    _same_as_without_cache(kvguard, small_tree)
    assert _no_temp_files(cache_dir) == []


def test_a_huge_file_at_the_cache_path_is_not_read(kvguard, small_tree, cache_dir) -> None:  # type: ignore[no-untyped-def]
    from kvguard.cache import MAX_BYTES

    path = _cache_path(kvguard, small_tree, cache_dir)
    with open(path, "wb") as handle:  # sparse: costs no disk
        handle.truncate(MAX_BYTES + 1)
    _same_as_without_cache(kvguard, small_tree)


def test_a_directory_at_the_cache_path_leaves_no_temporary_file(
    kvguard, small_tree: Path, cache_dir: Path
) -> None:
    path = _cache_path(kvguard, small_tree, cache_dir)
    path.mkdir()
    (path / "inside").write_text("kept")
    _same_as_without_cache(kvguard, small_tree)
    assert (path / "inside").read_text() == "kept"
    assert sorted(p.name for p in cache_dir.iterdir()) == [path.name]


def test_a_cache_dir_that_cannot_exist_costs_only_speed(kvguard, small_tree: Path) -> None:
    blocker = small_tree.parent / "a-file"
    blocker.write_text("not a directory")
    _same_as_without_cache(kvguard, small_tree, KVGUARD_CACHE_DIR=str(blocker / "cache"))
    assert blocker.read_text() == "not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_an_unwritable_cache_dir_costs_only_speed(kvguard, small_tree, cache_dir) -> None:  # type: ignore[no-untyped-def]
    cache_dir.chmod(0o500)
    try:
        _same_as_without_cache(kvguard, small_tree)
    finally:
        cache_dir.chmod(0o700)
    assert list(cache_dir.iterdir()) == []


def test_an_empty_cache_dir_variable_never_writes_into_the_working_directory(
    kvguard, small_tree: Path, tmp_path: Path
) -> None:
    before = sorted(p.name for p in small_tree.iterdir())
    xdg = tmp_path / "xdg"
    _same_as_without_cache(kvguard, small_tree, KVGUARD_CACHE_DIR="", XDG_CACHE_HOME=str(xdg))
    assert sorted(p.name for p in small_tree.iterdir()) == before
    assert list((xdg / "kvguard").iterdir())  # the default place, as if it were unset


def test_a_relative_xdg_cache_home_is_ignored(kvguard, small_tree: Path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"KVGUARD_CACHE_DIR": "", "XDG_CACHE_HOME": "relative", "HOME": str(tmp_path)}
    _same_as_without_cache(kvguard, small_tree, **env)
    assert not (small_tree / "relative").exists()
    assert list((tmp_path / ".cache" / "kvguard").iterdir())


# -- full disk ---------------------------------------------------------------------------


def _file_size_limit(limit: int):  # type: ignore[no-untyped-def]
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "named"])
def test_a_file_size_limit_leaves_no_temporary_file(
    small_tree: Path, cache_dir: Path, kvguard_env, unnamed: bool
) -> None:
    """RLIMIT_FSIZE makes every write past the limit fail with EFBIG, as a full disk
    fails with ENOSPC (the Python interpreter ignores SIGXFSZ)."""
    script = (
        "import sys, kvguard.disk as t; t.use_unnamed = "
        f"{unnamed} and t.use_unnamed; from kvguard.cli import main; sys.exit(main())"
    )
    reference = subprocess.run(
        [sys.executable, "-m", "kvguard", "check", ".", "--no-cache"],
        cwd=small_tree,
        env=kvguard_env,
        capture_output=True,
        text=True,
    )
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", script, "check", "."],
            cwd=small_tree,
            env=kvguard_env,
            capture_output=True,
            text=True,
            preexec_fn=_file_size_limit(512),
            timeout=60,
        )
        assert (proc.returncode, proc.stdout, proc.stderr) == (
            reference.returncode,
            reference.stdout,
            reference.stderr,
        )
        assert list(cache_dir.iterdir()) == []


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_leaves_no_temporary_file(kvguard, tmp_path: Path, tiny_tmpfs: Path) -> None:
    tree = tmp_path / "tree"
    for i in range(40):  # records larger than the 16 KiB file system
        write(tree, f"impl_{i}.py", SCATTERED_SOURCE.replace("MyImpl", f"Impl{i}"))
    filler = tiny_tmpfs / "filler"
    filler.write_bytes(b"x" * 4096)
    _same_as_without_cache(kvguard, tree, KVGUARD_CACHE_DIR=str(tiny_tmpfs))
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["filler"]


# -- killed writers ----------------------------------------------------------------------

_KILLED_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    import kvguard.disk as t
    t.use_unnamed = {unnamed} and t.use_unnamed
    point = {point!r}
    real_write, real_named = t.TempFile.write, t.TempFile.named

    def write(self, data):
        if point == "write":
            real_write(self, data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real_write(self, data)

    def named(self):
        path = real_named(self)
        if point == "rename":
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    t.TempFile.write, t.TempFile.named = write, named
    from kvguard.cli import main
    sys.exit(main())
    """
)


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "named"])
@pytest.mark.parametrize("point", ["write", "rename"])
def test_a_run_killed_while_saving_leaves_nothing_the_next_run_keeps(
    kvguard, small_tree: Path, cache_dir: Path, kvguard_env, point: str, unnamed: bool
) -> None:
    reference = kvguard("check", ".", "--no-cache", cwd=small_tree)
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_SAVE.format(point=point, unnamed=unnamed), "check", "."],
        cwd=small_tree,
        env=kvguard_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL
    stray = _no_temp_files(cache_dir)
    if unnamed and point == "write":
        assert stray == []  # an unnamed file dies with its writer
    after = kvguard("check", ".", cwd=small_tree)
    assert (after.returncode, after.stdout) == (reference.returncode, reference.stdout)
    assert _no_temp_files(cache_dir) == []
    assert Store(_only_cache_file(cache_dir), CACHE_VERSION).dropped == 0


def test_a_sweep_spares_a_temporary_file_whose_writer_lives(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, kvguard.disk as t\n"
            f"f = t.TempFile({str(tmp_path)!r}, 'cache'); f.write(b'x'); print(f.named())\n"
            "sys.stdout.flush(); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        name = Path(holder.stdout.readline().strip())  # type: ignore[union-attr]
        assert name.exists()
        assert disk.sweep(str(tmp_path)) == 0
        assert name.exists()
    finally:
        holder.kill()
        holder.wait()
    assert disk.sweep(str(tmp_path)) == 1
    assert not name.exists()


def test_concurrent_runs_never_tear_the_cache(kvguard_env, small_tree, cache_dir) -> None:  # type: ignore[no-untyped-def]
    for i in range(30):
        write(small_tree, f"more_{i}.py", BAD_SOURCE)
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "kvguard", "check", ".", "--jobs", "1"],
            cwd=small_tree,
            env=kvguard_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = {run.communicate(timeout=120) for run in runs}
    assert len(outputs) == 1
    assert Store(_only_cache_file(cache_dir), CACHE_VERSION).dropped == 0
    assert _no_temp_files(cache_dir) == []


def test_a_file_with_a_syntax_error_is_not_read_again_nor_the_cache_rewritten(
    small_tree: Path,
    tmp_path,
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    """Bad input is a fact of the content, kept under its stamp like facts are: an
    unchanged tree with a broken file neither rescans it nor rewrites the cache."""
    import kvguard.engine as engine_module

    bench = Bench(small_tree, tmp_path / "cache", (".",))
    first = outcome(bench.run())
    _settle(small_tree)
    bench.run()  # the racy records are verified and settled
    reads: list[str] = []
    read = engine_module.read_source

    def counting(real):  # type: ignore[no-untyped-def]
        reads.append(real)
        return read(real)

    monkeypatch.setattr(engine_module, "read_source", counting)
    saved: list[bool] = []

    def no_write(*args):  # type: ignore[no-untyped-def]
        saved.append(True)
        raise OSError("the test forbids writing the cache")

    monkeypatch.setattr(cache_module, "TempFile", no_write)
    assert outcome(bench.run()) == first  # the syntax error still reported, from the cache
    assert reads == [] and saved == []
    (small_tree / "broken.py").write_text("kv_cache = ((\n")  # a new content: read again
    assert any(e.line for e in bench.run().errors)
    assert [Path(r).name for r in reads] == ["broken.py"]
