"""Pinned distributions of code that is not vLLM (platform plugins, connectors, engines),
downloaded at test time like ``vllm_sources``: ``pip download --no-deps`` once, the ``.py``
files of the labelled package extracted into a cache outside the repository.

``KVGUARD_PLUGIN_CACHE`` moves the cache (default ``~/.cache/kvguard-tests/plugin-labels``).
What to download comes from ``tests/data/plugin_labels/projects.json``; each project's
``.fetch`` file beside it is the labeller's own line, kept for the record.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.vllm_sources import pip_download

LABELS_DIR = Path(__file__).parent / "data" / "plugin_labels"


@dataclass(frozen=True)
class Project:
    name: str  # as the labels spell it ("tpu-inference")
    requirement: str  # "tpu-inference==0.32.0"
    pip_args: tuple[str, ...]  # extra pip download flags (platform of a macOS-only wheel)
    archive: str  # the file pip downloads
    sha256: str
    package: str  # top-level directory of the labelled code ("tpu_inference")
    # what the labels cover: (glob over paths relative to the unpacked root, covered), the
    # last rule that matches a path decides; no rule matching means not covered
    scope: tuple[tuple[str, bool], ...]
    held_out: bool  # not looked at while the rules were designed
    blind: bool = False  # labelled by a third engineer, first scored on the finished rules
    sdist: bool = False  # only an sdist exists, whose metadata pip cannot prepare here

    @property
    def version(self) -> str:
        return self.requirement.split("==", 1)[1]

    def in_scope(self, path: str) -> bool:
        covered = False
        for glob, verdict in self.scope:
            if fnmatch.fnmatchcase(path, glob):
                covered = verdict
        return covered

    def labels(self, include_ambiguous: bool = True) -> list[dict]:
        labels = json.loads((LABELS_DIR / f"{self.name}.json").read_text(encoding="utf-8"))
        return [x for x in labels if include_ambiguous or not x.get("ambiguous", False)]


def projects() -> dict[str, Project]:
    raw = json.loads((LABELS_DIR / "projects.json").read_text(encoding="utf-8"))
    return {
        name: Project(
            name=name,
            requirement=item["requirement"],
            pip_args=tuple(item.get("pip_args", ())),
            archive=item["archive"],
            sha256=item["sha256"],
            package=item["package"],
            scope=tuple((str(glob), bool(covered)) for glob, covered in item["scope"]),
            held_out=bool(item.get("held_out", False)),
            blind=bool(item.get("blind", False)),
            sdist=bool(item.get("sdist", False)),
        )
        for name, item in raw.items()
        if not name.startswith("_")
    }


def cache_root() -> Path:
    default = Path.home() / ".cache" / "kvguard-tests" / "plugin-labels"
    return Path(os.environ.get("KVGUARD_PLUGIN_CACHE", default))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract(archive: Path, package: str, tree: Path) -> None:
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zipped:
            for name in zipped.namelist():
                if name.startswith(f"{package}/") and name.endswith(".py"):
                    zipped.extract(name, tree)
        return
    with tarfile.open(archive) as tarred:  # an sdist: <dist>-<version>/[src/]<package>/...
        for member in tarred.getmembers():
            parts = member.name.split("/")
            if package in parts and member.isfile() and member.name.endswith(".py"):
                rel = "/".join(parts[parts.index(package) :])
                target = tree / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tarred.extractfile(member)
                assert source is not None
                target.write_bytes(source.read())


def _download_sdist(project: Project, directory: Path) -> str:
    """Save the pinned sdist as pip finds it on its index, without building it.

    ``pip download --no-binary :all:`` prepares an sdist's metadata after downloading it, and
    fails (saving nothing) when its ``setup.py`` needs what is not installed here; pip's own
    finder and session fetch the same file. An empty string says why it could not."""
    name, version = project.requirement.split("==", 1)
    try:
        from optparse import Values

        from pip._internal.index.collector import LinkCollector
        from pip._internal.index.package_finder import PackageFinder
        from pip._internal.models.index import PyPI
        from pip._internal.models.selection_prefs import SelectionPreferences
        from pip._internal.network.session import PipSession

        session = PipSession()
        options = Values(
            dict(index_url=PyPI.simple_url, extra_index_urls=[], find_links=[], no_index=False)
        )
        finder = PackageFinder.create(
            LinkCollector.create(session, options), SelectionPreferences(allow_yanked=False)
        )
        links = [
            c.link
            for c in finder.find_all_candidates(name)
            if str(c.version) == version and not c.link.is_wheel
        ]
        if not links:
            return f"no sdist of {project.requirement} on the index"
        response = session.get(links[0].url_without_fragment)
        response.raise_for_status()
        (directory / links[0].filename).write_bytes(response.content)
    except Exception as exc:  # pip internals moved, or the network is down
        return f"{type(exc).__name__}: {exc}"
    return ""


def project_tree(project: Project) -> Path:
    """A directory holding ``<package>/`` of the pinned release (its .py files only)."""
    root = cache_root()
    tree = root / "src" / f"{project.name}-{project.version}"
    if (tree / ".complete").exists():
        return tree
    downloads = root / "archives"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / project.archive
    if not archive.exists() and project.sdist:
        why = _download_sdist(project, downloads)
        if why or not archive.exists():
            pytest.skip(f"cannot download {project.requirement}: {why or 'another file came'}")
    elif not archive.exists():
        proc = pip_download(project.requirement, downloads, project.pip_args)
        if proc.returncode != 0 or not archive.exists():
            pytest.skip(f"cannot download {project.requirement}: {proc.stderr.strip()[-300:]}")
    if _sha256(archive) != project.sha256:
        pytest.fail(f"{archive} is not the archive the labels were made on (sha256 differs)")
    _extract(archive, project.package, tree)
    (tree / ".complete").touch()
    return tree
