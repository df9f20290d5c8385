"""How --fix writes: whole files with their owner, group, mode and attributes, never over
a concurrent edit, and nothing torn or left behind when it is killed.

A concurrent writer is a real second process (this test), synchronised with kvguard through
files at ``writer.checkpoint``: kvguard, run in a driver process, stops at a checkpoint and
waits; the test edits the file, in place or by rename, and lets it go on.
"""

from __future__ import annotations

import gc
import os
import pwd  # imported before a test's child gives up root (see _fix_as)
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

import pytest

from kvguard import disk
from tests.lint.kvg_helpers import SCATTERED_SOURCE, write

EDITED = SCATTERED_SOURCE + "# saved by the user meanwhile\n"
CHANGED_LINE = (
    "a_target.py: error: not fixed: changed during --fix, left as it is now; run --fix again"
)

_DRIVER = textwrap.dedent(
    """
    import os, signal, sys, time
    import kvguard.disk as disk
    import kvguard.fix.writer as writer

    waits, kill, sync = {waits!r}, {kill!r}, {sync!r}
    writer.exchange_supported = {exchange!r}
    disk.use_unnamed = {unnamed!r} and disk.use_unnamed
    real_write = disk.TempFile.write

    def checkpoint(step):
        if step == kill:
            os.kill(os.getpid(), signal.SIGKILL)
        if step in waits:
            open(os.path.join(sync, "ready-" + step), "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(os.path.join(sync, "go-" + step)):
                if time.monotonic() > deadline:
                    sys.exit("the test never said go")
                time.sleep(0.005)

    def write(self, data):
        if kill == "mid-write":
            real_write(self, data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real_write(self, data)

    writer.checkpoint = checkpoint
    disk.TempFile.write = write
    from kvguard.cli import main
    sys.exit(main())
    """
)


class Driver:
    """``kvguard check --fix`` in a child process that stops at checkpoints."""

    def __init__(self, tree: Path, env: dict[str, str], sync: Path, **options: object) -> None:
        self.sync = sync
        sync.mkdir(exist_ok=True)
        script = _DRIVER.format(
            waits=tuple(options.get("waits", ())),
            kill=options.get("kill", ""),
            sync=str(sync),
            exchange=options.get("exchange", True),
            unnamed=options.get("unnamed", True),
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, "check", "--fix", "--no-cache", "."],
            cwd=tree,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_for(self, step: str) -> None:
        deadline = time.monotonic() + 60
        while not (self.sync / f"ready-{step}").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out, err = self.proc.communicate()
                raise AssertionError(f"kvguard never reached {step}: {out}{err}")
            time.sleep(0.005)

    def go(self, step: str) -> None:
        (self.sync / f"go-{step}").touch()

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, out, err


def _edit_in_place(path: Path) -> None:
    with open(path, "r+b") as handle:  # the same inode, as most editors save
        handle.write(EDITED.encode())
        handle.truncate()


def _edit_by_rename(path: Path) -> None:
    new = path.with_name(path.name + ".new")
    new.write_text(EDITED)
    os.replace(new, path)


def _tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    tree = tmp_path / "tree"
    target = write(tree, "a_target.py", SCATTERED_SOURCE)
    other = write(tree, "b_other.py", SCATTERED_SOURCE)
    return tree, target, other


def _temp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(f"*{disk.SUFFIX}"))


def _error_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if ": error: " in line]


def _assert_the_edit_was_kept(driver: Driver, target: Path) -> None:
    code, out, err = driver.finish()
    assert code == 2, out + err
    assert _error_lines(out) == [CHANGED_LINE]
    assert target.read_text() == EDITED


CONCURRENT = [
    # (the checkpoint where the edit happens, how the user saves, exchange supported)
    ("written", _edit_in_place, True),
    ("written", _edit_by_rename, True),
    ("compared", _edit_in_place, True),
    ("compared", _edit_by_rename, True),
    ("compared", _edit_in_place, False),
    ("compared", _edit_by_rename, False),
]


@pytest.mark.parametrize(("step", "edit", "exchange"), CONCURRENT)
def test_an_edit_made_during_fix_is_kept_and_reported(
    tmp_path: Path, kvguard_env, step: str, edit, exchange: bool
) -> None:  # type: ignore[no-untyped-def]
    tree, target, other = _tree(tmp_path)
    driver = Driver(tree, kvguard_env, tmp_path / "sync", waits=[step], exchange=exchange)
    driver.wait_for(step)
    edit(target)
    driver.go(step)
    _assert_the_edit_was_kept(driver, target)
    assert "self._split_kv_cache" in other.read_text()
    assert _temp_files(tmp_path) == []


