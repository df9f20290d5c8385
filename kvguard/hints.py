"""Hints about what a check could not see (printed once per run, on stderr).

Without a project root the index holds only the given files, so a backend whose base class
lives in another file is compared with nothing: KVG003 stays silent there. The hint is
drawn from the index itself: a layout-declaring backend names a base that the index's
lookup does not find, the file imports that base from a module, and that module is a file
on disk (beside or above the checked file) that a project root would have indexed. A base
from another package (a plugin's ``AttentionBackend`` from vLLM) gives no hint: no root
would bring it in.
"""

from __future__ import annotations

import os

from kvguard.lint.facts import ClassFacts
from kvguard.lint.index import ProjectIndex


def _module_file(stem: str, near: str) -> str | None:
    """The file of module ``stem`` (``pkg/mod``) as seen from the file ``near``: relative
    to the working directory (relative imports are resolved against it) or to a directory
    above ``near`` (absolute imports name the package from its top)."""
    directory = os.path.dirname(os.path.abspath(near))
    tops = [os.getcwd()]
    while True:
        tops.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for top in tops:
        for tail in (".py", "/__init__.py"):
            candidate = os.path.join(top, stem + tail)
            if os.path.isfile(candidate):
                return candidate
    return None


def unseen_bases(index: ProjectIndex) -> list[tuple[ClassFacts, str, str]]:
    """(backend, base, the base's module file) for each base of a layout-declaring backend
    that the index lacks while its module is a file on disk."""
    out = []
    for facts in index.classes():
        if facts.layout.empty or not index.is_backend(facts):
            continue
        imports = index.imports.get(facts.path, {})
        for base in facts.bases:
            if base not in imports or index.lookup(base, facts.path) is not None:
                continue
            found = _module_file(imports[base][0], facts.path)
            if found is not None:
                out.append((facts, base, found))
    return out


def unseen_bases_hint(index: ProjectIndex | None, root: str | None) -> str | None:
    """The one line to print, or None (a project root, or no base left unseen)."""
    if index is None or root is not None:
        return None
    missing = unseen_bases(index)
    if not missing:
        return None
    facts, base, module = missing[0]
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    return (
        f"KVG003 could not see base class {base} of {facts.name}{more}: "
        f"{os.path.relpath(module)} was not checked and no project root was found; add a "
        "kvguard.toml (or [tool.kvguard] in pyproject.toml) at the project's top, or check "
        "inside its work tree"
    )
