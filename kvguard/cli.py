"""``kvguard check``, ``kvguard rule CODE``, ``kvguard rules``, ``kvguard report DIR``.

Exit codes, as ruff: 0 clean, 1 findings, 2 usage error or a path that could not be analyzed.
Nothing heavy is imported before it is needed: pre-commit runs this on every commit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from kvguard import __version__
from kvguard.interrupt import Interrupted, deferred, exit_if_stuck, handled

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


def _codes(text: str) -> tuple[str, ...]:
    return tuple(c.strip().upper() for c in text.split(",") if c.strip())


FORMATS = ["full", "concise", "text", "json", "sarif", "github"]  # text: full, as before


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvguard",
        description="Find KV-cache splits that assume a layout other layers may not share.",
    )
    parser.add_argument("--version", action="version", version=f"kvguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = sub.add_parser("check", help="analyze Python files or directories")
    check.add_argument(
        "paths", nargs="*", metavar="PATH", help="files or directories (default: .); - is stdin"
    )
    check.add_argument(
        "--output-format",
        "--format",
        dest="format",
        default="full",
        choices=FORMATS,
        help="full (source and explanation), concise (one line each), json, sarif, github",
    )
    # repeated flags accumulate, as ruff's do
    check.add_argument(
        "--select",
        type=_codes,
        action="extend",
        help="comma-separated codes or prefixes to enable",
    )
    check.add_argument("--extend-select", type=_codes, action="extend")
    check.add_argument(
        "--ignore",
        type=_codes,
        action="extend",
        help="comma-separated codes or prefixes to disable",
    )
    check.add_argument("--config", type=Path, help="settings file (pyproject.toml or kvguard.toml)")
    check.add_argument(
        "--stdin-filename", metavar="PATH", help="read the source from stdin, checked as PATH"
    )
    check.add_argument(
        "--force-exclude",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="apply exclude patterns to files named on the command line too",
    )
    check.add_argument(
        "--respect-gitignore",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="skip files that git ignores (default: on)",
    )
    check.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    check.add_argument("--statistics", action="store_true", help="count findings per rule")
    check.add_argument("--exit-zero", action="store_true", help="exit 0 even with findings")
    check.add_argument(
        "--exit-non-zero-on-fix",
        action="store_true",
        help="exit 1 if --fix changed a file, even if no finding remains",
    )
    check.add_argument("--jobs", "-j", type=int, default=None, help="worker processes")
    check.add_argument("--no-progress", action="store_true")
    check.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    check.add_argument("--output-file", "-o", type=Path, help="write the report here")
    quiet = check.add_mutually_exclusive_group()
    quiet.add_argument(
        "--quiet", "-q", action="store_true", help="print findings and errors, nothing else"
    )
    quiet.add_argument(
        "--silent", "-s", action="store_true", help="print nothing; only the exit code tells"
    )
    check.add_argument("--fix", action="store_true", help="apply safe fixes in place")
    check.add_argument(
        "--diff", action="store_true", help="print the fixes as a unified diff; write nothing"
    )
    check.add_argument(
        "--unsafe-fixes", action="store_true", help="also apply (or show) unsafe fixes"
    )
    check.add_argument(
        "--show-fixes",
        action="store_true",
        help="with --fix or --diff: list the fixes per file and rule",
    )

    rule = sub.add_parser("rule", help="print a rule's documentation")
    rule.add_argument("code")
    rules = sub.add_parser("rules", help="list the rules")
    rules.add_argument("--format", choices=["text", "json"], default="text")

    report = sub.add_parser("report", help="merge and render the runtime guard's KVGUARD_REPORT")
    report.add_argument("directory", type=Path, metavar="DIR")
    report.add_argument("--format", choices=["text", "json"], default="text")
    report.add_argument(
        "--svg", type=Path, help="also draw the report as SVG (a .html name: an HTML page)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    import gc

    # A short-lived process that builds many syntax trees: the cyclic collector would
    # only rescan them (it costs about half of a cold run); memory is returned at exit.
    gc.disable()
    from kvguard.output import OutputError

    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with handled():
            return _command(parser, args)
    except Interrupted as stop:  # SIGINT or SIGTERM: workers are gone, nothing half-written
        with contextlib.suppress(OSError):
            print(f"kvguard: stopped by {stop}", file=sys.stderr)
        exit_if_stuck(stop.exit_code)
        return stop.exit_code
    except KeyboardInterrupt:  # not in the main thread: no handler was installed
        return 130
    except BrokenPipeError:  # `kvguard check | head`: the reader left
        return EXIT_ERROR
    except OutputError as exc:  # -o or --svg: one line, never a traceback (exit 1 is "findings")
        return _fail(str(exc))


def _command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "check":
        return _check(args)
    if args.command == "rule":
        return _rule(args.code)
    if args.command == "rules":
        return _rules(args.format)
    if args.command == "report":
        return _report(args)
    parser.print_help()
    return EXIT_ERROR


def _fail(message: str) -> int:
    print(f"kvguard: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _warn(args: argparse.Namespace, message: str) -> None:
    if not (args.quiet or args.silent):
        print(f"kvguard: warning: {message}", file=sys.stderr)


def _load_config(args: argparse.Namespace, first: str, known: frozenset[str]):  # type: ignore[no-untyped-def]
    from kvguard.config import find_config, load_config

    path = args.config
    if path is None:
        start = Path(first)
        if not start.exists():
            start = start.parent if start.parent.exists() else Path.cwd()
        path = find_config(start)
    config = load_config(path, known)
    if args.select is not None:
        config = replace(config, select=tuple(args.select))
    if args.extend_select:
        config = replace(config, select=(*config.select, *args.extend_select))
    if args.ignore is not None:
        config = replace(config, ignore=(*config.ignore, *args.ignore))
    if args.force_exclude is not None:
        config = replace(config, force_exclude=args.force_exclude)
    if args.respect_gitignore is not None:
        config = replace(config, respect_gitignore=args.respect_gitignore)
    return config


def _unknown_selector(args: argparse.Namespace, known: frozenset[str]) -> str | None:
    from kvguard.config import is_selector

    for code in (*(args.select or ()), *(args.extend_select or ()), *(args.ignore or ())):
        if not is_selector(code, known):
            return f"unknown rule selector {code!r}; `kvguard rules` lists the codes"
    return None


def _stdin_request(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(the name stdin is checked as, or None; a usage error, or None)."""
    paths = args.paths
    if STDIN in paths or (args.stdin_filename is not None and not paths):
        if len(paths) > 1:
            return None, "`-` (stdin) cannot be combined with other paths"
        return args.stdin_filename or STDIN, None
    if args.stdin_filename is not None:  # as ruff: the text on stdin wins over the paths
        for path in paths:
            _warn(args, f"ignoring file {path} in favor of standard input (--stdin-filename)")
        return args.stdin_filename, None
    return None, None