def test_an_edit_through_a_file_held_open_is_kept(tmp_path: Path, kvguard_env) -> None:  # type: ignore[no-untyped-def]
    """An editor that opened the file before kvguard swapped it in, and writes after."""
    tree, target, _ = _tree(tmp_path)
    driver = Driver(tree, kvguard_env, tmp_path / "sync", waits=["compared", "swapped"])
    driver.wait_for("compared")
    with open(target, "r+b") as held:
        driver.go("compared")
        driver.wait_for("swapped")
        held.write(EDITED.encode())
        held.truncate()
    driver.go("swapped")
    _assert_the_edit_was_kept(driver, target)
    assert _temp_files(tmp_path) == []


def test_an_edit_held_open_in_the_fallback_is_put_back(tmp_path: Path, kvguard_env) -> None:  # type: ignore[no-untyped-def]
    tree, target, _ = _tree(tmp_path)
    driver = Driver(tree, kvguard_env, tmp_path / "sync", waits=["replaced"], exchange=False)
    with open(target, "r+b") as held:
        driver.wait_for("replaced")
        held.write(EDITED.encode())
        held.truncate()
    driver.go("replaced")
    _assert_the_edit_was_kept(driver, target)
    assert _temp_files(tmp_path) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "replace"])
def test_no_edit_means_a_clean_fix(tmp_path: Path, kvguard_env, exchange: bool) -> None:  # type: ignore[no-untyped-def]
    tree = tmp_path / "tree"
    target = write(tree, "a_target.py", SCATTERED_SOURCE)
    steps = ["written", "compared", "swapped" if exchange else "replaced"]
    driver = Driver(tree, kvguard_env, tmp_path / "sync", waits=steps, exchange=exchange)
    for step in steps:
        driver.wait_for(step)
        driver.go(step)
    code, out, err = driver.finish()
    assert code == 0, out + err
    assert target.read_text().count("self._split_kv_cache(kv_cache)") == 2
    assert _temp_files(tmp_path) == []


def _fix(kvguard, tree: Path, *paths: str):  # type: ignore[no-untyped-def]
    return kvguard("check", "--fix", "--no-cache", *(paths or (".",)), cwd=tree)


# -- killed ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kill", "unnamed"),
    [
        ("mid-write", True),
        ("mid-write", False),
        ("written", True),
        ("compared", True),
        ("swapped", True),
    ],
)
def test_a_killed_fix_leaves_a_whole_file_and_the_next_one_cleans_up(
    kvguard, tmp_path: Path, kvguard_env, kill: str, unnamed: bool
) -> None:  # type: ignore[no-untyped-def]
    tree, target, other = _tree(tmp_path)
    driver = Driver(tree, kvguard_env, tmp_path / "sync", kill=kill, unnamed=unnamed)
    code, _, _ = driver.finish()
    assert code == -signal.SIGKILL
    content = target.read_text()  # the old file or the fixed one, whole
    assert content == SCATTERED_SOURCE or content.count("self._split_kv_cache(kv_cache)") == 2
    if kill == "mid-write" and unnamed:
        assert _temp_files(tmp_path) == []
    again = _fix(kvguard, tree)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _temp_files(tmp_path) == []
    for path in (target, other):
        assert path.read_text().count("self._split_kv_cache(kv_cache)") == 2


