"""The project index: every class seen in the checked tree, its bases and declared layout.

Rules that need more than one file (KVG002, KVG003) ask it which backend an impl class
belongs to and which layout that backend, or one of its bases, declares.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from kvguard.lint.facts import ClassFacts
from kvguard.lint.layouts import UNKNOWN, LayoutDecl


def _is_module(path: str, stem: str) -> bool:
    """Whether a file is the module ``stem`` (``pkg/mod``, or ``dir/pkg/mod`` if relative)."""
    path = "/" + posixpath.normpath(path.replace("\\", "/")).lstrip("/")
    return any(path.endswith("/" + stem.lstrip("/") + tail) for tail in (".py", "/__init__.py"))


def _shared_dirs(path: str, near: str) -> int:
    parts, other = path.split("/")[:-1], near.split("/")[:-1]
    count = 0
    for a, b in zip(parts, other, strict=False):
        if a != b:
            break
        count += 1
    return count


@dataclass(frozen=True)
class Divergence:
    """A backend whose physical K/V arrangement differs from a base backend's (KVG003)."""

    backend: ClassFacts
    base: ClassFacts
    backend_layout: LayoutDecl
    base_layout: LayoutDecl
    # set when the layouts agree but customize_spec packs K and V differently
    backend_packing: frozenset[str] = frozenset()
    base_packing: frozenset[str] = frozenset()


