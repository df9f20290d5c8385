"""The pipeline of ``kvguard check``, stage by stage.

1. **Discover** (``files.py``): the files to check, and every file of the project (under
   its root, ``project.py``), whose facts feed the index whatever paths were given.
2. **Reuse**: a file unchanged since the cached run keeps its facts (and findings).
3. **Scan** each other file: decode it; a text prefilter skips files that spell no KV-cache
   name and no layout declaration (``lint/names.py``); a stdlib ``ast`` pass collects class
   facts for the index and the units (functions) that can hold a split (``lint/facts.py``,
   ``lint/prescreen.py`` say why that is conservative).
4. **Index** the facts of the whole project (``lint/index.py``).
5. **Lint** the checked files that need it: libcst parses only the units stage 3 kept (and
   the class headers the findings point at); the registered rules (``lint/registry.py``)
   judge them; each finding's fix, or why there is none, is planned on the same snippets
   (``lint/fixability.py``); suppression comments are applied and checked.
6. **Collect** the checked files' findings, warnings and errors, and save the cache.

Stages 3 and 5 run in worker processes when there is enough work to pay for them. Each
file's work runs behind a safety net: bad input becomes that file's error line, and so does
a kvguard bug (``internal error``); every other file is still analyzed. Deeply nested code
is retried in a thread with room for it (``deep.py``).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import os
import pickle
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar

from kvguard import __version__
from kvguard.cache import Entry, Stamp, Store, cache_file, content_hash
from kvguard.config import Config
from kvguard.deep import MAX_NESTING, TooDeep, check_nesting, run_deep
from kvguard.files import Discovery, SourceError, SourceFile, Walking, discover, read_source
from kvguard.findings import FileError, Finding, FixInfo, Notice
from kvguard.interrupt import Interrupted, in_worker
from kvguard.lint.facts import FileFacts, scan
from kvguard.lint.index import ProjectIndex
from kvguard.lint.names import KvNames
from kvguard.lint.spans import source_lines
from kvguard.lint.value_facts import merge
from kvguard.prefork import LintHelper, likely_to_lint, second_cpu
from kvguard.project import Project, find_project, first_path
from kvguard.suppression import Pragma, ignores_file, pragmas, suppression_notices

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    from libcst import CSTNode, Module
    from libcst.metadata import CodeRange

    from kvguard.catalog import Rule
    from kvguard.lint.checker import FileModel
    from kvguard.lint.registry import Report

# 12: ClassFacts.stores_no_value (KVG001's no-value evidence; 10 and 11 were versions of it
# and of a withdrawn one); 9: upper-case suppressions, syntax-error wording; 8: parameters
# that calls fill with a cache (Unit.cache_params)
CACHE_VERSION = f"{__version__}-12"
_ABORT_JOIN_S = 2.0  # how long a terminated worker may take to exit before it is killed
_PARALLEL_MIN = 24  # files of real work below which worker processes cost more than they save
REPORT_HINT = f"this is a bug in kvguard {__version__}; please report it with this file"

Progress = Callable[[int, int], None]
T = TypeVar("T")
E = TypeVar("E", bound=BaseException)


@dataclass
class Result:
    findings: list[Finding] = field(default_factory=list)  # reported
    errors: list[FileError] = field(default_factory=list)
    files: int = 0  # files checked (the given paths), those that could not be analyzed excluded
    parsed: int = 0  # files that libcst parsed this run
    index: ProjectIndex | None = None  # the project index the rules used (for --fix)
    fixed: int | None = None  # findings that --fix fixed (--diff: would fix); None: no fixing
    suppressed: list[Finding] = field(default_factory=list)  # silenced by a comment
    notices: list[Notice] = field(default_factory=list)  # warnings about suppressions
    project_files: int = 0  # files the project index was built from
    root: str | None = None  # the project root (absolute), if there is one


@dataclass(frozen=True)
class RuleSet:
    """What the engine needs to know of the catalog."""

    severities: dict[str, str]
    fixable: frozenset[str]  # codes whose data file shows a fix (a `fixed` example)
    known: frozenset[str]

    @classmethod
    def of(cls, catalog: dict[str, Rule], severities: dict[str, str] | None = None) -> RuleSet:
        return cls(
            severities
            if severities is not None
            else {code: r.severity for code, r in catalog.items()},
            frozenset(code for code, r in catalog.items() if r.fixable),
            frozenset(catalog),
        )


def default_rules(severities: dict[str, str] | None = None) -> RuleSet:
    from kvguard.catalog import load_catalog

    return RuleSet.of(load_catalog(), severities)


@dataclass(frozen=True)
class Stdin:
    """Source text read from standard input, checked as the file ``name`` (or ``-``)."""

    text: str
    name: str = "-"


def kv_names(config: Config) -> KvNames:
    return KvNames(config.kv_cache_names, config.kv_cache_list_names, config.splitter_names)


# -- stage 3: scan ----------------------------------------------------------------------


# Valid for which Python: the grammar is the running interpreter's (3.12 syntax on 3.11 fails).
NOT_VALID_HERE = (
    f"not valid Python {sys.version_info.major}.{sys.version_info.minor} "
    "(the interpreter kvguard runs on)"
)


def scan_source(text: str, display: str, names: KvNames, deep: bool = False) -> FileFacts:
    """The prefilter and the ``ast`` pass for one file. Raises SourceError for input that
    is not valid Python, RecursionError for nesting too deep for this thread (``deep``:
    in the deep thread, which also rejects nesting beyond ``MAX_NESTING``)."""
    if not names.mentioned_in(text) or ignores_file(text):
        return FileFacts(())
    try:
        tree = ast.parse(text, filename=display)
    except SyntaxError as exc:
        raise SourceError(
            f"syntax error: {exc.msg}; {NOT_VALID_HERE}",
            exc.lineno or 0,
            exc.offset or 0,
        ) from None
    except MemoryError:  # CPython's parser gives up on nesting it has no stack for
        raise SourceError(
            "cannot parse: nested too deeply for Python's parser; split the expression"
        ) from None
    except ValueError as exc:
        raise SourceError(f"cannot parse: {exc}") from None
    if deep:
        check_nesting(tree)
    return scan(tree, display, names, text)


@dataclass
class Scanned:
    """What stage 3 learned of one file."""

    real: str
    stamp: Stamp
    seen_ns: int  # wall-clock time taken before the stat (see cache.Stamp.proves)
    digest: str  # content hash ("" without a cache)
    facts: FileFacts | None
    error: FileError | None
    text: str | None = None  # kept for stage 5 when the file has units to lint
    notices: tuple[Notice, ...] = ()  # of a file that stage 5 will not see

    @classmethod
    def failed(cls, real: str, error: FileError) -> Scanned:
        return cls(real, Stamp.unread(), 0, "", None, error)


# -- stage 5: lint ----------------------------------------------------------------------


@dataclass
class FileLint:
    """Every finding of one file (suppressed ones marked) and warnings on its comments."""

    findings: list[Finding]
    notices: list[Notice]

    @property
    def reported(self) -> list[Finding]:
        return [f for f in self.findings if f.suppressed is None]


def lint_file(
    text: str,
    display: str,
    config: Config,
    index: ProjectIndex,
    rules: RuleSet,
    facts: FileFacts | None = None,
) -> FileLint:
    """libcst parses, rules, positions, fixes, suppressions for one file.

    With ``facts`` (from ``scan_source``) libcst parses only the units the ast pass kept;
    without, the whole module (what a fix needs). Both find the same.
    """
    from libcst.metadata import PositionProvider

    from kvguard.lint.checker import collect, collect_units
    from kvguard.lint.positions import PositionWrapper
    from kvguard.lint.registry import run_rules
    from kvguard.lint.snippets import SnippetError, Snippets

    names = kv_names(config)

    def enabled(code: str) -> bool:
        return config.enabled(code, display)

    if facts is not None:
        snippets = Snippets(text)
        try:
            model = collect_units(snippets, facts, display, names, index)
        except SnippetError as exc:
            raise SourceError(f"libcst cannot parse this file: {exc}", exc.line) from None
        reports = run_rules(model, index, enabled)
        return _file_lint(reports, model, index, snippets.position, text, config, rules)
    wrapper = PositionWrapper(parse_whole_module(text), unsafe_skip_copy=True)
    model = collect(wrapper.module, display, names, index, text)
    reports = run_rules(model, index, enabled)
    positions = wrapper.resolve(PositionProvider) if reports else {}
    return _file_lint(reports, model, index, positions.__getitem__, text, config, rules)


def lint_source(
    text: str,
    display: str,
    config: Config,
    index: ProjectIndex,
    severities: dict[str, str],
    facts: FileFacts | None = None,
) -> list[Finding]:
    """The reported findings of one file (``lint_file`` without the suppressed ones)."""
    return lint_file(text, display, config, index, default_rules(severities), facts).reported


def parse_whole_module(text: str) -> Module:
    """libcst's tree of a whole file, or SourceError with the line that stops it."""
    import libcst as cst

    try:
        return cst.parse_module(text)
    except cst.ParserSyntaxError as exc:
        raise SourceError(f"libcst cannot parse this file: {exc.message}", exc.raw_line) from None
    except RecursionError:
        raise SourceError("cannot parse: nesting too deep for libcst") from None


