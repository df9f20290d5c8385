"""The pipeline of ``kvguard check``: discover, prefilter, index, lint, cache.

1. Text prefilter: a file that spells no KV-cache name and no layout declaration
   cannot hold a finding (see ``lint/names.py``); it is decoded and skipped.
2. stdlib ``ast`` scan: class facts for the project index, and which units (functions)
   can hold a split (``lint/prescreen.py``; ``lint/facts.py`` says why it is conservative).
3. The project index is built from every file's facts.
4. libcst (the engine of record: rules and positions) parses only the units that
   stage 2 kept (and the class headers the findings point at), in files that hold such
   units or declare a layout the index finds divergent; ``lint_source`` without facts
   lints a whole module instead (same findings). Each KVG001/KVG004 finding's fix (or why
   there is none, ``lint/fixability.py``) is planned on the same snippets, with no parse more.
Stages 2 and 4 run in worker processes when there is enough work to pay for them.
"""

from __future__ import annotations

import ast
import hashlib
import os
import pickle
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvguard import __version__
from kvguard.cache import Entry, Stamp, Store, cache_file, content_hash
from kvguard.config import Config
from kvguard.files import SourceError, discover, read_source
from kvguard.findings import FileError, Finding, FixInfo
from kvguard.lint.facts import FileFacts, scan
from kvguard.lint.index import ProjectIndex
from kvguard.lint.names import KvNames
from kvguard.lint.value_facts import merge
from kvguard.suppression import ignores_file, is_suppressed, line_suppressions

if TYPE_CHECKING:
    from libcst import CSTNode, Module
    from libcst.metadata import CodeRange

    from kvguard.lint.checker import FileModel
    from kvguard.lint.rules import Report

CACHE_VERSION = f"{__version__}-6"  # 6: the value model (FileFacts.values)
_PARALLEL_MIN = 24  # files of real work below which worker processes cost more than they save

Progress = Callable[[int, int], None]


@dataclass
class Result:
    findings: list[Finding] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)
    files: int = 0
    parsed: int = 0  # files that libcst parsed this run
    index: ProjectIndex | None = None  # the project index the rules used (for --fix)
    fixed: int | None = None  # findings that --fix fixed (--diff: would fix); None: no fixing


def kv_names(config: Config) -> KvNames:
    return KvNames(config.kv_cache_names, config.kv_cache_list_names, config.splitter_names)


def scan_source(text: str, display: str, names: KvNames) -> FileFacts:
    """Stages 1 and 2 for one file. Raises SourceError for a syntax error."""
    if not names.mentioned_in(text) or ignores_file(text):
        return FileFacts(())
    try:
        tree = ast.parse(text, filename=display)
    except SyntaxError as exc:
        raise SourceError(
            f"line {exc.lineno or 0}: syntax error: {exc.msg}; kvguard analyzes only valid Python"
        ) from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise SourceError(f"cannot parse: {type(exc).__name__}: {exc}") from None
    return scan(tree, display, names, text)


def lint_source(
    text: str,
    display: str,
    config: Config,
    index: ProjectIndex,
    severities: dict[str, str],
    facts: FileFacts | None = None,
) -> list[Finding]:
    """Stage 4 for one file: libcst parses, rules, positions, suppressions.

    With ``facts`` (from ``scan_source``) libcst parses only the units the ast pass kept;
    without, the whole module (what a fix needs). Both find the same.
    """
    from libcst.metadata import PositionProvider

    from kvguard.lint.checker import collect, collect_units
    from kvguard.lint.positions import PositionWrapper
    from kvguard.lint.rules import run_rules
    from kvguard.lint.snippets import SnippetError, Snippets

    names = kv_names(config)
    if facts is not None:
        snippets = Snippets(text)
        try:
            model = collect_units(snippets, facts, display, names, index)
        except SnippetError as exc:
            raise SourceError(f"line {exc.line}: libcst cannot parse this file: {exc}") from None
        reports = run_rules(model, index)
        return _findings(reports, model, index, snippets.position, text, config, severities)
    wrapper = PositionWrapper(parse_whole_module(text), unsafe_skip_copy=True)
    model = collect(wrapper.module, display, names, index)
    reports = run_rules(model, index)
    if not reports:
        return []
    positions = wrapper.resolve(PositionProvider)
    return _findings(reports, model, index, positions.__getitem__, text, config, severities)


def parse_whole_module(text: str) -> Module:
    """libcst's tree of a whole file, or SourceError with the line that stops it."""
    import libcst as cst

    try:
        return cst.parse_module(text)
    except cst.ParserSyntaxError as exc:
        raise SourceError(
            f"line {exc.raw_line}: libcst cannot parse this file: {exc.message}"
        ) from None
    except RecursionError:
        raise SourceError("cannot parse: nesting too deep for libcst") from None


