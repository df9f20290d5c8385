"""Where the parts of a file that libcst must see lie: the stdlib ``ast`` pass finds them,
``snippets.py`` parses only them.

Line numbers are 1-based and count lines as the Python tokenizer does (``\\n``, ``\\r\\n``
or a lone ``\\r`` ends a line; ``str.splitlines`` would also split at form feeds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import accumulate

# Methods whose name KVG003 points at when a backend declares a divergent layout.
LAYOUT_METHODS = (
    "get_kv_cache_shape",
    "supported_kv_cache_layouts",
    "get_kv_cache_stride_order",
    "customize_spec",
)

_LINE_END = re.compile(r"\r\n|\r|\n")

Lines = tuple[tuple[int, int], ...]  # inclusive line ranges, in order


@dataclass(frozen=True)
class Unit:
    """One function or method (or the module's top-level statements) that can hold a split."""

    spans: Lines
    class_name: str | None  # the innermost class it is defined in
    function: str | None  # None: the module's statements outside functions and classes
    nested: bool  # its first line is indented: parsed inside a stand-in class
    cache_params: tuple[str, ...] = ()  # parameters every call in the file passes a cache to


@dataclass(frozen=True)
class ClassSpan:
    """Enough of a class to parse its header and the method KVG003 points at."""

    name: str
    start: int  # the ``class`` line (decorators are not needed)
    header_end: int  # last line before the first body statement; 0: parse the whole class
    end: int
    body_indent: str
    anchor: tuple[int, int] | None  # first of LAYOUT_METHODS in the body, if any
    nested: bool


def source_lines(text: str) -> list[str]:
    """The text's lines without their line ends, numbered as the tokenizer numbers them."""
    return _LINE_END.split(text)


def line_offsets(text: str) -> list[int]:
    """Offset of the start of each line (index 0 is line 1), plus one past the end."""
    if "\r" not in text:  # the common case, summed in C
        offsets = list(accumulate(map((1).__add__, map(len, text.split("\n"))), initial=0))
        offsets[-1] = len(text) + 1
        return offsets
    return [0, *(m.end() for m in _LINE_END.finditer(text)), len(text) + 1]