def _file_lint(
    reports: list[Report],
    model: FileModel,
    index: ProjectIndex,
    position: Callable[[CSTNode], CodeRange],
    text: str,
    config: Config,
    rules: RuleSet,
) -> FileLint:
    display = model.path
    comments = pragmas(text)
    if not reports:
        return FileLint([], suppression_notices(comments, [], rules.known, config, display))
    fixes, withheld = (
        fix_plan(model, index, position, comments)
        if any(code in rules.fixable for _, code, _ in reports)
        else ({}, {})
    )
    lines = source_lines(text)
    findings = []
    for node, code, message in reports:
        span = position(node)
        line, end_line = span.start.line, span.end.line
        pragma = comments.get(line)
        fixable = code in rules.fixable
        findings.append(
            Finding(
                path=display,
                line=line,
                column=span.start.column + 1,
                end_line=end_line,
                end_column=span.end.column + 1,
                code=code,
                severity=rules.severities.get(code, "error"),
                message=message.text,
                explanation=message.explanation,
                fix=fixes.get(id(node)) if fixable else None,
                fix_withheld=(withheld.get(id(node)) or "") if fixable else "",
                source_line=lines[line - 1] if line <= len(lines) else "",
                end_source_line=lines[end_line - 1]
                if end_line != line and end_line <= len(lines)
                else "",
                suppressed=pragma.reason if pragma is not None and pragma.silences(code) else None,
            )
        )
    findings = sorted(set(findings))
    return FileLint(findings, suppression_notices(comments, findings, rules.known, config, display))


