"""typed_json: what the cache stores comes back equal, and nothing of another shape does."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from kvguard.cache import _RECORD, Stamp
from kvguard.config import Config
from kvguard.engine import kv_names, scan_source
from kvguard.findings import FileError, Finding, FixInfo, Notice
from kvguard.lint.facts import FileFacts
from kvguard.typed_json import ShapeError, decoder, encoder
from tests.vllm_sources import vllm_tree


def _round_trip(hint, value):  # type: ignore[no-untyped-def]
    return decoder(hint)(json.loads(json.dumps(encoder(hint)(value))))


@pytest.mark.vllm_sources
def test_the_facts_of_real_backends_round_trip() -> None:
    names = kv_names(Config())
    backends = vllm_tree("0.33.0") / "vllm/v1/attention/backends"
    seen = 0
    for path in sorted(backends.rglob("*.py")):
        facts = scan_source(path.read_text(), str(path), names)
        back = _round_trip(FileFacts, facts)
        assert back == facts
        assert type(back.classes) is tuple and type(back.class_spans) is dict
        seen += bool(facts.classes)
    assert seen > 20


def test_a_record_round_trips() -> None:
    finding = Finding("a.py", 2, 30, 2, 48, "KVG001", "error", "m", fix=FixInfo("safe", "f"))
    error = FileError("a.py", "bad")
    notice = Notice("a.py", 2, 50, "unused suppression")
    record = (
        "/a.py",
        Stamp(1, 2, 3, 4, 5),
        "h",
        5,
        FileFacts(()),
        error,
        "k",
        (finding,),
        (notice,),
    )
    back = _round_trip(_RECORD, record)
    assert back == record
    assert back[7][0].fix == finding.fix  # Finding's equality leaves out the fix


@dataclass(frozen=True)
class _Point:
    x: int
    label: str | None
    tags: tuple[str, ...]
    pairs: dict[int, tuple[str, bool]]


@pytest.mark.parametrize(
    "value",
    [
        [1, "a", ["t"]],  # a field missing
        [1, "a", ["t"], [], 0],  # one too many
        ["1", "a", ["t"], []],  # a string for an int
        [True, "a", ["t"], []],  # a bool is no int
        [1.0, "a", ["t"], []],  # nor a float
        [1, 2, ["t"], []],
        [1, "a", "t", []],  # a string is no tuple
        [1, "a", [1], []],
        [1, "a", ["t"], {"1": ["s", True]}],  # a dict is stored as pairs
        [1, "a", ["t"], [[1, ["s", 1]]]],
        [1, "a", ["t"], [[1, ["s"]]]],
        [1, "a", ["t"], [["1", ["s", True]]]],
        {"x": 1},
        None,
        "text",
    ],
)
def test_any_other_shape_is_a_shape_error(value) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ShapeError):
        decoder(_Point)(value)


def test_a_valid_point_decodes() -> None:
    point = _Point(1, None, ("t",), {2: ("s", True)})
    assert _round_trip(_Point, point) == point
    assert decoder(_Point)([1, "a", [], []]) == _Point(1, "a", (), {})


def test_a_type_it_cannot_check_is_refused_when_the_codec_is_made() -> None:
    with pytest.raises(TypeError):
        decoder(set[int])
    with pytest.raises(TypeError):
        encoder(object)