def _findings(
    reports: list[Report],
    model: FileModel,
    index: ProjectIndex,
    position: Callable[[CSTNode], CodeRange],
    text: str,
    config: Config,
    severities: dict[str, str],
) -> list[Finding]:
    if not reports:
        return []
    display = model.path
    suppressions = line_suppressions(text)
    fixes, withheld = (
        fix_plan(model, index, position, suppressions)
        if any(code in FIXABLE for _, code, _ in reports)
        else ({}, {})
    )
    findings = []
    for node, code, message in reports:
        span = position(node)
        line = span.start.line
        if not config.enabled(code, display) or is_suppressed(suppressions, line, code):
            continue
        findings.append(
            Finding(
                path=display,
                line=line,
                column=span.start.column + 1,
                end_line=span.end.line,
                end_column=span.end.column + 1,
                code=code,
                severity=severities.get(code, "error"),
                message=_with_fix_note(
                    message, withheld.get(id(node)) if code in FIXABLE else None
                ),
                fix=fixes.get(id(node)) if code in FIXABLE else None,
            )
        )
    return sorted(set(findings))


FIXABLE = ("KVG001", "KVG004")


def _with_fix_note(message: str, withheld: str | None) -> str:
    return f"{message}; no automatic fix: {withheld}" if withheld else message


def fix_plan(
    model: FileModel,
    index: ProjectIndex,
    position: Callable[[CSTNode], CodeRange],
    suppressions: dict[int, frozenset[str] | None],
) -> tuple[dict[int, FixInfo], dict[int, str]]:
    """The fix each KVG001/KVG004 anchor offers, or why none is (lint/fixability.py).

    It works on the model the rules saw (snippets in a check), so it costs no parse.
    """
    from kvguard.lint.fixability import plan_file

    def reported(node: CSTNode) -> bool:
        return not is_suppressed(suppressions, position(node).start.line, "KVG001")

    return plan_file(model, index, reported).info()


# -- worker-side tasks (module level so that they pickle) -------------------------------

_WORKER: dict[str, object] = {}


def _init_worker(state: bytes) -> None:
    _WORKER.update(pickle.loads(state))


def _scan_task(
    item: tuple[str, str],
) -> tuple[str, Stamp, int, str, FileFacts | None, FileError | None, str | None]:
    display, real = item
    names: KvNames = _WORKER["names"]  # type: ignore[assignment]
    seen = time.time_ns()  # before the stat: see cache.Stamp.proves
    try:
        stamp = Stamp.of(os.stat(real))
        data, text = read_source(real)
    except SourceError as exc:
        return real, Stamp.unread(), seen, "", None, FileError(display, str(exc)), None
    except OSError as exc:
        error = FileError(display, f"cannot read: {exc.strerror or exc}")
        return real, Stamp.unread(), seen, "", None, error, None
    digest = content_hash(data) if _WORKER["hash"] else ""  # only the cache needs it
    try:
        facts = scan_source(text, display, names)
    except SourceError as exc:
        return real, stamp, seen, digest, None, FileError(display, str(exc)), None
    return real, stamp, seen, digest, facts, None, text if facts.candidate else None


def _lint_task(
    item: tuple[str, str, str | None, FileFacts, str, bytes | None],
) -> tuple[str, list[Finding], FileError | None]:
    display, real, text, facts, key, index_bytes = item
    if _WORKER.get("index_key") != key:  # the index travels once per worker, not per file
        _WORKER["index"] = pickle.loads(index_bytes)  # type: ignore[arg-type]
        _WORKER["index_key"] = key
    if text is None:
        try:
            _, text = read_source(real)
        except SourceError as exc:
            return real, [], FileError(display, str(exc))
    try:
        findings = lint_source(
            text,
            display,
            _WORKER["config"],  # type: ignore[arg-type]
            _WORKER["index"],  # type: ignore[arg-type]
            _WORKER["severities"],  # type: ignore[arg-type]
            facts,
        )
    except SourceError as exc:
        return real, [], FileError(display, str(exc))
    return real, findings, None


