"""Source text fit for a one-line message: comments dropped, lines joined, shortened."""

from __future__ import annotations

import io
import re
import tokenize

_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
_NO_SPACE_AFTER = {"(", "[", "{", ".", "~"}
_NO_SPACE_BEFORE = {")", "]", "}", ",", ".", ":", ";"}
_WHITESPACE = re.compile(r"\s+")


def _joined(text: str) -> str | None:
    """The tokens of ``text`` on one line, one space where any whitespace or line break
    was (none inside brackets' edges); None if it does not tokenize."""
    out: list[str] = []
    last_end: tuple[int, int] | None = None
    broke = False
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.ENDMARKER:
                break
            if token.type in _SKIP:
                broke = broke or bool(out)
                continue
            spaced = out and (broke or last_end != token.start)
            if spaced and out[-1] not in _NO_SPACE_AFTER and token.string not in _NO_SPACE_BEFORE:
                out.append(" ")
            string = token.string
            if token.type == tokenize.STRING and ("\n" in string or "\r" in string):
                string = _WHITESPACE.sub(" ", string)
            out.append(string)
            last_end, broke = token.end, False
    except (tokenize.TokenError, SyntaxError):
        return None
    return "".join(out)


def one_line(text: str, limit: int) -> str:
    """``text`` as one line of at most ``limit`` characters (``...`` where cut)."""
    text = text.strip()
    if "\n" in text or "\r" in text or "#" in text:
        joined = _joined(text)
        text = joined if joined is not None else _WHITESPACE.sub(" ", text)
    text = _WHITESPACE.sub(" ", text) if any(c in text for c in "\t\f\v") else text
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."
