"""libcst parses of the parts of a file that can hold a finding, with positions in the file.

A snippet is a verbatim copy of whole source lines (one function, one class header, or the
module's top-level statements), behind a stand-in ``class _:`` line when its first line is
indented. Lines are copied whole, so columns need no remapping; each snippet keeps the map
from its lines to the file's. A function parses to the same libcst nodes as it does inside
the whole module, so the rules see the same thing either way (``tests/lint`` compares both).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import libcst as cst
from libcst.metadata import CodePosition, CodeRange, PositionProvider

from kvguard.lint.positions import PositionWrapper
from kvguard.lint.spans import ClassSpan, Lines, line_offsets

_NEWLINE = re.compile(r"\r\n?|\n")


class SnippetError(Exception):
    """libcst cannot parse a snippet; ``line`` is the file's line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


class Snippets:
    """Parses snippets of one file on demand and maps their positions back to it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._offsets = line_offsets(text)
        first = _NEWLINE.search(text)
        # what libcst would take as the whole module's newline (used when it prints code)
        self.newline = first.group(0) if first else "\n"
        self._parsed: list[tuple[PositionWrapper, list[int]]] = []
        self._positions: list[dict[cst.CSTNode, CodeRange] | None] = []
        self._classes: dict[str, cst.ClassDef | None] = {}
        self._owner: dict[int, int] = {}  # id(node) -> the snippet it was parsed in

    def claim(self, nodes: Iterable[cst.CSTNode]) -> None:
        """Note that these nodes (ones a rule may report) come from the latest snippet, so
        that only that snippet's positions are computed."""
        latest = len(self._parsed) - 1
        self._owner.update((id(node), latest) for node in nodes)

    def _slice(self, start: int, end: int) -> str:
        piece = self.text[self._offsets[start - 1] : self._offsets[end]]
        return piece if piece.endswith(("\n", "\r")) else piece + self.newline

    def parse(self, spans: Lines, nested: bool, tail: str = "") -> cst.BaseSuite | cst.Module:
        """The snippet's statements: a module, or the body of the stand-in class."""
        parts = [f"class _:{self.newline}"] if nested else []
        line_map = [0] if nested else []
        for start, end in spans:
            parts.append(self._slice(start, end))
            line_map.extend(range(start, end + 1))
        if tail:
            parts.append(tail + self.newline)
            line_map.append(line_map[-1])
        try:
            module = cst.parse_module("".join(parts))
        except cst.ParserSyntaxError as exc:
            index = min(max(exc.raw_line, 1), len(line_map)) - 1
            raise SnippetError(line_map[index], exc.message) from None
        wrapper = PositionWrapper(module, unsafe_skip_copy=True)
        self._parsed.append((wrapper, line_map))
        self._positions.append(None)
        if nested:
            wrapped = module.body[0]
            assert isinstance(wrapped, cst.ClassDef)
            return wrapped.body
        return module

    def statement(self, spans: Lines, nested: bool, tail: str = "") -> cst.BaseStatement:
        """The first statement of the snippet (a function or class definition)."""
        body = self.parse(spans, nested, tail)
        return body.body[0]  # type: ignore[return-value]

    def class_def(self, span: ClassSpan | None) -> cst.ClassDef | None:
        """The class's header, with the method KVG003 anchors on as its only body statement."""
        if span is None:
            return None
        if span.name not in self._classes:
            if span.header_end:
                spans = [(span.start, span.header_end)]
                if span.anchor is not None:
                    spans.append(span.anchor)
                filler = "" if span.anchor else span.body_indent + "pass"
                stmt = self.statement(tuple(spans), span.nested, filler)
            else:
                stmt = self.statement(((span.start, span.end),), span.nested)
            if isinstance(stmt, cst.ClassDef):
                methods = [s.name for s in stmt.body.body if isinstance(s, cst.FunctionDef)]
                self.claim([stmt.name, *methods])
                self._classes[span.name] = stmt
            else:
                self._classes[span.name] = None
        return self._classes[span.name]

    def code(self, node: cst.CSTNode) -> str:
        return cst.Module(body=(), default_newline=self.newline).code_for_node(node)

    def position(self, node: cst.CSTNode) -> CodeRange:
        owner = self._owner.get(id(node))
        order = range(len(self._parsed)) if owner is None else (owner,)
        for i in order:
            wrapper, line_map = self._parsed[i]
            positions = self._positions[i]
            if positions is None:
                positions = self._positions[i] = wrapper.resolve(PositionProvider)  # type: ignore[assignment]
            if node in positions:  # type: ignore[operator]
                span = positions[node]  # type: ignore[index]
                return CodeRange(
                    CodePosition(line_map[span.start.line - 1], span.start.column),
                    CodePosition(line_map[span.end.line - 1], span.end.column),
                )
        raise KeyError(node)