STDIN = "-"


def _check(args: argparse.Namespace) -> int:
    from kvguard.catalog import CatalogError, load_catalog
    from kvguard.config import ConfigError
    from kvguard.engine import RuleSet, check
    from kvguard.project import find_project, first_path

    stdin_name, problem = _stdin_request(args)
    if problem:
        return _fail(problem)
    if args.output_file is not None:  # before any work (or any --fix) is done
        from kvguard.output import check_writable

        check_writable(args.output_file)
    paths = [] if stdin_name is not None else (args.paths or ["."])
    first = first_path(paths, stdin_name)
    try:
        catalog = load_catalog()
        config = _load_config(args, first, frozenset(catalog))
    except (ConfigError, CatalogError) as exc:
        return _fail(str(exc))
    problem = _unknown_selector(args, frozenset(catalog))  # the file's were checked on load
    if problem:
        return _fail(problem)
    if args.jobs is not None and args.jobs < 1:
        return _fail("--jobs must be at least 1")
    if args.show_fixes and not (args.fix or args.diff):
        _warn(args, "--show-fixes lists what --fix or --diff fixes; add one of them")
    stdin = None
    if stdin_name is not None:
        stdin, problem = _read_stdin(stdin_name)
        if problem:
            return _report_stdin_error(args, stdin_name, problem)

    stream = sys.stdout
    color = args.color == "always" or (
        args.color == "auto"
        and args.output_file is None
        and stream.isatty()
        and "NO_COLOR" not in os.environ
    )
    progress = None
    if not (args.no_progress or args.quiet or args.silent) and sys.stderr.isatty():
        progress = _progress_bar()
    rules = RuleSet.of(catalog)
    project = find_project(first, config.source or None)
    try:
        result = check(
            paths,
            config,
            use_cache=not args.no_cache,
            jobs=args.jobs,
            progress=progress,
            project=project,
            stdin=stdin,
            rules=rules,
        )
    except Exception as exc:  # the per-file net caught nothing: a bug outside any one file
        from kvguard.engine import internal_error

        return _fail(internal_error("kvguard", exc).message)
    finally:
        if progress is not None:
            progress.close()  # type: ignore[attr-defined]
    if not result.files and not result.errors and not _textual(args):
        _warn(args, "no Python files found under the given paths")  # text says it itself
    _hint_unseen_bases(args, result)
    if stdin is not None and (args.fix or args.diff):
        return _fix_stdin(args, result, config, rules, catalog, color, stdin)
    if args.fix or args.diff:
        return _fix(args, result, config, rules, catalog, color)

    _emit(_render(result, args, catalog, color), args, color and _textual(args))
    return _exit_code(args, result, changed=False)


