"""The linear unified diff: a patch that turns the old text into the new one, in the
format difflib and git write, without difflib's quadratic matching."""

from __future__ import annotations

import difflib
import random
import re

import pytest

from kvguard.textdiff import matching_blocks, unified_diff

_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def _apply(old: list[str], patch: str) -> list[str]:
    """A strict applier: every context and removed line must match where the hunk says."""
    lines = patch.splitlines(keepends=True)
    assert lines[0].startswith("--- ") and lines[1].startswith("+++ ")
    out: list[str] = []
    at = 0
    k = 2
    while k < len(lines):
        match = _HUNK.match(lines[k])
        assert match, lines[k]
        start = int(match.group(1)) - (0 if match.group(2) == "0" else 1)
        out += old[at:start]
        at = start
        k += 1
        while k < len(lines) and not lines[k].startswith("@@"):
            tag, text = lines[k][0], lines[k][1:]
            if tag in " -":
                assert old[at] == text, (at, old[at], text)
                at += 1
            if tag in " +":
                out.append(text)
            k += 1
    return out + old[at:]


def _random_text(rng: random.Random, n: int) -> list[str]:
    vocabulary = ["    k, v = kv_cache.unbind(0)\n", "\n", "    run(k, v)\n", "pass\n"]
    return [
        rng.choice(vocabulary) if rng.random() < 0.7 else f"line {rng.randrange(50)}\n"
        for _ in range(n)
    ]


def _mutated(rng: random.Random, lines: list[str]) -> list[str]:
    out = list(lines)
    for _ in range(rng.randint(0, 12)):
        at = rng.randrange(len(out) + 1)
        action = rng.choice(["insert", "delete", "replace"])
        if action == "insert" or not out or at == len(out):
            out.insert(
                at, rng.choice(["new\n", "    k, v = self._split_kv_cache(kv_cache)\n", "\n"])
            )
        elif action == "delete":
            del out[at]
        else:
            out[at] = f"changed {rng.randrange(9)}\n"
    return out


@pytest.mark.parametrize("seed", range(200))
def test_the_patch_applies_and_gives_the_new_text(seed: int) -> None:
    rng = random.Random(seed)
    old = _random_text(rng, rng.randint(0, 60))
    new = _mutated(rng, old)
    patch = unified_diff(old, new, "a/x.py", "b/x.py")
    if old == new:
        assert patch == ""
        return
    assert _apply(old, patch) == new
    # as compact as difflib's where the texts are small: no more changed lines
    ours = sum(line[0] in "+-" for line in patch.splitlines()[2:] if not line.startswith("@@"))
    theirs = difflib.unified_diff(old, new, "a/x.py", "b/x.py")
    count = sum(line[0] in "+-" for line in list(theirs)[2:] if not line.startswith("@@"))
    assert ours <= count + 4


def test_same_output_as_difflib_on_a_plain_change() -> None:
    old = [f"line {i}\n" for i in range(40)]
    new = [*old[:10], "inserted\n", *old[10:30], *old[31:]]
    assert unified_diff(old, new, "a/x", "b/x") == "".join(
        difflib.unified_diff(old, new, "a/x", "b/x")
    )


def test_matching_is_linear_on_repeated_changes() -> None:
    """The case that took difflib quadratic time: thousands of the same split rewritten."""
    unit = ["def f{}(kv_cache):\n", "    k, v = kv_cache.unbind(0)\n", "    run(k, v)\n", "\n"]
    old = [line.format(i) for i in range(20_000) for line in unit]
    new = [
        line.format(i).replace("kv_cache.unbind(0)", "split_kv_cache(kv_cache, 'kv_first')")
        for i in range(20_000)
        for line in unit
    ]
    blocks = matching_blocks(old, new)
    assert sum(n for _, _, n in blocks) == 3 * 20_000
    assert _apply(old, unified_diff(old, new, "a", "b")) == new