def fix_plan(
    model: FileModel,
    index: ProjectIndex,
    position: Callable[[CSTNode], CodeRange],
    suppressions: dict[int, Pragma],
) -> tuple[dict[int, FixInfo], dict[int, str]]:
    """The fix each fixable anchor offers, or why none is (lint/fixability.py).

    It works on the model the rules saw (snippets in a check), so it costs no parse.
    """
    from kvguard.lint.fixability import plan_file

    def reported(node: CSTNode) -> bool:
        pragma = suppressions.get(position(node).start.line)
        return pragma is None or not pragma.silences("KVG001")

    return plan_file(model, index, reported).info()


@dataclass
class Linted:
    """What stage 5 produced for one file."""

    real: str
    findings: tuple[Finding, ...] = ()
    notices: tuple[Notice, ...] = ()
    error: FileError | None = None


# -- the per-file safety net -------------------------------------------------------------


def internal_error(display: str, exc: BaseException) -> FileError:
    """A kvguard bug met on one file, as that file's error line."""
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        frame = frames[-1]
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        shown = os.path.relpath(frame.filename, package) if frame.filename else "?"
        where = f" at {shown}:{frame.lineno}"
    try:
        text = str(exc)
    except Exception:  # an exception that cannot say what it is (a too deep repr, say)
        text = ""
    text = " ".join(text.split())  # one line
    text = text if len(text) <= 160 else text[:157] + "..."
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return FileError(display, f"internal error ({detail}{where}); {REPORT_HINT}")


