"""Which identifiers denote a KV cache, a list of caches, or a sanctioned splitter.

Patterns are shell-style globs over whole identifiers (``*`` and ``?`` only), matched
as CPython sees identifiers: NFKC-normalised (PEP 3131), so that ``kv_cache`` spelled
with a fullwidth ``k`` (U+FF4B) is ``kv_cache``.
Every KV-cache receiver that a rule can flag is, or is an alias of, an identifier
that matches one of these patterns, or a parameter that calls in the same file fill with
one (``cache_params``), which is what makes the text prefilter
(``KvNames.mentioned_in``) conservative: a file that spells none of them can hold
no KVG001/KVG002/KVG004 finding.
"""

from __future__ import annotations

import functools
import keyword
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from kvguard.lint.forms import CHAIN_METHODS, ITERATING_METHODS, SPLIT_METHODS

# Method names whose presence means a file declares a backend's cache layout or
# links a backend to its impl: such files feed the project index (KVG002/KVG003).
LAYOUT_DECLARATIONS = (
    "get_kv_cache_shape",
    "get_kv_cache_stride_order",
    "supported_kv_cache_layouts",
    "customize_spec",
    "get_impl_cls",
)


def glob_to_regex(pattern: str) -> str:
    out = []
    for char in pattern:
        if char == "*":
            out.append(r"\w*")
        elif char == "?":
            out.append(r"\w")
        else:
            out.append(re.escape(char))
    return "".join(out)


# What follows a word that is called (``is_quantized_kv_cache(...)``), defined, bound or passed
# by keyword (``kv_cache=...``).
_CALLED_OR_BOUND = re.compile(r"[ \t]*(?:\(|=(?!=))")
# What follows an element of a parameter list, an argument list, a tuple, a subscript or a
# display, or an annotated name.
_ELEMENT_END = re.compile(r"[ \t\r\n]*[,)\]}:]")
_ATTRIBUTE = re.compile(r"[ \t]*\.[ \t]*(\w+)")
# Attributes through which classify (or a loop over .items()) goes on from a cache.
_RECEIVER_ATTRIBUTES = SPLIT_METHODS | CHAIN_METHODS | ITERATING_METHODS
_WORD_BEFORE = re.compile(r"(\w+)[ \t\r\n]*\Z")


def _may_start_receiver(text: str, start: int, end: int) -> bool:
    """Whether the word at ``text[start:end]`` may be where ``receivers.classify`` starts.

    It never starts at a word that is called or bound, nor at a parameter, an argument, a
    keyword argument's value, or an element of a tuple, a list, a subscript or a dict key;
    it starts at a subscripted name, the owner of a split, view or derive call (not of
    ``.shape`` and the like), an assigned value, a loop's iterable, or the first argument
    (keyword or not) of ``torch.<split method>``.
    A word whose context reads otherwise (a comment or a line continuation in the way)
    counts.
    """
    if _CALLED_OR_BOUND.match(text, end):
        return False
    attribute = _ATTRIBUTE.match(text, end)
    if attribute is not None:  # kv_cache.shape reads metadata; kv_cache.view(...) may split
        return attribute.group(1) in _RECEIVER_ATTRIBUTES
    if not _ELEMENT_END.match(text, end):
        return True
    before, index = _previous_char(text, start)
    if before == "=":
        if index > 0 and text[index - 1] in ":=<>!":  # :=, ==, <=, >=, !=
            return True
        # a keyword argument's value: the receiver only as the first argument of a split
        name = _WORD_BEFORE.search(text, max(0, index - 64), index)
        if name is None:
            return True
        before, index = _previous_char(text, name.start())
    if before == ",":
        return False
    return before != "(" or _splits_or_groups(text, index)


def _splits_or_groups(text: str, paren: int) -> bool:
    """Whether the parenthesis at ``paren`` opens a call of a split method (or no call at
    all: a grouping parenthesis, or one after a keyword such as ``in``)."""
    callee = _WORD_BEFORE.search(text, max(0, paren - 64), paren)
    if callee is None:
        return True
    word = callee.group(1)
    return keyword.iskeyword(word) or word in SPLIT_METHODS


def _previous_char(text: str, offset: int) -> tuple[str, int]:
    """The nearest character before ``offset`` that is no space or line end, and where."""
    index = offset - 1
    while index >= 0 and text[index] in " \t\r\n":
        index -= 1
    return (text[index] if index >= 0 else ""), index


def _cores(patterns: tuple[str, ...]) -> tuple[str, ...] | None:
    """Literal pieces one of which every identifier matching a pattern must contain.

    None when some pattern has no literal piece (``*``): then nothing is prefiltered.
    A piece that contains another is dropped: finding the shorter one finds it too.
    """
    cores = []
    for pattern in patterns:
        pieces = [p for p in re.split(r"[*?]", pattern) if p]
        if not pieces:
            return None
        cores.append(max(pieces, key=len))
    kept: list[str] = []
    for core in sorted(set(cores), key=len):
        if not any(shorter in core for shorter in kept):
            kept.append(core)
    return tuple(kept)


def as_python_sees(name: str) -> str:
    """The identifier CPython binds for ``name``: its NFKC normal form (PEP 3131)."""
    return name if name.isascii() else unicodedata.normalize("NFKC", name)


_NON_ASCII = re.compile(r"[^\x00-\x7f]")