# -- what a file keeps -------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file another owner")
def test_root_keeps_the_owner_group_and_mode(kvguard, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tree, target, _ = _tree(tmp_path)
    os.chown(target, 1234, 5678)
    target.chmod(0o2640)
    proc = _fix(kvguard, tree)
    assert proc.returncode == 0, proc.stdout
    info = target.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (1234, 5678, 0o2640)
    assert "self._split_kv_cache" in target.read_text()


def _fix_as(uid: int, gid: int, tree: Path) -> tuple[int, str]:
    """``kvguard check --fix .`` in ``tree``, in a child forked from this process that
    becomes user ``uid`` (no exec: the interpreter's files may be private to root, so
    every module it needs is imported here first, by a fix of a throw-away tree)."""
    from kvguard.cli import main

    warm = tree.parent / "warm"
    write(warm, "impl.py", SCATTERED_SOURCE)
    main(["check", "--fix", "--no-cache", "--no-progress", str(warm)])
    gc.enable()  # main() turns the collector off for its short-lived process
    output = tree.parent / "output.txt"
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            sys.stdout = sys.stderr = os.fdopen(fd, "w", buffering=1)
            os.setgroups([gid])
            os.setgid(gid)
            os.setuid(uid)
            os.chdir(tree)
            code = main(["check", "--fix", "--no-cache", "--no-progress", "."])
        except BaseException:  # anything, reported from the child
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.read_text()


@pytest.fixture
def shared_dir():  # type: ignore[no-untyped-def]
    """A directory another user can reach (pytest's tmp_path lies below private ones)."""
    path = Path(tempfile.mkdtemp(prefix="kvguard-owner-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as two users")
def test_a_file_whose_owner_cannot_be_kept_is_refused(shared_dir: Path) -> None:
    """A user who may write someone else's file (through its group) but cannot chown."""
    user, owner = 4321, 4322
    for uid in (user, owner):
        with pytest.raises(KeyError):
            pwd.getpwuid(uid)  # the message names a user by uid only if it has no name
    tree, target, other = _tree(shared_dir)
    tree.chmod(0o777)
    os.chown(target, owner, user)
    target.chmod(0o664)
    os.chown(other, user, user)
    code, output = _fix_as(user, user, tree)
    assert code == 2, output
    assert _error_lines(output) == [
        f"a_target.py: error: not fixed: owned by uid {owner}, group {user}: kvguard could not "
        "give the fixed file the same owner, so it is left unchanged; run --fix as its owner "
        "or as root"
    ]
    assert target.read_text() == SCATTERED_SOURCE and target.stat().st_uid == owner
    assert "self._split_kv_cache" in other.read_text()
    assert other.stat().st_uid == user
    assert _temp_files(shared_dir) == []


def test_extended_attributes_are_kept(kvguard, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tree, target, _ = _tree(tmp_path)
    try:
        os.setxattr(target, "user.kvguard-test", b"kept")
    except OSError as exc:
        pytest.skip(f"no user extended attributes here: {exc}")
    assert _fix(kvguard, tree).returncode == 0
    assert os.getxattr(target, "user.kvguard-test") == b"kept"


def test_a_hard_linked_file_is_refused_and_both_names_stay_one_file(kvguard, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tree, target, other = _tree(tmp_path)
    twin = tmp_path / "twin.py"
    os.link(target, twin)
    proc = _fix(kvguard, tree)
    assert proc.returncode == 2
    assert _error_lines(proc.stdout) == [
        "a_target.py: error: not fixed: it has 2 hard links; replacing it would split them "
        "and writing it in place could leave it half-written, so it is left unchanged: break "
        "the link (`cp FILE tmp && mv tmp FILE`) or apply `kvguard check --diff` by hand"
    ]
    assert target.read_text() == SCATTERED_SOURCE
    assert os.path.samefile(target, twin)
    assert "self._split_kv_cache" in other.read_text()


def test_a_symlink_is_written_through_and_stays_a_link(kvguard, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tree, _, _ = _tree(tmp_path)
    real = write(tmp_path, "elsewhere/impl.py", SCATTERED_SOURCE)
    real.chmod(0o640)
    link = tree / "c_link.py"
    os.symlink(real, link)
    proc = _fix(kvguard, tree, "c_link.py")
    assert proc.returncode == 0, proc.stdout
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert "self._split_kv_cache" in real.read_text()
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert _temp_files(tmp_path) == []


def test_a_stray_temporary_file_of_a_killed_run_is_swept_by_the_next_fix(kvguard, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tree, _, _ = _tree(tmp_path)
    stray = tree / f".a_target.py.0123456789ab{disk.SUFFIX}"
    stray.write_text("half")
    proc = _fix(kvguard, tree)
    assert proc.returncode == 0
    assert not stray.exists()


def test_a_full_disk_leaves_the_file_and_no_temporary_file(tmp_path: Path, kvguard_env) -> None:  # type: ignore[no-untyped-def]
    """A file-size limit below the fixed file's size fails its write as a full disk would
    (EFBIG for ENOSPC; the interpreter ignores SIGXFSZ)."""
    tree, target, _ = _tree(tmp_path)
    limit = len(SCATTERED_SOURCE) + 64  # the fixed file is longer

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "kvguard", "check", "--fix", "--no-cache", "."],
        cwd=tree,
        env=kvguard_env,
        capture_output=True,
        text=True,
        preexec_fn=limited,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = _error_lines(proc.stdout)
    assert errors == [
        "a_target.py: error: not fixed: cannot write: File too large",
        "b_other.py: error: not fixed: cannot write: File too large",
    ]
    assert target.read_text() == SCATTERED_SOURCE
    assert _temp_files(tmp_path) == []