def _hint_unseen_bases(args: argparse.Namespace, result) -> None:  # type: ignore[no-untyped-def]
    """Once per run: a backend's base that no project root let the index see."""
    if args.quiet or args.silent:
        return
    from kvguard.hints import unseen_bases_hint

    hint = unseen_bases_hint(result.index, result.root)
    if hint:
        print(f"kvguard: hint: {hint}", file=sys.stderr)


def _textual(args: argparse.Namespace) -> bool:
    return args.format in ("full", "concise", "text")


def _exit_code(args: argparse.Namespace, result, changed: bool) -> int:  # type: ignore[no-untyped-def]
    if result.errors:
        return EXIT_ERROR
    if result.findings and not args.exit_zero:
        return EXIT_FINDINGS
    if changed and args.exit_non_zero_on_fix:
        return EXIT_FINDINGS
    return EXIT_CLEAN


def _read_stdin(name: str):  # type: ignore[no-untyped-def]
    """(Stdin, None), or (None, the reason it is not Python source)."""
    from kvguard.engine import Stdin
    from kvguard.files import SourceError, decode_source

    data = sys.stdin.buffer.read()
    try:
        return Stdin(decode_source(data), name), None
    except SourceError as exc:
        return None, exc


def _report_stdin_error(args: argparse.Namespace, name: str, exc) -> int:  # type: ignore[no-untyped-def]
    from kvguard.catalog import load_catalog
    from kvguard.engine import Result

    result = Result(errors=[exc.error(name)], files=0)  # not checked: it is no Python text
    _emit(_render(result, args, load_catalog(), False), args, False)
    return EXIT_ERROR


def _render(result, args, catalog, color: bool) -> str:  # type: ignore[no-untyped-def]
    """The report in the --output-format asked for (each renderer imported only when used)."""
    if args.format == "json":
        from kvguard.report.as_json import render

        return render(result)
    if args.format == "sarif":
        from kvguard.report.as_sarif import render

        return render(result, catalog)
    if args.format == "github":
        from kvguard.report.as_github import render

        return render(result, catalog)
    from kvguard.report.as_text import TextOptions, render

    options = TextOptions(
        full=args.format != "concise",
        statistics=args.statistics,
        color=color,
        unsafe=args.unsafe_fixes,
        quiet=args.quiet,
    )
    return render(result, catalog, options)


