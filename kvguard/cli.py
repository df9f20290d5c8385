"""``kvguard check``, ``kvguard rule CODE``, ``kvguard rules``, ``kvguard report DIR``.

Exit codes, as ruff: 0 clean, 1 findings, 2 usage error or a path that could not be analyzed.
Nothing heavy is imported before it is needed: pre-commit runs this on every commit.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from kvguard import __version__

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


def _codes(text: str) -> tuple[str, ...]:
    return tuple(c.strip().upper() for c in text.split(",") if c.strip())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvguard",
        description="Find KV-cache splits that assume a layout other layers may not share.",
    )
    parser.add_argument("--version", action="version", version=f"kvguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = sub.add_parser("check", help="analyze Python files or directories")
    check.add_argument("paths", nargs="*", default=["."], metavar="PATH")
    check.add_argument(
        "--format",
        "--output-format",
        dest="format",
        default="text",
        choices=["text", "json", "sarif", "github"],
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
    check.add_argument("--config", type=Path, help="pyproject.toml (or kvguard.toml) to read")
    check.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    check.add_argument("--statistics", action="store_true", help="count findings per rule")
    check.add_argument("--exit-zero", action="store_true", help="exit 0 even with findings")
    check.add_argument("--jobs", "-j", type=int, default=None, help="worker processes")
    check.add_argument("--no-progress", action="store_true")
    check.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    check.add_argument("--output-file", "-o", type=Path, help="write the report here")
    check.add_argument("--fix", action="store_true", help="apply safe fixes in place")
    check.add_argument(
        "--diff", action="store_true", help="print the fixes as a unified diff; write nothing"
    )
    check.add_argument(
        "--unsafe-fixes", action="store_true", help="also apply (or show) unsafe fixes"
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
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "rule":
            return _rule(args.code)
        if args.command == "rules":
            return _rules(args.format)
        if args.command == "report":
            return _report(args)
    except KeyboardInterrupt:
        return 130
    parser.print_help()
    return EXIT_ERROR


def _fail(message: str) -> int:
    print(f"kvguard: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _load_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from kvguard.config import find_pyproject, load_config

    path = args.config
    if path is None:
        first = Path(args.paths[0]) if args.paths else Path.cwd()
        path = find_pyproject(first if first.exists() else Path.cwd())
    config = load_config(path)
    if args.select is not None:
        config = replace(config, select=tuple(args.select))
    if args.extend_select:
        config = replace(config, select=(*config.select, *args.extend_select))
    if args.ignore is not None:
        config = replace(config, ignore=(*config.ignore, *args.ignore))
    return config


def _check(args: argparse.Namespace) -> int:
    from kvguard.catalog import CatalogError, load_catalog
    from kvguard.config import ConfigError
    from kvguard.engine import check

    try:
        config = _load_config(args)
        catalog = load_catalog()
    except (ConfigError, CatalogError) as exc:
        return _fail(str(exc))
    for code in (*config.select, *config.ignore):
        if code != "ALL" and not any(c.startswith(code) for c in catalog):
            return _fail(f"unknown rule selector {code!r}; `kvguard rules` lists the codes")
    if args.jobs is not None and args.jobs < 1:
        return _fail("--jobs must be at least 1")

    stream = sys.stdout
    color = args.color == "always" or (
        args.color == "auto"
        and args.output_file is None
        and stream.isatty()
        and "NO_COLOR" not in os.environ
    )
    progress = None
    if not args.no_progress and sys.stderr.isatty():
        progress = _progress_bar()
    severities = {code: rule.severity for code, rule in catalog.items()}
    try:
        result = check(
            args.paths,
            config,
            use_cache=not args.no_cache,
            jobs=args.jobs,
            progress=progress,
            severities=severities,
        )
    finally:
        if progress is not None:
            progress.close()  # type: ignore[attr-defined]
    if args.fix or args.diff:
        return _fix(args, result, config, severities, catalog, color)

    _emit(_render(result, args, catalog, color), args.output_file, color and args.format == "text")
    if result.errors:
        return EXIT_ERROR
    if result.findings and not args.exit_zero:
        return EXIT_FINDINGS
    return EXIT_CLEAN


def _render(result, args, catalog, color: bool) -> str:  # type: ignore[no-untyped-def]
    """The report in the --format asked for (each renderer imported only when used)."""
    if args.format == "json":
        from kvguard.report.as_json import render

        return render(result)
    if args.format == "sarif":
        from kvguard.report.as_sarif import render

        return render(result, catalog)
    if args.format == "github":
        from kvguard.report.as_github import render

        return render(result, catalog)
    from kvguard.report.as_text import render

    return render(result, catalog, args.statistics, color, args.unsafe_fixes)


def _fix(args, result, config, severities, catalog, color) -> int:  # type: ignore[no-untyped-def]
    """--fix / --diff: rewrite (or show), then report what remains, like ruff."""
    from dataclasses import replace as with_changes

    from kvguard.fix.apply import fix

    outcome = fix(
        result,
        config,
        result.index,
        unsafe=args.unsafe_fixes,
        write=args.fix and not args.diff,
        severities=severities,
    )
    remaining = with_changes(outcome.result, fixed=outcome.fixed)
    verb = "Would fix" if args.diff else "Fixed"
    n, m = outcome.fixed, len(remaining.findings)
    line = f"{verb} {n} finding{'s' if n != 1 else ''} ({m} remaining)."
    if args.diff:
        diff = outcome.diff()
        if diff:
            sys.stdout.write(diff)
        for error in remaining.errors:
            print(f"{error.path}: error: {error.message}", file=sys.stderr)
        print(line, file=sys.stderr)
        if remaining.errors:
            return EXIT_ERROR
        return EXIT_FINDINGS if diff else EXIT_CLEAN
    text = _render(remaining, args, catalog, color)
    if args.format == "text":
        text = f"{text}\n{line}"
    _emit(text, args.output_file, color and args.format == "text")
    if remaining.errors:
        return EXIT_ERROR
    if remaining.findings and not args.exit_zero:
        return EXIT_FINDINGS
    return EXIT_CLEAN


def _emit(text: str, output: Path | None, color: bool) -> None:
    if output is not None:
        output.write_text(text + "\n", encoding="utf-8")
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


def _report(args: argparse.Namespace) -> int:
    """Exit 0 when no process saw a violation, 1 when one did, 2 for unreadable input."""
    from kvguard.runtime.merge import ReportError, load_reports, merge

    try:
        merged = merge(load_reports(args.directory))
    except ReportError as exc:
        return _fail(str(exc))
    if args.format == "json":
        import json

        sys.stdout.write(json.dumps(merged, indent=1) + "\n")
    else:
        from kvguard.runtime.merge import show

        show(merged, args.svg)
    return EXIT_FINDINGS if merged["totals"]["violations"] else EXIT_CLEAN