@functools.lru_cache(maxsize=2)  # the prefilter and the receiver-word gate ask in turn
def _renamed_words(text: str) -> tuple[tuple[int, int, str], ...]:
    """(start, end, NFKC form) of each word that CPython reads as another spelling.

    NFKC leaves ASCII as it is, and most non-ASCII texts (arrows, box drawing, accents
    in comments) not at all, which one C-level test settles before any word is cut out.
    """
    if text.isascii() or unicodedata.is_normalized("NFKC", text):
        return ()
    words = []
    end = 0
    for char in _NON_ASCII.finditer(text):
        if char.start() < end or not char.group().isalnum():
            continue  # in the word just cut out, or no letter
        left = end = char.start()
        while left > 0 and (text[left - 1].isalnum() or text[left - 1] == "_"):
            left -= 1
        while end < len(text) and (text[end].isalnum() or text[end] == "_"):
            end += 1
        normal = unicodedata.normalize("NFKC", text[left:end])
        if normal != text[left:end]:
            words.append((left, end, normal))
    return tuple(words)


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str]:
    if not patterns:
        return re.compile(r"(?!x)x")
    return re.compile("|".join(f"(?:{glob_to_regex(as_python_sees(p))})" for p in patterns))


# (offset, end, word as CPython sees it, whether it names a list of caches)
Occurrence = tuple[int, int, str, bool]


@dataclass(frozen=True)
class KvNames:
    cache: tuple[str, ...]
    cache_list: tuple[str, ...]
    splitters: tuple[str, ...]

    @cached_property
    def _cache_re(self) -> re.Pattern[str]:
        return _compile(self.cache)

    @cached_property
    def _list_re(self) -> re.Pattern[str]:
        return _compile(self.cache_list)

    @cached_property
    def _splitter_re(self) -> re.Pattern[str]:
        return _compile(self.splitters)

    @cached_property
    def _cores(self) -> tuple[str, ...] | None:
        """Literal pieces one of which every word that a rule can start from contains."""
        return _cores((*self.cache, *self.cache_list, *self.splitters, *LAYOUT_DECLARATIONS))

    @cached_property
    def _receiver_cores(self) -> tuple[str, ...] | None:
        return _cores((*self.cache, *self.cache_list))

    @cached_property
    def _known_words(self) -> dict[str, bool]:
        return {}

    @cached_property
    def _word_re(self) -> re.Pattern[str]:
        return re.compile(r"\w+")

    def with_caches(self, extra: tuple[str, ...]) -> KvNames:
        """These names and ``extra`` identifiers as cache names (``cache_params``)."""
        return KvNames((*self.cache, *extra), self.cache_list, self.splitters)

    def is_cache(self, name: str) -> bool:
        return (
            self._cache_re.fullmatch(name if name.isascii() else as_python_sees(name)) is not None
        )

    def is_cache_list(self, name: str) -> bool:
        return self._list_re.fullmatch(name if name.isascii() else as_python_sees(name)) is not None

    def is_splitter(self, name: str) -> bool:
        return (
            self._splitter_re.fullmatch(name if name.isascii() else as_python_sees(name))
            is not None
        )

    def _words(self, text: str, cores: tuple[str, ...]) -> Iterator[tuple[int, int, str]]:
        """(offset, end, word as CPython sees it) of each word that holds one of the cores,
        per core in turn, then (in a non-ASCII text) of each word spelled with non-ASCII
        letters, which may hold a core only once normalised.

        Cheap substring tests first (C speed); only around a hit is the whole word cut out.
        """
        for core in cores:
            start = text.find(core)
            while start != -1:
                left = start
                while left > 0 and (text[left - 1].isalnum() or text[left - 1] == "_"):
                    left -= 1
                match = self._word_re.match(text, left)
                word = match.group(0) if match else core
                yield left, left + len(word), word if word.isascii() else as_python_sees(word)
                start = text.find(core, left + len(word))
        for left, end, word in _renamed_words(text):
            if any(core in word for core in cores):
                yield left, end, word

    def mentioned_in(self, text: str) -> bool:
        """True when the text holds a word that some rule could start from."""
        cores = self._cores
        if cores is None:
            return True
        known_words = self._known_words
        for _, _, word in self._words(text, cores):
            known = known_words.get(word)
            if known is None:
                known = known_words[word] = (
                    self.is_cache(word)
                    or self.is_cache_list(word)
                    or self.is_splitter(word)
                    or word in LAYOUT_DECLARATIONS
                )
            if known:
                return True
        return False

    def occurrences(self, text: str) -> list[Occurrence] | None:
        """(offset, end, word as CPython sees it, names a list) of each word that names a
        cache or a list of caches, in one scan; None when the patterns have no literal
        piece."""
        cores = self._receiver_cores
        if cores is None:
            return None
        found = []
        for offset, end, word in self._words(text, cores):
            if self.is_cache(word):
                found.append((offset, end, word, False))
            elif self.is_cache_list(word):
                found.append((offset, end, word, True))
        return found

    def receiver_words(
        self, text: str, occurrences: list[Occurrence] | None = None
    ) -> list[int] | None:
        """Sorted offsets of the words that name a cache or a list of caches where they can
        start a receiver (every receiver the rules accept starts from one); None when the
        patterns have no literal piece. ``occurrences`` saves the scan when it was made."""
        found = self.occurrences(text) if occurrences is None else occurrences
        if found is None:
            return None
        return sorted(
            {offset for offset, end, _, _ in found if _may_start_receiver(text, offset, end)}
        )
