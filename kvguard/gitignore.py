"""Git's ignore rules, read the way git reads them, for ``respect-gitignore``.

Inside a git work tree, the patterns of ``.git/info/exclude`` and of every ``.gitignore``
from the work tree's top down to a directory apply to that directory's entries; a deeper
file's patterns win over a shallower one's, and within a file the last matching pattern
wins (``!`` re-includes). As in git, nothing below an ignored directory is looked at, so a
``!`` pattern cannot re-include a file whose directory is ignored. The user's global
excludes file (``core.excludesFile``) is not read: it is not part of the project.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_SPECIAL = re.compile(r"(\\.|\*\*|\*|\?|\[(?:\\.|[^\]])+\]|[^\\*?\[]+|.)", re.DOTALL)


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    negated: bool
    directory_only: bool


def _translate(body: str) -> str:
    """A gitignore glob (already stripped of ``!``, a trailing ``/`` and anchoring) as a
    regular expression over a ``/``-separated relative path."""
    out = []
    parts = body.split("/")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            # "a/**/b": zero or more directories; "a/**": everything inside
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        piece = []
        for token in _SPECIAL.findall(part):
            if token.startswith("\\") and len(token) == 2:
                piece.append(re.escape(token[1]))
            elif token in ("**", "*"):
                piece.append("[^/]*")
            elif token == "?":
                piece.append("[^/]")
            elif token.startswith("[") and len(token) > 2:
                inner = token[1:-1]
                negate = inner[:1] in ("!", "^")
                inner = inner[1:] if negate else inner
                inner = inner.replace("\\", "\\\\").replace("]", "\\]")
                piece.append(f"[{'^' if negate else ''}{inner}]")
            else:
                piece.append(re.escape(token))
        out.append("".join(piece) + ("" if last else "/"))
    return "".join(out)


def parse(text: str) -> tuple[_Rule, ...]:
    rules = []
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        # trailing spaces are dropped unless escaped
        stripped = line.rstrip(" ")
        if stripped.endswith("\\") and len(stripped) < len(line):
            stripped += " "
        line = stripped
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        if negated or line.startswith(("\\!", "\\#")):
            line = line[1:]
        directory_only = line.endswith("/") and not line.endswith("\\/")
        line = line.rstrip("/") if directory_only else line
        if not line:
            continue
        anchored = "/" in line
        line = line.lstrip("/")
        if line.startswith("**/"):
            anchored, line = False, line[3:]
        regex = _translate(line)
        if not anchored:
            regex = "(?:[^/]+/)*" + regex
        rules.append(_Rule(re.compile(regex + r"\Z", re.DOTALL), negated, directory_only))
    return tuple(rules)


@dataclass(frozen=True)
class _Layer:
    base: str  # absolute directory the patterns are relative to
    rules: tuple[_Rule, ...]


class Ignores:
    """The ignore rules that apply inside one directory (immutable; ``child`` extends it)."""

    def __init__(self, layers: tuple[_Layer, ...] = ()) -> None:
        self._layers = layers

    def __bool__(self) -> bool:
        return bool(self._layers)

    def child(self, directory: str) -> Ignores:
        """The rules inside ``directory`` (absolute): these plus its own ``.gitignore``."""
        rules = _read_rules(os.path.join(directory, ".gitignore"))
        return Ignores((*self._layers, _Layer(directory, rules))) if rules else self

    def ignored(self, path: str, is_dir: bool) -> bool:
        """Whether git ignores ``path`` (absolute), judged on its own name and place."""
        for layer in reversed(self._layers):
            prefix = layer.base.rstrip(os.sep) + os.sep
            if not path.startswith(prefix):
                continue
            relative = path[len(prefix) :].replace(os.sep, "/")
            for rule in reversed(layer.rules):
                if rule.directory_only and not is_dir:
                    continue
                if rule.regex.match(relative):
                    return not rule.negated
        return False


def _read_rules(path: str) -> tuple[_Rule, ...]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return parse(handle.read())
    except OSError:  # missing, unreadable, a directory: no rules from it
        return ()


def work_tree(directory: str) -> str | None:
    """The top of the git work tree holding ``directory`` (absolute), if any."""
    current = directory
    while True:
        if os.path.exists(os.path.join(current, ".git")):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def ignores_for(directory: str) -> Ignores:
    """The rules that apply to the entries of ``directory`` (absolute): ``info/exclude``
    and every ``.gitignore`` from the work tree's top down to it; none outside git."""
    top = work_tree(directory)
    if top is None:
        return Ignores()
    layers: list[_Layer] = []
    exclude = _read_rules(os.path.join(top, ".git", "info", "exclude"))
    if exclude:
        layers.append(_Layer(top, exclude))
    ignores = Ignores(tuple(layers))
    relative = os.path.relpath(directory, top)
    current = top
    ignores = ignores.child(current)
    if relative != ".":
        for part in relative.split(os.sep):
            current = os.path.join(current, part)
            ignores = ignores.child(current)
    return ignores
