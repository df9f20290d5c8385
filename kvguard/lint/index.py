"""The project index: every class seen in the checked tree, its bases and declared layout.

Rules that need more than one file (KVG002, KVG003) ask it which backend an impl class
belongs to and which layout that backend, or one of its bases, declares; the fixer asks
which classes derive from one. Every query costs what its answer holds, not the size of
the project: name lookups and lineages are memoised, and the maps that would otherwise
take a scan of every class (an impl's backends, a class's subclasses) are built once, on
first use, in one pass.
"""

from __future__ import annotations

import posixpath
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from kvguard.lint.facts import ClassFacts
from kvguard.lint.layouts import UNKNOWN, LayoutDecl
from kvguard.lint.value_facts import NO_VALUE_FACTS, ValueFacts


def _is_module(path: str, stem: str) -> bool:
    """Whether a file is the module ``stem`` (``pkg/mod``, or ``dir/pkg/mod`` if relative)."""
    path = "/" + posixpath.normpath(path.replace("\\", "/")).lstrip("/")
    return any(path.endswith("/" + stem.lstrip("/") + tail) for tail in (".py", "/__init__.py"))


def _key(facts: ClassFacts) -> tuple[str, str]:
    return facts.name, facts.path  # one class of a name per file, as the lineages count


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
    # what values are, project-wide (``value_facts``: type aliases, tuple returns, bindings)
    values: ValueFacts = NO_VALUE_FACTS
    # memoised answers and maps (the index does not change once built); not pickled
    _memo: dict[str, dict[Any, Any]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_memo": {}}

    def _table(self, name: str) -> dict[Any, Any]:
        return self._memo.setdefault(name, {})

    @classmethod
    def build(
        cls,
        classes: Iterable[ClassFacts],
        backend_bases: tuple[str, ...] = (),
        imports: dict[str, dict[str, tuple[str, str]]] | None = None,
        values: ValueFacts = NO_VALUE_FACTS,
    ) -> ProjectIndex:
        index = cls(backend_bases=backend_bases, imports=imports or {}, values=values)
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
        table = self._table("lookup")
        key = (name, near)
        if key not in table:
            table[key] = self._lookup(name, near)
        return table[key]

    def _lookup(self, name: str, near: str) -> ClassFacts | None:
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

    def mro(self, facts: ClassFacts) -> tuple[ClassFacts, ...]:
        """The class and its known bases, nearest first (breadth first), each once."""
        table = self._table("mro")
        found = table.get(id(facts))
        if found is None or found[0] is not facts:
            found = table[id(facts)] = (facts, self._lineage(facts))
        return found[1]

    def _lineage(self, facts: ClassFacts) -> tuple[ClassFacts, ...]:
        seen: set[tuple[str, str]] = set()
        out = []
        queue = deque([facts])
        while queue:
            current = queue.popleft()
            if _key(current) in seen:
                continue
            seen.add(_key(current))
            out.append(current)
            queue.extend(self.bases(current))
        return tuple(out)

    def bases(self, facts: ClassFacts) -> Iterator[ClassFacts]:
        """The classes of the index that a class names as its direct bases."""
        for name in facts.bases:
            base = self.lookup(name, near=facts.path)
            if base is not None:
                yield base

    def classes(self) -> Iterator[ClassFacts]:
        for group in self.by_name.values():
            yield from group

    def subclasses(self, facts: ClassFacts) -> list[ClassFacts]:
        """Every class of another name or file whose lineage (``mro``) holds this one, in
        index order."""
        children = self._table("children")
        if not children:  # one pass over the project: who names whom as a direct base
            first: dict[tuple[str, str], ClassFacts] = {}
            for position, cls in enumerate(self.classes()):
                first.setdefault(_key(cls), cls)
                for base in self.bases(cls):
                    children.setdefault(_key(base), []).append((position, cls))
            self._memo["first"] = first
            children[None] = []  # built, even for a project without subclasses
        first = self._memo["first"]
        own = _key(facts)
        found: dict[int, ClassFacts] = {}
        expanded = {own}
        queue = deque([own])
        while queue:
            for position, child in children.get(queue.popleft(), ()):
                key = _key(child)
                if key != own:
                    found[position] = child
                # a lineage goes on only through the class that lookups return for a key
                if key not in expanded and first[key] is child:
                    expanded.add(key)
                    queue.append(key)
        return [found[position] for position in sorted(found)]

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

    def lineage_below(self, sub: ClassFacts, facts: ClassFacts) -> tuple[ClassFacts, ...]:
        """The classes of ``sub``'s lineage that come before ``facts`` (all, if it is not in
        it): the ones whose methods a subclass of ``facts`` sees first."""
        chain = self.mro(sub)
        key = _key(facts)
        return next((chain[:i] for i, c in enumerate(chain) if _key(c) == key), chain)

    def backends_of_impl(self, impl: ClassFacts) -> list[ClassFacts]:
        """Backends whose get_impl_cls returns this impl class (directly or via a subclass)."""
        table = self._table("backends")
        if not table:  # one pass over the project: which backends name which impls
            for cls in self.classes():
                for name in dict.fromkeys(cls.impl_names):
                    table.setdefault(name, []).append(cls)
            table[None] = []
        return [
            backend
            for backend in table.get(impl.name, ())
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

    def divergences(self) -> tuple[Divergence, ...]:
        """Backends that declare a layout disjoint from a base's and take ENCODER_DECODER.

        With vLLM 0.28+ layouts, two backends agree only if they share a layout *and* a
        way of packing K and V into the page (``customize_spec``). Found once per index:
        every linted file asks (KVG003).
        """
        table = self._table("divergences")
        if not table:
            table[None] = tuple(self._divergences())
        return table[None]  # type: ignore[no-any-return]

    def _divergences(self) -> Iterator[Divergence]:
        for group in self.by_name.values():
            for backend in group:
                if backend.layout.empty or not self.is_backend(backend):
                    continue
                mine = backend.layout.physical_arrangements()
                if mine is None:
                    continue
                for base in self.mro(backend)[1:]:
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
