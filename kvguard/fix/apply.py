"""``kvguard check --fix`` and ``--diff``: plan, rewrite, verify, then write or show.

The engine's own trees are not used: each file with a fixable finding is read again and
parsed whole with libcst here, its splits collected and planned exactly as the engine
did (``lint/fixability.py``), and the plan carried out by ``codemod.Fixer``. A rewritten
file must parse, and is linted again to count what remains. All files are prepared
before any is written; each write is atomic and checks that the file did not change.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field, replace

import libcst as cst
from libcst.metadata import PositionProvider

from kvguard.config import Config
from kvguard.engine import Result, kv_names, lint_source, parse_whole_module
from kvguard.files import SourceError
from kvguard.findings import SAFE, UNSAFE, FileError, Finding
from kvguard.fix.codemod import Fixer, Rewrite, imports_torch, module_binds
from kvguard.fix.writer import FixError, SourceText, read_for_fix, write_atomic
from kvguard.lint.checker import collect
from kvguard.lint.fixability import RUNTIME_SPLITTER, ClassPlan, FilePlan, plan_file
from kvguard.lint.index import ProjectIndex
from kvguard.lint.positions import PositionWrapper
from kvguard.lint.views import same_views
from kvguard.suppression import is_suppressed, line_suppressions
from kvguard.textdiff import unified_diff


@dataclass
class FileFix:
    display: str
    source: SourceText
    new_text: str
    before: list[Finding]
    after: list[Finding] = field(default_factory=list)

    @property
    def fixed(self) -> int:
        return len(self.before) - len(self.after)

    def diff(self) -> str:
        return unified_diff(  # linear in the file, unlike difflib's
            self.source.text.splitlines(keepends=True),
            self.new_text.splitlines(keepends=True),
            fromfile=f"a/{self.display}",
            tofile=f"b/{self.display}",
        )


@dataclass
class Outcome:
    result: Result  # what remains: findings after the fixes, errors including fix errors
    files: list[FileFix]
    fixed: int

    def diff(self) -> str:
        return "".join(f.diff() for f in self.files)


def applicable(finding: Finding, unsafe: bool) -> bool:
    if finding.fix is None:
        return False
    return finding.fix.applicability == SAFE or (unsafe and finding.fix.applicability == UNSAFE)


@dataclass
class _Parsed:
    module: cst.Module
    plan: FilePlan
    classes: dict[str, cst.ClassDef]
    duplicates: set[str]
    indents: dict[str, str]


def _parse_and_plan(text: str, display: str, config: Config, index: ProjectIndex) -> _Parsed:
    try:
        module = parse_whole_module(text)
    except SourceError as exc:
        raise FixError(str(exc)) from None
    wrapper = PositionWrapper(module, unsafe_skip_copy=True)
    positions = wrapper.resolve(PositionProvider)
    model = collect(module, display, kv_names(config), index)
    suppressions = line_suppressions(text)

    def reported(node: cst.CSTNode) -> bool:
        return not is_suppressed(suppressions, positions[node].start.line, "KVG001")

    plan = plan_file(model, index, reported)
    names: list[str] = []

    class _Classes(cst.CSTVisitor):
        def visit_ClassDef(self, node: cst.ClassDef) -> None:
            names.append(node.name.value)

    module.visit(_Classes())
    # the first class of each name outside functions, as the rules and the plan see them
    classes = {n: c for n in dict.fromkeys(names) if (c := model.class_def(n)) is not None}
    lines = text.splitlines()
    indents = {}
    for name, node in classes.items():
        first = node.body.body[0] if isinstance(node.body, cst.IndentedBlock) else None
        if first is not None:
            start = positions[first].start
            indents[name] = lines[start.line - 1][: start.column]
    duplicates = {n for n in names if names.count(n) > 1}
    return _Parsed(module, plan, classes, duplicates, indents)


def _rewrite(parsed: _Parsed, unsafe: bool, exclude: set[str]) -> str:
    rewrite = Rewrite(annotate=imports_torch(parsed.module))
    for name, plan in parsed.plan.classes.items():
        if plan.reason or name in exclude or name in parsed.duplicates:
            continue
        if name not in parsed.classes or name not in parsed.indents:
            continue
        node = parsed.classes[name]
        rewrite.classes[id(node)] = plan
        rewrite.class_body_indent[id(node)] = parsed.indents[name]
    if unsafe and parsed.plan.runtime:
        bound = module_binds(parsed.module, RUNTIME_SPLITTER)
        if bound != "other":
            rewrite.runtime = dict(parsed.plan.runtime)
            rewrite.add_import = bound is None
    if not rewrite.classes and not rewrite.runtime:
        return parsed.module.code
    return parsed.module.visit(Fixer(rewrite, parsed.module)).code


def _hazards(plans: dict[str, _Parsed], index: ProjectIndex) -> dict[str, set[str]]:
    """Classes whose generated splitter a subclass fixed in the same run would override.

    The planner sees existing ``_split_kv_cache`` methods only; a subclass that gets its
    own generated one in this run and inherits a routed method is caught here.
    """
    generated: dict[tuple[str, str], tuple[ClassPlan, str]] = {}
    for display, parsed in plans.items():
        for name, plan in parsed.plan.classes.items():
            if plan.generate and not plan.reason:
                generated[(name, display)] = (plan, display)
    exclude: dict[str, set[str]] = {}
    for (name, display), (plan, _) in generated.items():
        facts = index.lookup(name, near=display)
        if facts is None:
            continue
        for (sub_name, sub_display), (sub_plan, _) in generated.items():
            sub = index.lookup(sub_name, near=sub_display)
            if sub is None or sub is facts:
                continue
            chain = list(index.mro(sub))
            if facts not in chain:
                continue
            below = chain[: chain.index(facts)]
            overridden = {m for c in below for m in c.instance_methods}
            if all(m in overridden for m in plan.methods):
                continue
            if same_views(sub_plan.template, plan.template, []) is True:
                continue
            if sub_plan.template == plan.template:
                continue
            exclude.setdefault(display, set()).add(name)
    return exclude


def fix(
    result: Result,
    config: Config,
    index: ProjectIndex,
    *,
    unsafe: bool,
    write: bool,
    severities: dict[str, str],
) -> Outcome:
    by_path: dict[str, list[Finding]] = {}
    for finding in result.findings:
        by_path.setdefault(finding.path, []).append(finding)
    wanted = [p for p, fs in by_path.items() if any(applicable(f, unsafe) for f in fs)]
    errors: list[FileError] = []
    sources: dict[str, SourceText] = {}
    parsed: dict[str, _Parsed] = {}
    for display in wanted:
        try:
            sources[display] = read_for_fix(display)
            parsed[display] = _parse_and_plan(sources[display].text, display, config, index)
        except FixError as exc:
            errors.append(FileError(display, f"not fixed: {exc}"))
    exclude = _hazards(parsed, index)
    prepared: list[FileFix] = []
    for display, entry in parsed.items():
        new_text = _rewrite(entry, unsafe, exclude.get(display, set()))
        source = sources[display]
        if new_text == source.text:
            continue
        try:
            ast.parse(new_text, filename=display)
        except SyntaxError as exc:  # a kvguard bug: never write it
            errors.append(FileError(display, f"not fixed: the fix would not parse ({exc.msg})"))
            continue
        after = lint_source(new_text, display, config, index, severities)
        prepared.append(FileFix(display, source, new_text, by_path[display], after))
    done = prepared
    if write:
        done = []
        for file_fix in prepared:
            try:
                write_atomic(
                    file_fix.display, file_fix.source, file_fix.source.encode(file_fix.new_text)
                )
            except FixError as exc:
                errors.append(FileError(file_fix.display, f"not fixed: {exc}"))
            else:
                done.append(file_fix)
    changed = {f.display: f for f in done}
    findings = [f for f in result.findings if f.path not in changed]
    for file_fix in done:
        findings.extend(file_fix.after)
    remaining = replace(result, findings=sorted(findings), errors=sorted([*result.errors, *errors]))
    return Outcome(remaining, done, sum(f.fixed for f in done))


def fix_source(
    text: str, display: str, config: Config, index: ProjectIndex, *, unsafe: bool = False
) -> str:
    """The fixed text of one file's source (``text`` with "\\n" line endings)."""
    return _rewrite(_parse_and_plan(text, display, config, index), unsafe, set())