class _Workers:
    """Runs tasks here, or in worker processes when there are enough of them to pay for the
    processes.

    Where processes fork, each stage forks a fresh pool: the scan's before libcst is
    imported, so that the workers start at once while this process imports it; the lint's
    after the index is built, so that the workers inherit libcst and the index.
    """

    def __init__(self, jobs: int, state: dict[str, object]) -> None:
        self.jobs = jobs
        self.state = state
        self.forks = os.name == "posix"
        self.pool: ProcessPoolExecutor | None = None
        _WORKER.clear()
        _WORKER.update(state)

    def parallel(self, count: int) -> bool:
        return self.jobs > 1 and count >= _PARALLEL_MIN

    def map(self, task: Callable, items: list, chunksize: int = 0) -> Iterable:
        if not self.parallel(len(items)):
            return map(task, items)
        import multiprocessing

        self.close()
        # forked workers inherit the state; spawned ones get it pickled
        self.pool = ProcessPoolExecutor(
            max_workers=self.jobs,
            mp_context=multiprocessing.get_context("fork" if self.forks else "spawn"),
            initializer=None if self.forks else _init_worker,
            initargs=() if self.forks else (pickle.dumps(self.state),),
        )
        chunk = chunksize or max(1, len(items) // (self.jobs * 16))
        return self.pool.map(task, items, chunksize=chunk)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


def _import_lint_stage() -> None:
    import kvguard.lint.checker
    import kvguard.lint.fixability
    import kvguard.lint.rules  # noqa: F401


def build_index(facts: dict[str, FileFacts | None], config: Config) -> ProjectIndex:
    """The project index over every file's facts (by display path, in discovery order)."""
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


def check(
    paths: list[str],
    config: Config,
    *,
    use_cache: bool = True,
    jobs: int | None = None,
    progress: Progress | None = None,
    severities: dict[str, str] | None = None,
) -> Result:
    jobs = jobs or os.cpu_count() or 1
    sources, errors = discover(paths, config)
    result = Result(errors=list(errors), files=len(sources))
    names = kv_names(config)
    if severities is None:
        from kvguard.catalog import load_catalog

        severities = {code: rule.severity for code, rule in load_catalog().items()}
    cache_path = cache_file(CACHE_VERSION, config.digest(), paths) if use_cache else None
    store = Store(cache_path, CACHE_VERSION)
    found: dict[str, Entry] = {}
    texts: dict[str, str] = {}

    todo = []
    for source in sources:
        entry = store.unchanged(source.real)
        if entry is None:
            todo.append((source.display, source.real))
        else:
            found[source.real] = entry
    done = len(sources) - len(todo)
    if progress:
        progress(done, len(sources))
    workers = _Workers(
        jobs,
        {"names": names, "config": config, "severities": severities, "hash": use_cache},
    )
    try:
        scanned = workers.map(_scan_task, todo)
        if workers.pool is not None and workers.forks:
            _import_lint_stage()  # while the workers scan; the lint workers inherit it
        for real, stamp, seen, digest, facts, error, text in scanned:
            found[real] = store.refreshed(real, stamp, seen, digest, facts, error)
            if text is not None:
                texts[real] = text
            done += 1
            if progress:
                progress(done, len(sources))
        # in discovery order, whatever came from the cache: the index must not depend on it
        entries = {s.real: found[s.real] for s in sources}
        by_path = {s.display: entries[s.real].facts for s in sources}
        index = build_index(by_path, config)
        result.index = index
        key = index_key(e.facts for e in entries.values() if e.facts)
        divergent = {d.backend.path for d in index.divergences()}

        lint_todo = []
        for source in sources:
            entry = entries[source.real]
            if entry.error is not None or entry.facts is None:
                continue
            if not (entry.facts.candidate or source.display in divergent):
                entry.findings, entry.index_key = (), key
            elif entry.findings is None or entry.index_key != key:
                lint_todo.append((source.display, source.real, texts.get(source.real), entry.facts))
        _WORKER.update(index=index, index_key=key)
        # spawned workers need the index pickled (once per worker); forked ones inherit it
        spawns = workers.parallel(len(lint_todo)) and not workers.forks
        shipped = pickle.dumps(index) if spawns else None
        # the largest first, so that the workers finish together
        lint_todo.sort(key=lambda item: -_unit_lines(item[3]))
        tasks = [(*item, key, shipped) for item in lint_todo]
        for real, findings, error in workers.map(_lint_task, tasks, chunksize=1):
            entry = entries[real]
            entry.findings, entry.index_key = tuple(findings), key
            if error is not None:
                entry.error = error
            result.parsed += 1
    finally:
        workers.close()

    for source in sources:
        entry = entries[source.real]
        if entry.error is not None:
            result.errors.append(entry.error)
        elif entry.findings:
            display = source.display
            result.findings.extend(
                f if f.path == display else _relocate(f, display) for f in entry.findings
            )
    store.save(entries)
    result.findings.sort()
    result.errors.sort()
    return result


def _unit_lines(facts: FileFacts) -> int:
    return sum(end - start + 1 for unit in facts.units for start, end in unit.spans)


def _relocate(finding: Finding, display: str) -> Finding:
    from dataclasses import replace

    return replace(finding, path=display)
