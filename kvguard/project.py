"""Where the project of a check lies: the directory whose files feed the project index.

The root is the directory of the settings file in use (``.kvguard.toml``, ``kvguard.toml``
or a ``pyproject.toml`` with [tool.kvguard]), else the top of the version-control work tree
(git or Mercurial) holding the first path. Without either, there is no project beyond the
paths given, and the index holds only their files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

VCS_MARKERS = (".git", ".hg")


@dataclass(frozen=True)
class Project:
    root: str | None  # absolute; None: only the given paths
    found_by: str = ""  # "config", ".git" or ".hg"


def vcs_root(start: str) -> tuple[str, str] | None:
    """(the top of the work tree holding ``start``, its marker), if any."""
    current = os.path.abspath(start)
    if not os.path.isdir(current):
        current = os.path.dirname(current)
    while True:
        for marker in VCS_MARKERS:
            if os.path.exists(os.path.join(current, marker)):
                return current, marker
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def find_project(first_path: str, config_file: str | None) -> Project:
    """The project of a check whose first path is ``first_path``.

    A settings file counts when it lies in or above that path's directory (an explicit
    ``--config`` elsewhere only supplies settings)."""
    start = os.path.abspath(first_path)
    if config_file:
        directory = os.path.dirname(os.path.abspath(config_file))
        prefix = directory.rstrip(os.sep) + os.sep
        if start == directory or start.startswith(prefix):
            return Project(directory, "config")
    found = vcs_root(start)
    if found is not None:
        return Project(*found)
    return Project(None)


def first_path(paths: list[str], stdin_name: str | None) -> str:
    if stdin_name and stdin_name != "-":
        return stdin_name
    for path in paths:
        if path != "-":
            return path
    return str(Path.cwd())