@dataclass
class ProjectIndex:
    by_name: dict[str, list[ClassFacts]] = field(default_factory=dict)
    # globs over class names: a class with one of them in its lineage is an attention backend
    backend_bases: tuple[str, ...] = ()
    # per file: local name -> (module path stem, imported name), from ``FileFacts.imports``
    imports: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    _divergences: list[Divergence] | None = field(default=None, repr=False, compare=False)
    _backends_by_impl: dict[str, list[ClassFacts]] | None = field(
        default=None, repr=False, compare=False
    )

    @classmethod
    def build(
        cls,
        classes: Iterable[ClassFacts],
        backend_bases: tuple[str, ...] = (),
        imports: dict[str, dict[str, tuple[str, str]]] | None = None,
    ) -> ProjectIndex:
        index = cls(backend_bases=backend_bases, imports=imports or {})
        for facts in classes:
            index.by_name.setdefault(facts.name, []).append(facts)
        return index

    def is_backend(self, facts: ClassFacts) -> bool:
        """It links an impl (``get_impl_cls``), or derives from a ``backend-bases`` class."""
        if facts.impl_names:
            return True
        lineage = {n for c in self.mro(facts) for n in (c.name, *c.bases)}
        return any(fnmatchcase(n, p) for n in lineage for p in self.backend_bases)

    def impl_names(self, facts: ClassFacts) -> tuple[str, ...]:
        """The impl classes a backend's nearest ``get_impl_cls`` returns."""
        return next((c.impl_names for c in self.mro(facts) if c.impl_names), ())

    def lookup(self, name: str, near: str = "") -> ClassFacts | None:
        """The class a name denotes in the file ``near``.

        A class defined in that file, else the one its ``from M import`` names (found by
        M's path), else, of the classes of that name, the one nearest in the directory tree.
        """
        found = self.by_name.get(name)
        if found and near:
            local = next((c for c in found if c.path == near), None)
            if local is not None:
                return local
        target = self.imports.get(near, {}).get(name)
        if target is not None:
            stem, imported = target
            for candidate in self.by_name.get(imported, ()):
                if _is_module(candidate.path, stem):
                    return candidate
            found = found or self.by_name.get(imported)
        if not found:
            return None
        if len(found) == 1 or not near:
            return found[0]
        return max(found, key=lambda c: _shared_dirs(c.path, near))

    def mro(self, facts: ClassFacts) -> Iterator[ClassFacts]:
        """The class and its known bases, depth first, each once."""
        seen: set[tuple[str, str]] = set()
        stack = [facts]
        while stack:
            current = stack.pop(0)
            key = (current.name, current.path)
            if key in seen:
                continue
            seen.add(key)
            yield current
            stack.extend(
                base
                for name in current.bases
                if (base := self.lookup(name, near=current.path)) is not None
            )

    def declared_layout(self, facts: ClassFacts) -> tuple[ClassFacts, LayoutDecl] | None:
        """The nearest class in the MRO that declares a layout, with that layout."""
        for current in self.mro(facts):
            if not current.layout.empty:
                return current, current.layout
        return None

    def supports_encoder_decoder(self, facts: ClassFacts) -> bool:
        for current in self.mro(facts):
            if current.supports_encoder_decoder is not None:
                return current.supports_encoder_decoder
        return False

    def backends_of_impl(self, impl: ClassFacts) -> list[ClassFacts]:
        """Backends whose get_impl_cls returns this impl class (directly or via a subclass)."""
        if self._backends_by_impl is None:  # once per index: asking per class costs n^2
            linking: dict[str, list[ClassFacts]] = {}
            for group in self.by_name.values():
                for backend in group:
                    for name in dict.fromkeys(backend.impl_names):
                        linking.setdefault(name, []).append(backend)
            self._backends_by_impl = linking
        return [
            backend
            for backend in self._backends_by_impl.get(impl.name, ())
            if self.lookup(impl.name, near=backend.path) is impl
        ]

    def impl_layout(self, impl_name: str, near: str) -> tuple[ClassFacts, LayoutDecl] | None:
        """The layout of the backend that owns this impl class (or the impl's base impls)."""
        impl = self.lookup(impl_name, near=near)
        if impl is None:
            return None
        for current in self.mro(impl):
            for backend in self.backends_of_impl(current):
                declared = self.declared_layout(backend)
                if declared is not None:
                    return declared
        return None

    def impl_reconciles(self, backend: ClassFacts) -> bool:
        for name in self.impl_names(backend):
            impl = self.lookup(name, near=backend.path)
            if impl is not None and any(c.reconciles_layouts for c in self.mro(impl)):
                return True
        return False

    def kv_packing(self, facts: ClassFacts) -> frozenset[str] | None:
        """How K and V share a page for this backend (its nearest ``customize_spec``)."""
        for current in self.mro(facts):
            if current.kv_packing is not None:
                packing = frozenset(current.kv_packing)
                return None if UNKNOWN in packing else packing
        return None

    def divergences(self) -> list[Divergence]:
        """``find_divergences``, computed once per index: each file's KVG003 asks for its
        own, and asking the whole project again per file would cost files x classes."""
        if self._divergences is None:
            self._divergences = list(self.find_divergences())
        return self._divergences

    def find_divergences(self) -> Iterator[Divergence]:
        """Backends that declare a layout disjoint from a base's and take ENCODER_DECODER.

        With vLLM 0.28+ layouts, two backends agree only if they share a layout *and* a
        way of packing K and V into the page (``customize_spec``).
        """
        for group in self.by_name.values():
            for backend in group:
                if backend.layout.empty or not self.is_backend(backend):
                    continue
                mine = backend.layout.physical_arrangements()
                if mine is None:
                    continue
                for base in list(self.mro(backend))[1:]:
                    if base.layout.empty:
                        continue
                    theirs = base.layout.physical_arrangements()
                    if theirs is None:
                        break
                    packings: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
                    if mine & theirs:
                        if not (backend.layout.layouts and base.layout.layouts):
                            break
                        my_packing, base_packing = self.kv_packing(backend), self.kv_packing(base)
                        if my_packing is None or base_packing is None or my_packing & base_packing:
                            break
                        packings = (my_packing, base_packing)
                    if self.supports_encoder_decoder(backend) and not self.impl_reconciles(backend):
                        yield Divergence(backend, base, backend.layout, base.layout, *packings)
                    break
