"""``walk`` visits what libcst's own visitor visits, in the same order (whitespace aside)."""

from __future__ import annotations

import libcst as cst
import pytest

from kvguard.lint.walk import walk
from tests.vllm_sources import vllm_tree

_WHITESPACE = (
    cst.BaseParenthesizableWhitespace,
    cst.EmptyLine,
    cst.TrailingWhitespace,
    cst.Comment,
    cst.Newline,
    cst.Comma,
    cst.LeftParen,
    cst.RightParen,
    cst.LeftSquareBracket,
    cst.RightSquareBracket,
    cst.LeftCurlyBrace,
    cst.RightCurlyBrace,
    cst.Colon,
    cst.Semicolon,
    cst.Dot,
    cst.AssignEqual,
    cst.BaseBinaryOp,
    cst.BaseBooleanOp,
    cst.BaseCompOp,
    cst.BaseUnaryOp,
    cst.BaseAugOp,
    cst.Asynchronous,
)


class _Recorder(cst.CSTVisitor):
    def __init__(self) -> None:
        self.seen: list[cst.CSTNode] = []

    def on_visit(self, node: cst.CSTNode) -> bool:
        if not isinstance(node, _WHITESPACE):
            self.seen.append(node)
        return True


SYNTAX = (
    "@deco(x)\nasync def f(a, /, b=1, *c, d: int = 2, **e) -> kv[0]:\n"
    "    y = a if b[0] else c[1]\n    lambda q=kv[2]: q\n"
    "    try:\n        pass\n    except (E, F) as err:\n        raise X from err\n"
    "    match p:\n        case [1, *r] if r[0]: pass\n"
    "    return {k: v[3] for k, v in z.items() if v}, f'{kv[4]!r:>{w}}'\n"
    "class C(B, metaclass=M):\n    x: int = kv[5]\n    del kv[6]\n"
)


def _check(text: str) -> None:
    module = cst.parse_module(text)
    recorder = _Recorder()
    module.visit(recorder)
    walked = [n for n in walk(module) if not isinstance(n, _WHITESPACE)]
    assert [type(n).__name__ for n in walked] == [type(n).__name__ for n in recorder.seen]
    assert all(a is b for a, b in zip(walked, recorder.seen, strict=True))


def test_walk_order_on_every_syntax_form() -> None:
    _check(SYNTAX)


@pytest.mark.vllm_sources
def test_walk_order_on_vllm_attention_backends() -> None:
    files = sorted((vllm_tree("0.33.0") / "vllm/v1/attention").rglob("*.py"))
    assert len(files) > 20
    for path in files:
        _check(path.read_text(encoding="utf-8"))
