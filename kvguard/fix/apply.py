"""``kvguard check --fix`` and ``--diff``: plan, rewrite, verify, then write or show.

The engine's own trees are not used: each file with a fixable finding is read again and
parsed whole with libcst here, its splits collected and planned exactly as the engine
did (``lint/fixability.py``), and the plan carried out by ``codemod.Fixer``. A rewritten
file must parse, and is linted again to count what remains. All files are prepared
before any is written; each write is atomic and checks that the file did not change.
"""

from __future__ import annotations

import ast
import difflib
from collections import Counter
from dataclasses import dataclass, field, replace

import libcst as cst
from libcst.metadata import PositionProvider

from kvguard.config import Config
from kvguard.engine import Result, kv_names, lint_source, parse_whole_module
from kvguard.files import SourceError
from kvguard.findings import SAFE, UNSAFE, FileError, Finding
from kvguard.fix.codemod import Fixer, Rewrite, imports_torch, module_binds
from kvguard.fix.source import FixError, SourceText, read_for_fix
from kvguard.fix.writer import write_fixed
from kvguard.lint.checker import collect
from kvguard.lint.facts import ClassFacts
from kvguard.lint.fixability import RUNTIME_SPLITTER, ClassPlan, FilePlan, plan_file
from kvguard.lint.index import ProjectIndex
from kvguard.lint.positions import PositionWrapper
from kvguard.lint.views import same_views
from kvguard.suppression import is_suppressed, line_suppressions
from kvguard.textdiff import unified_diff


def _lines(text: str) -> list[str]:
    """The lines of a "\n"-ended text with their ends (``splitlines`` would also split at
    form feeds and other separators, and a diff of those pieces would not apply)."""
    pieces = text.split("\n")
    lines = [piece + "\n" for piece in pieces[:-1]]
    return [*lines, pieces[-1]] if pieces[-1] else lines


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
            _lines(self.source.text),
            _lines(self.new_text),
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
    text: str  # the source parsed ("\n" line endings)
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
    model = collect(module, display, kv_names(config), index, text)
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
    lines = text.split("\n")  # as libcst counts lines; splitlines() also splits at "\f"
    indents = {}
    for name, node in classes.items():
        first = node.body.body[0] if isinstance(node.body, cst.IndentedBlock) else None
        if first is not None:
            start = positions[first].start
            # a form feed resets the indentation count: what follows the last one is it
            indents[name] = lines[start.line - 1][: start.column].rsplit("\f", 1)[-1]
    duplicates = {n for n, count in Counter(names).items() if count > 1}
    return _Parsed(text, module, plan, classes, duplicates, indents)


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
        return parsed.text
    fixed = parsed.module.visit(Fixer(rewrite, parsed.module)).code
    return _untouched_lines_kept(parsed.text, parsed.module.code, fixed)


def _untouched_lines_kept(original: str, regenerated: str, fixed: str) -> str:
    """``fixed`` with the original of every line the fix did not touch.

    libcst reproduces a file byte for byte except for a form feed (^L) that starts a
    statement's line (``^Lclass X:``), which it drops; the lines of its unfixed output are
    then those of the original but for those form feeds, and where the fixed output keeps
    such a line unchanged, the original line goes back.
    """
    if regenerated == original:
        return fixed
    old, new = original.split("\n"), regenerated.split("\n")
    if len(old) != len(new) or any(
        a != b and a.replace("\f", "") != b for a, b in zip(old, new, strict=True)
    ):
        raise FixError(
            "libcst does not reproduce this file byte for byte, so a fix could change lines "
            "it should not touch; fix it by hand (`kvguard check --diff` shows the fix)"
        )
    lines = fixed.split("\n")
    out: list[str] = []
    matcher = difflib.SequenceMatcher(None, new, lines, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        out.extend(old[i1:i2] if tag == "equal" else lines[j1:j2])
    return "\n".join(out)


def _hazards(plans: dict[str, _Parsed], index: ProjectIndex) -> dict[str, set[str]]:
    """Classes whose generated splitter a subclass fixed in the same run would override.

    The planner sees existing ``_split_kv_cache`` methods only; a subclass that gets its
    own generated one in this run and inherits a routed method is caught here.
    """
    # by the class the plan's name denotes in its file: (that class, the plan, its file)
    generated: dict[tuple[str, str], tuple[ClassFacts, ClassPlan, str]] = {}
    for display, parsed in plans.items():
        for name, plan in parsed.plan.classes.items():
            facts = index.lookup(name, near=display)
            if plan.generate and not plan.reason and facts is not None:
                generated[(facts.name, facts.path)] = (facts, plan, display)
    exclude: dict[str, set[str]] = {}
    for facts, plan, display in generated.values():
        for sub in index.subclasses(facts):
            if (sub.name, sub.path) not in generated:
                continue
            sub_plan = generated[(sub.name, sub.path)][1]
            below = index.lineage_below(sub, facts)
            overridden = {m for c in below for m in c.instance_methods}
            if all(m in overridden for m in plan.methods):
                continue
            if same_views(sub_plan.template, plan.template, []) is True:
                continue
            if sub_plan.template == plan.template:
                continue
            exclude.setdefault(display, set()).add(plan.name)
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
                write_fixed(
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
