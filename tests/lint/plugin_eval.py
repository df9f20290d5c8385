"""Score KVG001 against the hand labels of code that is not vLLM (tests/data/plugin_labels).

    python -m tests.lint.plugin_eval [PROJECT ...]     # default: every project
    python -m tests.lint.plugin_eval --dev | --held-out

Each pinned distribution is downloaded once (``tests/plugin_sources.py``); kvguard checks its
whole package, and the findings in the labelled files are compared with the labels.
"""

from __future__ import annotations

import os
import sys

from kvguard.config import Config
from kvguard.engine import check
from tests.lint.vllm_eval import Score, report
from tests.plugin_sources import Project, project_tree, projects


def score(project: Project) -> Score:
    tree = project_tree(project)
    wanted = {(x["path"], x["line"]): bool(x["label"]) for x in project.labels()}
    cwd = os.getcwd()
    os.chdir(tree)
    try:
        result = check([project.package], Config(select=("KVG001",)), use_cache=False)
    finally:
        os.chdir(cwd)
    flagged = {(f.path, f.line) for f in result.findings if project.in_scope(f.path)}
    tp = sorted(f"{p}:{n}" for p, n in flagged if wanted.get((p, n)) is True)
    fp = sorted(f"{p}:{n}" for p, n in flagged if wanted.get((p, n)) is False)
    unl = sorted(f"{p}:{n}" for p, n in flagged if (p, n) not in wanted)
    fn = sorted(f"{p}:{n}" for (p, n), v in wanted.items() if v and (p, n) not in flagged)
    return Score(project.version, tp, fp, fn, unl)


def main(argv: list[str]) -> None:
    known = projects()
    if "--dev" in argv or "--held-out" in argv:
        held_out = "--held-out" in argv
        chosen = [p for p in known.values() if p.held_out == held_out]
    else:
        chosen = [known[name] for name in argv] if argv else list(known.values())
    for project in chosen:
        held = " (held out)" if project.held_out else ""
        report(f"{project.name} {project.version}{held}", score(project))


if __name__ == "__main__":
    main(sys.argv[1:])
