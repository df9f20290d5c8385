"""Score KVG001 against the hand labels of code that is not vLLM (tests/data/plugin_labels).

    python -m tests.lint.plugin_eval [PROJECT ...]     # default: every project
    python -m tests.lint.plugin_eval --dev | --held-out | --blind

Each pinned distribution is downloaded once (``tests/plugin_sources.py``); kvguard checks its
whole package, and the findings in the labelled files are compared with the labels. The
headline figures leave out the labels their labeller marked ambiguous (they count neither
way); the second line of each project scores them too, as labelled.
"""

from __future__ import annotations

import os
import sys

from kvguard.config import Config
from kvguard.engine import check
from tests.lint.vllm_eval import Score, report
from tests.plugin_sources import Project, project_tree, projects


def flagged_sites(project: Project) -> set[tuple[str, int]]:
    """(path, line) of every KVG001 finding in the project's labelled files."""
    tree = project_tree(project)
    cwd = os.getcwd()
    os.chdir(tree)
    try:
        result = check([project.package], Config(select=("KVG001",)), use_cache=False)
    finally:
        os.chdir(cwd)
    return {(f.path, f.line) for f in result.findings if project.in_scope(f.path)}


def score(
    project: Project,
    include_ambiguous: bool = False,
    flagged: set[tuple[str, int]] | None = None,
) -> Score:
    """Findings against the labels; ambiguous labels are left out unless asked for (a finding
    on one then counts neither as true nor as false: it is not "unlabelled" either)."""
    if flagged is None:
        flagged = flagged_sites(project)
    wanted = {(x["path"], x["line"]): bool(x["label"]) for x in project.labels(include_ambiguous)}
    set_aside = {(x["path"], x["line"]) for x in project.labels()} - set(wanted)
    flagged = flagged - set_aside
    tp = sorted(f"{p}:{n}" for p, n in flagged if wanted.get((p, n)) is True)
    fp = sorted(f"{p}:{n}" for p, n in flagged if wanted.get((p, n)) is False)
    unl = sorted(f"{p}:{n}" for p, n in flagged if (p, n) not in wanted)
    fn = sorted(f"{p}:{n}" for (p, n), v in wanted.items() if v and (p, n) not in flagged)
    return Score(project.version, tp, fp, fn, unl)


def main(argv: list[str]) -> None:
    known = projects()
    if "--dev" in argv:
        chosen = [p for p in known.values() if not p.held_out]
    elif "--held-out" in argv:
        chosen = [p for p in known.values() if p.held_out]
    elif "--blind" in argv:
        chosen = [p for p in known.values() if p.blind]
    else:
        chosen = [known[name] for name in argv] if argv else list(known.values())
    for project in chosen:
        held = " (blind)" if project.blind else " (held out)" if project.held_out else ""
        flagged = flagged_sites(project)
        report(f"{project.name} {project.version}{held}", score(project, False, flagged))
        report("  with the ambiguous labels", score(project, True, flagged))


if __name__ == "__main__":
    main(sys.argv[1:])
