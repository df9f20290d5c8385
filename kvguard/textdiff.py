"""Unified diffs in time linear in the file, for ``--diff``.

``difflib`` matches lines by repeatedly searching for the longest common run, which costs
quadratic time on long files whose changes repeat the same lines (a fixed file has
thousands of identical split statements): 580 s for a 100k-line file. Here lines that
occur once in both versions anchor the match (patience diffing), the longest increasing
run of anchors is kept, and only the short stretches between anchors go to ``difflib``
(or, if they are long and share no unique line, count as replaced). The output is the
format ``diff -u`` and ``git apply`` read.
"""

from __future__ import annotations

import difflib
from bisect import bisect_left
from collections import Counter

Block = tuple[int, int, int]  # a[i:i+n] == b[j:j+n]
_SMALL = 250_000  # a stretch with len(a) * len(b) up to this goes to difflib


def _increasing(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The longest run of pairs increasing in both coordinates (pairs sorted by the
    first), by patience sorting: O(k log k)."""
    tops: list[int] = []  # smallest second coordinate ending a run of each length
    ends: list[int] = []  # index of that pair
    back: list[int] = [-1] * len(pairs)
    for k, (_, j) in enumerate(pairs):
        at = bisect_left(tops, j)
        if at == len(tops):
            tops.append(j)
            ends.append(k)
        else:
            tops[at], ends[at] = j, k
        back[k] = ends[at - 1] if at else -1
    out = []
    k = ends[-1] if ends else -1
    while k != -1:
        out.append(pairs[k])
        k = back[k]
    return out[::-1]


def matching_blocks(a: list[str], b: list[str]) -> list[Block]:
    """Runs of equal lines, in order, ending with the ``(len(a), len(b), 0)`` sentinel."""
    found: list[Block] = []
    stack = [(0, len(a), 0, len(b))]
    while stack:
        alo, ahi, blo, bhi = stack.pop()
        while alo < ahi and blo < bhi and a[alo] == b[blo]:  # common head
            found.append((alo, blo, 1))
            alo, blo = alo + 1, blo + 1
        while alo < ahi and blo < bhi and a[ahi - 1] == b[bhi - 1]:  # common tail
            ahi, bhi = ahi - 1, bhi - 1
            found.append((ahi, bhi, 1))
        if alo == ahi or blo == bhi:
            continue
        in_a = Counter(a[alo:ahi])
        in_b = Counter(b[blo:bhi])
        where_b = {line: j for j, line in enumerate(b[blo:bhi], blo) if in_b[line] == 1}
        pairs = [
            (i, where_b[line])
            for i, line in enumerate(a[alo:ahi], alo)
            if in_a[line] == 1 and line in where_b
        ]
        anchors = _increasing(pairs)
        if not anchors:
            if (ahi - alo) * (bhi - blo) <= _SMALL:
                matcher = difflib.SequenceMatcher(None, a[alo:ahi], b[blo:bhi], autojunk=False)
                found.extend(
                    (alo + i, blo + j, n) for i, j, n in matcher.get_matching_blocks() if n
                )
            continue  # long and nothing unique in common: a replacement
        previous = (alo, blo)
        for i, j in anchors:
            found.append((i, j, 1))
            stack.append((previous[0], i, previous[1], j))
            previous = (i + 1, j + 1)
        stack.append((previous[0], ahi, previous[1], bhi))
    found.sort()
    merged: list[Block] = []
    for i, j, n in found:
        if merged and merged[-1][0] + merged[-1][2] == i and merged[-1][1] + merged[-1][2] == j:
            merged[-1] = (merged[-1][0], merged[-1][1], merged[-1][2] + n)
        else:
            merged.append((i, j, n))
    merged.append((len(a), len(b), 0))
    return merged


class _Matcher(difflib.SequenceMatcher):
    """difflib's opcode grouping over the blocks found above."""

    def __init__(self, a: list[str], b: list[str]) -> None:
        super().__init__(None, a, b, autojunk=False)
        self.matching_blocks = matching_blocks(a, b)


def _span(start: int, stop: int) -> str:
    length = stop - start
    if length == 1:
        return str(start + 1)
    return f"{start if length == 0 else start + 1},{length}"


def unified_diff(a: list[str], b: list[str], fromfile: str, tofile: str, context: int = 3) -> str:
    """``a`` and ``b`` are lines with their line ends, as ``str.splitlines(True)`` gives."""
    out: list[str] = []
    for group in _Matcher(a, b).get_grouped_opcodes(context):
        if not out:
            out += [f"--- {fromfile}\n", f"+++ {tofile}\n"]
        first, last = group[0], group[-1]
        out.append(f"@@ -{_span(first[1], last[2])} +{_span(first[3], last[4])} @@\n")
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                out += [" " + line for line in a[i1:i2]]
                continue
            if tag in ("replace", "delete"):
                out += ["-" + line for line in a[i1:i2]]
            if tag in ("replace", "insert"):
                out += ["+" + line for line in b[j1:j2]]
    return "".join(out)