def too_deep(display: str, exc: BaseException) -> FileError:
    if isinstance(exc, TooDeep):
        return FileError(
            display,
            f"expression nested {exc.depth:,} levels deep; kvguard analyzes up to "
            f"{MAX_NESTING:,} levels: split the expression",
            exc.line,
        )
    return FileError(
        display,
        f"nested too deeply to analyze (kvguard analyzes up to {MAX_NESTING:,} levels): "
        "split the expression",
    )


def guarded(work: Callable[[bool], T], display: str, failed: Callable[[FileError], T]) -> T:
    """``work(deep=False)``; on RecursionError ``work(deep=True)`` in the deep thread.

    Bad input (SourceError) and any other exception become ``failed(error)``: one error
    line for this file, never the end of the run.
    """
    try:
        return work(False)
    except SourceError as exc:
        return failed(exc.error(display))
    except Exception as exc:
        _reraise_signal(exc)
        if not _from_recursion(exc):
            return failed(internal_error(display, exc))
    try:
        return run_deep(lambda: work(True))
    except TooDeep as exc:
        return failed(too_deep(display, exc))
    except SourceError as exc:
        return failed(exc.error(display))
    except Exception as exc:
        _reraise_signal(exc)
        if _from_recursion(exc):
            return failed(too_deep(display, exc))
        return failed(internal_error(display, exc))