def _fix(args, result, config, rules, catalog, color) -> int:  # type: ignore[no-untyped-def]
    """--fix / --diff: rewrite (or show), then report what remains, like ruff."""
    from dataclasses import replace as with_changes

    from kvguard.fix.apply import fix

    outcome = fix(
        result,
        config,
        result.index,
        unsafe=args.unsafe_fixes,
        write=args.fix and not args.diff,
        severities=rules.severities,
    )
    remaining = with_changes(outcome.result, fixed=outcome.fixed)
    verb = "Would fix" if args.diff else "Fixed"
    n, m = outcome.fixed, len(remaining.findings)
    line = f"{verb} {n} finding{'s' if n != 1 else ''} ({m} remaining)."
    shown = _shown_fixes(args, outcome.files, catalog, verb)
    if args.diff:
        diff = outcome.diff()
        if diff and not args.silent:
            sys.stdout.write(diff)
        if not args.silent:
            for error in remaining.errors:
                print(f"{error.located()}: error: {error.message}", file=sys.stderr)
            if shown:
                print(shown, file=sys.stderr)
            if not args.quiet:
                print(line, file=sys.stderr)
        if remaining.errors:
            return EXIT_ERROR
        return EXIT_FINDINGS if diff else EXIT_CLEAN
    text = _render(remaining, args, catalog, color)
    if _textual(args):
        parts = [text] if text else []
        if shown:
            parts.append(shown)
        if not args.quiet:
            parts.append(line)
        text = "\n".join(parts)
    _emit(text, args, color and _textual(args))
    return _exit_code(args, remaining, changed=bool(outcome.files))


def _fixes_listing(files, catalog, verb: str) -> str:  # type: ignore[no-untyped-def]
    """ruff's --show-fixes: per file, how many findings of each rule were fixed."""
    from collections import Counter

    lines = []
    total = 0
    for file_fix in sorted(files, key=lambda f: f.display):
        fixed = Counter(f.code for f in file_fix.before) - Counter(f.code for f in file_fix.after)
        if not fixed:
            continue
        lines.append(f"- {file_fix.display}:")
        for code, count in sorted(fixed.items()):
            name = catalog[code].name if code in catalog else ""
            lines.append(f"    {count} \u00d7 {code} ({name})")
            total += count
    if not lines:
        return ""
    return "\n".join([f"{verb} {total} finding{'s' if total != 1 else ''}:", *lines])


def _shown_fixes(args: argparse.Namespace, files, catalog, verb: str) -> str:  # type: ignore[no-untyped-def]
    """The --show-fixes listing. Nothing fixed: the count line says so in one line, and
    only under --quiet (which drops that line) does the listing say it instead."""
    if not args.show_fixes:
        return ""
    listing = _fixes_listing(files, catalog, verb)
    if listing or not args.quiet:
        return listing
    return f"No findings {'would be ' if verb == 'Would fix' else ''}fixed."


def _fix_stdin(args, result, config, rules, catalog, color, stdin) -> int:  # type: ignore[no-untyped-def]
    """--fix on stdin (what editors ask for): the fixed source on stdout, what remains on
    stderr, as ruff does. --diff (what review bots ask for): the diff instead."""
    from dataclasses import replace as with_changes

    from kvguard.engine import lint_source
    from kvguard.fix.apply import applicable, fix_source
    from kvguard.fix.writer import FixError

    text = stdin.text
    wanted = any(applicable(f, args.unsafe_fixes) for f in result.findings)
    remaining = result
    fixed = 0
    if wanted and not result.errors:
        display = result.findings[0].path
        try:
            new_text = fix_source(text, display, config, result.index, unsafe=args.unsafe_fixes)
        except FixError as exc:
            from kvguard.findings import FileError

            remaining = with_changes(
                result, errors=[*result.errors, FileError(display, f"not fixed: {exc}")]
            )
        else:
            after = lint_source(new_text, display, config, result.index, rules.severities)
            fixed = len(result.findings) - len(after)
            remaining = with_changes(result, findings=after)
            text = new_text
    if args.diff:
        return _diff_stdin(args, stdin, text, result, with_changes(remaining, fixed=fixed), catalog)
    sys.stdout.write(text)
    sys.stdout.flush()
    remaining = with_changes(remaining, fixed=fixed)
    report = _render(remaining, args, catalog, False)
    if not args.silent and report:
        sys.stderr.write(report + "\n")
    return _exit_code(args, remaining, changed=fixed > 0)