def _from_recursion(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised while handling, a RecursionError: code that
    cleans up in ``finally`` (libcst's position recording) can fail in turn and hide it."""
    return _in_chain(exc, RecursionError) is not None


def _in_chain(exc: BaseException, kind: type[E]) -> E | None:
    """The first ``kind`` among ``exc`` and what it was raised from or while handling."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 20:
        if isinstance(current, kind):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def _reraise_signal(exc: BaseException) -> None:
    """A signal that arrived inside code that wraps what it raises (``__set_name__`` during
    an import wraps it in a RuntimeError) is still the signal, not a bug in this file."""
    stop = _in_chain(exc, Interrupted) or _in_chain(exc, KeyboardInterrupt)
    if stop is not None:
        raise stop from None


# -- worker-side tasks (module level so that they pickle) --------------------------------

_WORKER: dict[str, object] = {}


def _init_worker(state: bytes | None) -> None:
    in_worker()
    if state is not None:  # spawned: forked workers inherit the state
        _WORKER.update(pickle.loads(state))


def scan_file(
    display: str, real: str, config: Config, rules: RuleSet, text: str | None, hashed: bool
) -> Scanned:
    """Stage 3 for one file, from disk (or from ``text``, read from stdin)."""
    names = kv_names(config)

    def work(deep: bool) -> Scanned:
        stamp, seen = Stamp.unread(), time.time_ns()  # seen: before the stat
        data = b""
        source = text
        if source is None:
            try:
                stamp = Stamp.of(os.stat(real))
            except OSError as exc:
                raise SourceError(f"cannot read: {exc.strerror or exc}") from None
            data, source = read_source(real)
        digest = content_hash(data) if hashed and text is None else ""
        try:
            facts = scan_source(source, display, names, deep)
        except SourceError as exc:
            # bad input (a syntax error): as much a fact of this content as its facts are,
            # so it is kept under its stamp and hash, and the next run does not read it again
            return Scanned(real, stamp, seen, digest, None, exc.error(display))
        if facts.candidate:
            return Scanned(real, stamp, seen, digest, facts, None, source)
        # stage 5 will not see this file (unless a divergence puts it there): judge its
        # suppression comments now, against no findings
        notices: tuple[Notice, ...] = ()
        if not ignores_file(source):
            comments = pragmas(source)
            notices = tuple(suppression_notices(comments, [], rules.known, config, display))
        return Scanned(real, stamp, seen, digest, facts, None, None, notices)

    return guarded(work, display, lambda error: Scanned.failed(real, error))


def lint_task_file(
    display: str,
    real: str,
    text: str | None,
    facts: FileFacts,
    config: Config,
    index: ProjectIndex,
    rules: RuleSet,
) -> Linted:
    """Stage 5 for one file."""

    def work(deep: bool) -> Linted:
        source = text if text is not None else read_source(real)[1]
        linted = lint_file(source, display, config, index, rules, facts)
        return Linted(real, tuple(linted.findings), tuple(linted.notices))

    return guarded(work, display, lambda error: Linted(real, error=error))


class _ScanTask:
    def __call__(self, item: tuple[str, str]) -> Scanned:
        display, real = item
        return scan_file(
            display,
            real,
            _WORKER["config"],  # type: ignore[arg-type]
            _WORKER["rules"],  # type: ignore[arg-type]
            None,
            bool(_WORKER["hash"]),
        )

    def failed(self, item: tuple[str, str], error: FileError) -> Scanned:
        return Scanned.failed(item[1], error)


class _LintTask:
    def __call__(self, item: tuple[str, str, str | None, FileFacts, str, bytes | None]) -> Linted:
        display, real, text, facts, key, index_bytes = item
        if _WORKER.get("index_key") != key:  # the index travels once per worker, not per file
            _WORKER["index"] = pickle.loads(index_bytes)  # type: ignore[arg-type]
            _WORKER["index_key"] = key
        return lint_task_file(
            display,
            real,
            text,
            facts,
            _WORKER["config"],  # type: ignore[arg-type]
            _WORKER["index"],  # type: ignore[arg-type]
            _WORKER["rules"],  # type: ignore[arg-type]
        )

    def failed(self, item: tuple, error: FileError) -> Linted:
        return Linted(item[1], error=error)


class _Workers:
    """Runs tasks here, or in worker processes when there are enough of them to pay for the
    processes.

    Where processes fork, each stage forks a fresh pool: the scan's before libcst is
    imported, so that the workers start at once while this process imports it; the lint's
    after the index is built, so that the workers inherit libcst and the index. A worker
    that dies (a crash in native code) costs only the file it was on: the files it had
    not finished are run again, one process each. A run stopped by a signal (or by any
    exception) terminates and joins its workers (``abort``) instead of waiting for them.
    """

    def __init__(self, jobs: int, state: dict[str, object]) -> None:
        self.jobs = jobs
        self.state = state
        self.forks = os.name == "posix"
        self.pool: ProcessPoolExecutor | None = None
        self.helper: LintHelper | None = None
        _WORKER.clear()
        _WORKER.update(state)

    def parallel(self, count: int) -> bool:
        return self.jobs > 1 and count >= _PARALLEL_MIN

    def helped(self, todo: list, index: ProjectIndex, key: str) -> list[Linted] | None:
        """The lint of ``todo`` by the forked helper (see ``prefork``), if there is one and
        the pool does not take these; None: lint them the usual way."""
        helper, self.helper = self.helper, None
        if helper is None:
            return None
        if self.parallel(len(todo)):
            helper.close()
            return None
        shipped = pickle.dumps(index, pickle.HIGHEST_PROTOCOL)
        return helper.run([(*item, key, shipped) for item in todo])  # type: ignore[return-value]

    def _new_pool(self, workers: int) -> ProcessPoolExecutor:
        # imported here: multiprocessing and the executor cost a one-file run ~20 ms
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # forked workers inherit the state; spawned ones get it pickled
        return ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("fork" if self.forks else "spawn"),
            initializer=_init_worker,
            initargs=(None if self.forks else pickle.dumps(self.state),),
        )

    def map(self, task: _ScanTask | _LintTask, items: list, chunksize: int = 0) -> Iterator:
        if not self.parallel(len(items)):
            return map(task, items)
        self.close()
        self.pool = self._new_pool(self.jobs)
        chunk = chunksize or max(1, len(items) // (self.jobs * 16))
        return self._resilient(task, items, self.pool.map(task, items, chunksize=chunk))

    def _resilient(self, task: _ScanTask | _LintTask, items: list, results: Iterator) -> Iterator:
        from concurrent.futures.process import BrokenProcessPool

        done = 0
        try:
            for result in results:
                yield result
                done += 1
        except BrokenProcessPool:
            self.close()
            for item in items[done:]:
                yield self._isolated(task, item)

    def _isolated(self, task: _ScanTask | _LintTask, item: object) -> object:
        from concurrent.futures.process import BrokenProcessPool

        self.pool = self._new_pool(1)
        try:
            return self.pool.submit(task, item).result()
        except BrokenProcessPool:
            display = item[0]  # type: ignore[index]
            message = f"internal error (the analysis process died); {REPORT_HINT}"
            return task.failed(item, FileError(display, message))  # type: ignore[arg-type]
        finally:
            self.close()

    def close(self) -> None:
        if self.helper is not None:
            self.helper.close()
            self.helper = None
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def abort(self) -> None:
        """Stop now: drop the queued work, terminate the workers and reap them."""
        if self.helper is not None:
            self.helper.close()
            self.helper = None
        pool, self.pool = self.pool, None
        if pool is None:
            return
        # the executor has no public way to stop running workers before Python 3.14
        # (terminate_workers); its process table is the same there
        processes = list(getattr(pool, "_processes", {}).values())
        # work whose result iterator was closed on the way here is cancelled; Python 3.11's
        # executor thread would raise InvalidStateError failing it once the workers are gone.
        # Each such item gets a fresh future that no one waits on: removing the item
        # instead races with that thread, which still looks queued ids up (KeyError)
        from concurrent.futures import Future

        for item in list(getattr(pool, "_pending_work_items", {}).values()):
            if item.future.done():
                item.future = Future()
        for process in processes:
            with contextlib.suppress(OSError, ValueError):
                process.terminate()
        for process in processes:
            with contextlib.suppress(OSError, ValueError, AssertionError):
                process.join(_ABORT_JOIN_S)
                if process.is_alive():
                    process.kill()
                    process.join()
        # the workers are gone: the executor's thread fails the pending work and ends;
        # joining it keeps interpreter exit from waking a thread that is closing its pipe
        # (3.11). A worker killed while it wrote a result leaves that thread blocked on the
        # rest of the message: hence the timeout (the CLI then exits without waiting on it)
        thread = getattr(pool, "_executor_manager_thread", None)
        pool.shutdown(wait=False)
        if thread is not None:
            thread.join(_ABORT_JOIN_S)


def _import_lint_stage() -> None:
    import kvguard.lint.checker
    import kvguard.lint.fixability
    import kvguard.lint.registry

    kvguard.lint.registry.registered()


# -- stage 4: index ---------------------------------------------------------------------


def build_index(facts: dict[str, FileFacts | None], config: Config) -> ProjectIndex:
    """The project index over every file's facts (by display path, in the given order)."""
    return ProjectIndex.build(
        (c for f in facts.values() if f for c in f.classes),
        config.backend_bases,
        {path: f.imports for path, f in facts.items() if f and f.imports},
        merge(f.values for f in facts.values() if f and not f.values.empty),
    )


def index_key(facts: Iterable[FileFacts]) -> str:
    payload = sorted(repr(c) for f in facts for c in f.classes)
    payload += sorted(repr(sorted(f.imports.items())) for f in facts if f.imports)
    payload += sorted(repr(f.values) for f in facts if not f.values.empty)
    return hashlib.sha256("\n".join(payload).encode()).hexdigest()[:16]


# -- the pipeline -----------------------------------------------------------------------


@dataclass
class _Run:
    """The state one check carries from stage to stage."""

    config: Config
    rules: RuleSet
    found: Discovery
    stdin: Stdin | None
    entries: dict[str, Entry] = field(default_factory=dict)  # by real path, project files
    texts: dict[str, str] = field(default_factory=dict)  # sources kept for stage 5
    parsed: int = 0

    def stdin_file(self) -> SourceFile | None:
        return self.found.checked[0] if self.stdin is not None and self.found.checked else None


def check(
    paths: list[str],
    config: Config,
    *,
    use_cache: bool = True,
    jobs: int | None = None,
    progress: Progress | None = None,
    severities: dict[str, str] | None = None,
    project: Project | None = None,
    stdin: Stdin | None = None,
    rules: RuleSet | None = None,
) -> Result:
    """Check ``paths`` (or ``stdin``) against the project they belong to."""
    jobs = jobs or os.cpu_count() or 1
    rules = rules or default_rules(severities)
    if project is None:
        project = find_project(first_path(paths, stdin.name if stdin else None), config.source)
    walking = Walking(config, config.respect_gitignore, config.force_exclude, project.root)
    key_paths = [project.root] if project.root else paths
    cache_path = cache_file(CACHE_VERSION, config.digest(), key_paths) if use_cache else None
    workers = _Workers(jobs, {"config": config, "rules": rules, "hash": use_cache})
    try:
        if (
            workers.forks
            and jobs > 1
            and stdin is None
            and len(paths) < _PARALLEL_MIN
            and likely_to_lint(paths, cache_path)
            and second_cpu()
        ):
            workers.helper = LintHelper(_import_lint_stage, _LintTask())
        found = discover(paths, walking, stdin.name if stdin else None)
        run = _Run(config, rules, found, stdin)
        store = Store(cache_path, CACHE_VERSION)
        todo = _reuse(run, store)
        _scan(run, todo, store, workers, progress)
        index, key = _index(run)
        _lint(run, index, key, workers)
    except BaseException:  # a signal (interrupt.Interrupted), Ctrl-C, a bug: no waiting
        workers.abort()
        raise
    finally:
        workers.close()
    result = _collect(run, index)
    result.root = project.root
    stdin_file = run.stdin_file()
    kept = {
        real: entry
        for real, entry in run.entries.items()
        if stdin_file is None or real != stdin_file.real
    }
    if stdin_file is not None and stdin_file.real in store.entries:
        kept[stdin_file.real] = store.entries[stdin_file.real]  # stdin is not the disk's file
    store.save(kept)  # writes nothing when every record is as it was loaded
    return result


def _reuse(run: _Run, store: Store) -> list[tuple[str, str]]:
    """Stage 2: entries of unchanged files (``cache.Store`` says which); the
    (display, real) of the others."""
    stdin_file = run.stdin_file()
    todo = []
    for source in run.found.project:
        if source is stdin_file:
            continue
        entry = store.unchanged(source.real)
        if entry is None:
            todo.append((source.display, source.real))
        else:
            run.entries[source.real] = entry
    return todo


def _scan(
    run: _Run,
    todo: list[tuple[str, str]],
    store: Store,
    workers: _Workers,
    progress: Progress | None,
) -> None:
    """Stage 3 for the files not reused (and the stdin text)."""
    total = len(run.found.project)
    done = total - len(todo)
    if progress:
        progress(done, total)
    stdin_file = run.stdin_file()
    if stdin_file is not None:
        assert run.stdin is not None
        scanned = scan_file(
            stdin_file.display, stdin_file.real, run.config, run.rules, run.stdin.text, False
        )
        _store(run, scanned, None)
        done += 1
    results = workers.map(_ScanTask(), todo)
    if workers.pool is not None and workers.forks:
        _import_lint_stage()  # while the workers scan; the lint workers inherit it
    for scanned in results:
        _store(run, scanned, store)
        done += 1
        if progress:
            progress(done, total)


def _store(run: _Run, scanned: Scanned, store: Store | None) -> None:
    """Keep what a scan found: the cached entry if the content is the same (its findings
    stand while the index does), else a new one."""
    if store is None:
        entry = Entry(scanned.stamp, scanned.digest, scanned.seen_ns, scanned.facts, scanned.error)
    else:
        entry = store.refreshed(
            scanned.real,
            scanned.stamp,
            scanned.seen_ns,
            scanned.digest,
            scanned.facts,
            scanned.error,
        )
    if entry.findings is None:  # a new entry: the scan's warnings are its own
        entry.notices = scanned.notices
    run.entries[scanned.real] = entry
    if scanned.text is not None:
        run.texts[scanned.real] = scanned.text


def _index(run: _Run) -> tuple[ProjectIndex, str]:
    """Stage 4: the index of the whole project, in an order that does not depend on which
    paths were given or what came from the cache."""
    ordered = sorted(run.found.project, key=lambda s: s.real)
    by_path = {s.display: run.entries[s.real].facts for s in ordered}
    index = build_index(by_path, run.config)
    return index, _index_key(run, ordered)


def _index_key(run: _Run, ordered: list[SourceFile]) -> str:
    """What the index is built from, as a key. Facts follow from a file's content and path
    (and from the configuration and version, which key the cache itself), so the content
    hashes of the files that contribute facts stand for the facts when every one has a
    hash; otherwise (no cache, stdin) the facts themselves are hashed."""
    contributing = []
    for source in ordered:
        entry = run.entries[source.real]
        facts = entry.facts
        if facts is not None and (facts.classes or facts.imports):
            contributing.append((source, entry))
    if run.stdin is None and all(entry.content_hash for _, entry in contributing):
        payload = "\n".join(f"{s.display}\0{e.content_hash}" for s, e in contributing)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]
    return index_key(entry.facts for _, entry in contributing if entry.facts)


def _lint(run: _Run, index: ProjectIndex, key: str, workers: _Workers) -> None:
    """Stage 5 for the checked files whose findings are not known for this index."""
    divergent = {d.backend.path for d in index.divergences()}
    todo = []
    for source in run.found.checked:
        entry = run.entries[source.real]
        if entry.error is not None or entry.facts is None:
            continue
        if not (entry.facts.candidate or source.display in divergent):
            if entry.findings is None or entry.index_key != key:
                entry.findings, entry.index_key = (), key
        elif entry.findings is None or entry.index_key != key:
            todo.append((source.display, source.real, run.texts.get(source.real), entry.facts))
    _WORKER.update(index=index, index_key=key)
    # the largest first, so that the workers finish together
    todo.sort(key=lambda item: -_unit_lines(item[3]))
    results = workers.helped(todo, index, key) if todo else None
    if results is None:
        # spawned workers need the index pickled (once per worker); forked ones inherit it
        spawns = workers.parallel(len(todo)) and not workers.forks
        shipped = pickle.dumps(index) if spawns else None
        tasks = [(*item, key, shipped) for item in todo]
        results = workers.map(_LintTask(), tasks, chunksize=1)
    for linted in results:
        entry = run.entries[linted.real]
        entry.findings, entry.notices, entry.index_key = linted.findings, linted.notices, key
        if linted.error is not None:
            entry.error = linted.error
        run.parsed += 1


def _collect(run: _Run, index: ProjectIndex) -> Result:
    """Stage 6: what the checked files hold, sorted."""
    result = Result(
        errors=list(run.found.errors),
        files=len(run.found.checked),
        parsed=run.parsed,
        index=index,
        project_files=len(run.found.project),
    )
    for source in run.found.checked:
        entry = run.entries[source.real]
        if entry.error is not None:
            error = entry.error
            result.errors.append(
                error if error.path == source.display else replace(error, path=source.display)
            )
            result.files -= 1  # not checked: counted once, as a path that could not be analyzed
            continue
        display = source.display
        for finding in entry.findings or ():
            if finding.path != display:
                finding = replace(finding, path=display)
            (result.findings if finding.suppressed is None else result.suppressed).append(finding)
        for notice in entry.notices:
            result.notices.append(
                notice if notice.path == display else replace(notice, path=display)
            )
    result.findings.sort()
    result.suppressed.sort()
    result.notices.sort()
    result.errors.sort()
    return result


def _unit_lines(facts: FileFacts) -> int:
    return sum(end - start + 1 for unit in facts.units for start, end in unit.spans)