def _diff_stdin(args, stdin, new_text: str, before, remaining, catalog) -> int:  # type: ignore[no-untyped-def]
    """--diff on stdin: the fixes as a diff of the stdin name on stdout, written nowhere;
    what remains on stderr; exit 1 when there is a diff, as for files."""
    from kvguard.fix.apply import FileFix
    from kvguard.fix.source import SourceText

    source = SourceText(data=b"", text=stdin.text, newline="\n", bom=False, encoding="utf-8")
    file_fix = FileFix(stdin.name, source, new_text, before.findings, remaining.findings)
    diff = file_fix.diff() if new_text != stdin.text else ""
    if not args.silent:
        sys.stdout.write(diff)
        sys.stdout.flush()
        for error in remaining.errors:
            print(f"{error.located()}: error: {error.message}", file=sys.stderr)
        shown = _shown_fixes(args, [file_fix] if diff else [], catalog, "Would fix")
        if shown:
            print(shown, file=sys.stderr)
        if not args.quiet:
            n, m = remaining.fixed, len(remaining.findings)
            print(f"Would fix {n} finding{'s' if n != 1 else ''} ({m} remaining).", file=sys.stderr)
    if remaining.errors:
        return EXIT_ERROR
    return EXIT_FINDINGS if diff else EXIT_CLEAN


def _emit(text: str, args: argparse.Namespace, color: bool) -> None:
    output: Path | None = args.output_file
    if output is not None:  # a report asked for, even with --silent
        from kvguard.output import write_text

        with deferred():  # a signal does not cut the report in half
            write_text(output, text + "\n" if text else "")
    elif args.silent:
        return
    elif color:
        from rich.console import Console

        Console(highlight=False, soft_wrap=True, force_terminal=True).print(text)
    elif text:
        sys.stdout.write(text + "\n")


class _progress_bar:
    """A rich progress bar on stderr, shown only for trees large enough to wait on."""

    MIN_FILES = 200

    def __init__(self) -> None:
        self._bar = None
        self._task = None

    def __call__(self, done: int, total: int) -> None:
        if total < self.MIN_FILES:
            return
        if self._bar is None:
            from rich.console import Console
            from rich.progress import Progress

            self._bar = Progress(console=Console(stderr=True), transient=True)
            self._bar.start()
            self._task = self._bar.add_task("kvguard: scanning", total=total)
        self._bar.update(self._task, completed=done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _rule(code: str) -> int:
    from kvguard.catalog import find_rule, load_catalog

    catalog = load_catalog()
    rule = find_rule(catalog, code)
    if rule is None:
        return _fail(f"unknown rule {code!r}; `kvguard rules` lists the codes")
    sys.stdout.write(rule.doc())
    return EXIT_CLEAN


def _rules(fmt: str) -> int:
    from kvguard.catalog import load_catalog

    catalog = load_catalog()
    if fmt == "json":
        import json

        data = [
            {"code": r.code, "name": r.name, "severity": r.severity, "summary": r.summary}
            for r in catalog.values()
        ]
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return EXIT_CLEAN
    for rule in catalog.values():
        sys.stdout.write(f"{rule.code}  {rule.name:<36} {rule.severity:<8} {rule.summary}\n")
    return EXIT_CLEAN


def _write_svg(merged: dict[str, Any], path: Path) -> None:
    """--svg: the drawing (a .html name: a page), written whole or not at all."""
    from kvguard.output import write_atomically
    from kvguard.runtime.svg import write_drawing

    with deferred():  # a signal does not cut the drawing in half either
        write_atomically(path, lambda name: write_drawing(merged["processes"], name))


def _report(args: argparse.Namespace) -> int:
    """Exit 0 when no process saw a violation, 1 when one did, 2 for unreadable input."""
    from kvguard.runtime.merge import ReportError, load_reports, merge

    try:
        merged = merge(load_reports(args.directory))
    except ReportError as exc:
        return _fail(str(exc))
    if args.svg is not None:
        from kvguard.output import check_writable

        check_writable(args.svg)  # before anything is printed
    if args.format == "json":
        import json

        sys.stdout.write(json.dumps(merged, indent=1) + "\n")
    else:
        from kvguard.runtime.merge import show

        show(merged)
    if args.svg is not None:
        _write_svg(merged, args.svg)
    totals = merged["totals"]
    return (
        EXIT_FINDINGS if totals["violations"] or totals["connector_load_mismatches"] else EXIT_CLEAN
    )
